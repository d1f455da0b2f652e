"""dropout: drop rate, inverted scaling (the mean is kept), identity in evaluation, the
mask fixed by the key, a key needed only in training."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from tests.layers.three_way import SEEDS, configs, three_way


@given(rate=st.floats(0.0, 0.95), seed=st.integers(0, 2**31 - 1))
def test_kept_units_are_scaled_by_one_over_keep_probability(rate, seed):
    layer = fn.dropout(rate)
    x = jnp.arange(1.0, 201.0).reshape(10, 20)
    y, state = layer.apply({}, {}, x, train=True, key=jax.random.PRNGKey(seed))
    y, x = np.asarray(y), np.asarray(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-6)
    if rate == 0:
        assert kept.all()
    assert state == {}


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_fraction_dropped_is_the_rate_and_the_mean_is_preserved(rate):
    n = 200_000
    x = jnp.full((200, 1000), 2.0)
    y, _ = fn.dropout(rate).apply({}, {}, x, train=True, key=jax.random.PRNGKey(42))
    dropped = float(jnp.mean(y == 0))
    sd = (rate * (1 - rate) / n) ** 0.5  # binomial standard error of the fraction
    assert abs(dropped - rate) < 5 * sd
    # E[y] = x: inverted scaling keeps the mean (standard error 2·sd/(1−rate))
    assert abs(float(jnp.mean(y)) - 2.0) < 5 * 2 * sd / (1 - rate)


def test_identity_in_evaluation_without_a_key():
    x = jnp.asarray(np.linspace(-3, 3, 24).reshape(2, 3, 4))
    for layer in (fn.dropout(0.5), fn.serial(fn.dropout(0.9), fn.relu)):
        params, state = layer.init(jax.random.PRNGKey(0), x.shape)
        y, new_state = layer.apply(params, state, x)  # train=False: no key needed
        expected = np.asarray(x) if layer.name == "dropout" else np.maximum(np.asarray(x), 0)
        np.testing.assert_array_equal(np.asarray(y), expected)
        assert new_state == state
    y, _ = fn.dropout(0.5).apply({}, {}, x, train=False, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_same_key_same_mask_other_key_other_mask():
    layer = fn.dropout(0.5)
    x = jnp.ones((8, 64))
    a, _ = layer.apply({}, {}, x, train=True, key=jax.random.PRNGKey(7))
    b, _ = jax.jit(lambda x, k: layer.apply({}, {}, x, train=True, key=k))(x, jax.random.PRNGKey(7))
    c, _ = layer.apply({}, {}, x, train=True, key=jax.random.PRNGKey(8))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (np.asarray(a) != np.asarray(c)).any()
    assert set(np.unique(np.asarray(a))) == {0.0, 2.0}


def test_serial_gives_each_dropout_its_own_key():
    model = fn.serial(fn.dropout(0.5), fn.identity, fn.dropout(0.5))
    x = jnp.ones((4, 256))
    key = jax.random.PRNGKey(3)
    params, state = model.init(key, x.shape)
    _, _, c = model.forward(params, state, x, train=True, key=key)
    m0, m2 = np.asarray(c[0]["mask"]), np.asarray(c[2]["mask"])
    assert m0.shape == m2.shape == (4, 256) and (m0 != m2).any()
    y, _ = model.apply(params, state, x, train=True, key=key)
    np.testing.assert_array_equal(np.asarray(y), m0 * m2)


def test_training_without_a_key_is_a_clear_error():
    with pytest.raises(fn.LayerError, match="dropout needs a PRNG key in training"):
        fn.dropout(0.5).apply({}, {}, jnp.ones((2, 3)), train=True)
    model = fn.serial(fn.dense(3), fn.dropout(0.2))
    params, state = model.init(jax.random.PRNGKey(0), (2, 4))
    with pytest.raises(fn.LayerError, match=r"^layer 1 \(dropout\): dropout needs a PRNG key"):
        model.apply(params, state, jnp.ones((2, 4)), train=True)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan"), "0.5", True, None])
def test_rate_outside_zero_one_fails_at_construction(rate):
    with pytest.raises(fn.LayerError, match=r"dropout: rate .* must be in \[0, 1\), got"):
        fn.dropout(rate)


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

DROPOUT_CURATED = [(0.5, True, (3, 4)), (0.1, True, (2, 3, 3, 2)), (0.9, True, (3, 4)),
                   (0.0, True, (3, 4)), (0.5, False, (2, 3, 3, 2))]
DROPOUT_FULL = st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.9]), st.booleans(),
                         st.sampled_from([(3, 4), (2, 3, 3, 2)]))


@given(case=configs(DROPOUT_CURATED, DROPOUT_FULL), seed=SEEDS)
def test_dropout(case, seed):
    """The backward uses the forward's mask: the same key gives the same mask."""
    rate, train, shape = case
    m, _ = three_way(("dropout", rate), shape, seed, train=train)
    dx = np.asarray(m[1])
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(seed), 6)  # as three_way splits them
        x = fr.normal(k[2], shape, jnp.float64)
        y, _ = fn.dropout(rate).apply({}, {}, x, train=train, key=k[4])
        g = np.asarray(fr.normal(k[3], shape, jnp.float64))
    if not train or rate == 0:
        np.testing.assert_array_equal(dx, g)
        return
    # Kept units pass δ / (1 − rate), dropped ones 0.
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(dx[kept] * (1 - rate), g[kept], rtol=1e-12)
    assert not np.any(dx[~kept])
