"""embedding: lookup against a loop, scatter-add backward (a row used twice gets both
contributions) three ways, no input gradient, and ids checked by fit/evaluate."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from tests.reference import normal, pool_init


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(1, 6), dim=st.integers(1, 3),
       shape=st.lists(st.integers(1, 3), min_size=1, max_size=3))
def test_lookup_matches_a_loop(seed, vocab, dim, shape):
    ids = np.random.RandomState(seed % 2**32).randint(0, vocab, shape)
    layer = fn.embedding(vocab, dim, w_init=pool_init(seed))
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(seed), ids.shape, jnp.float64)
        assert params["w"].shape == (vocab, dim) and params["w"].dtype == jnp.float64
        y, _ = layer.apply(params, state, jnp.asarray(ids))
    w = np.asarray(params["w"])
    expected = np.zeros(ids.shape + (dim,))
    for pos in np.ndindex(*ids.shape):
        expected[pos] = w[ids[pos]]
    assert y.shape == layer.output_shape(ids.shape) == ids.shape + (dim,)
    np.testing.assert_array_equal(np.asarray(y), expected)


def test_backward_is_a_scatter_add_checked_three_ways():
    ids = jnp.array([[0, 2, 2], [3, 0, 2]])  # row 2 used three times, row 1 never
    layer = fn.embedding(4, 2)
    with jax.enable_x64(True):
        params, _ = layer.init(jax.random.PRNGKey(0), ids.shape, jnp.float64)
        dy = jnp.asarray(normal(1, (2, 3, 2)))
        dparams, dx = fn.backprop(layer, params, {}, ids, dy)
        assert dx is None  # integer ids: no input gradient (documented)
        expected = np.zeros((4, 2))
        for pos in np.ndindex(2, 3):
            expected[int(ids[pos])] += np.asarray(dy[pos])
        np.testing.assert_allclose(np.asarray(dparams["w"]), expected, rtol=1e-12)
        assert np.all(np.asarray(dparams["w"][1]) == 0)
        # jax.grad through the hand formulas, integer ids
        manual = jax.grad(lambda p: jnp.sum(fn.with_manual_grads(layer).apply(p, {}, ids)[0] * dy))(params)
        np.testing.assert_allclose(np.asarray(manual["w"]), expected, rtol=1e-12)
        # check_gradients takes the ids as floats (dx is then zeros, as the differences find)
        model = fn.serial(layer, fn.tanh, fn.flatten, fn.dense(3))
        mparams, mstate = model.init(jax.random.PRNGKey(1), ids.shape, jnp.float64)
        report = fn.check_gradients(model, mparams, mstate, ids.astype(jnp.float64))
    assert report.ok, report
    assert [r.path for r in report.rows][0] == "0:embedding/w"


@pytest.mark.parametrize("bad, shown", [(7, "7"), (-1, "-1")])
def test_fit_and_evaluate_check_the_ids_before_training(bad, shown):
    model = fn.serial(fn.embedding(7, 2), fn.flatten, fn.dense(2))
    x = np.random.RandomState(0).randint(0, 7, (16, 3))
    y = (x[:, 0] > 3).astype(np.int32)
    state, history = fn.train.fit(model, optax.adam(0.05), (x, y), epochs=2, batch_size=8,
                                  key=jax.random.PRNGKey(0), progress=False)
    assert fn.train.evaluate(model, state.params, state.state, x, y)["accuracy"] >= 0.5
    x[5, 1] = bad
    message = rf"input id {shown} is outside \[0, 7\)"
    with pytest.raises(fn.LayerError, match=r"fit: layer 0 \(embedding\): " + message):
        fn.train.fit(model, optax.adam(0.05), (x, y), epochs=1, batch_size=8,
                     key=jax.random.PRNGKey(0), progress=False)
    with pytest.raises(fn.LayerError, match=r"evaluate: layer 0 \(embedding\): " + message):
        fn.train.evaluate(model, state.params, state.state, x, y)


@pytest.mark.parametrize("make, message", [
    (lambda: fn.embedding(0, 3), "vocab_size must be a positive int"),
    (lambda: fn.embedding(10, 2.5), "dim must be a positive int"),
])
def test_bad_sizes_fail_at_construction(make, message):
    with pytest.raises(fn.LayerError, match="embedding: " + message):
        make()
