"""Shared parameters: one array in several places of a pure model, its gradient the sum of
every use's (the multivariate chain rule), checked three ways like any layer."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import _random as fr, losses
from funcnet.core import param_paths

KEY = jax.random.PRNGKey(0)


def autoencoder():
    """A tied autoencoder: the decoder's weight is the encoder's transpose."""
    return fn.share(fn.serial(fn.dense(3), fn.tanh, fn.dense(6)), {"2:dense/w": "0:dense/w.T"})


def test_the_shared_array_is_stored_once_and_used_in_both_places():
    model = autoencoder()
    params, _ = model.init(KEY, (2, 6))
    assert params[2]["w"] is None and params[0]["w"].shape == (6, 3)
    assert [p for p, _ in param_paths(model, params)] == ["0:dense/b", "0:dense/w", "2:dense/b"]
    x = fr.normal(jax.random.PRNGKey(1), (2, 6))
    y, _ = model.apply(params, ({}, {}, {}), x)
    w, b1, b2 = params[0]["w"], params[0]["b"], params[2]["b"]
    np.testing.assert_allclose(y, jnp.tanh(x @ w + b1) @ w.T + b2, rtol=1e-6)
    assert "total" in fn.summary(model, (2, 6)) and fn.summary(model, (2, 6)).split()[-1] == "27"


def test_the_backward_adds_the_gradients_of_every_use_three_ways():
    model = autoencoder()
    with jax.enable_x64(True):
        params, state = model.init(KEY, (3, 6), jnp.float64)
        x = fr.normal(jax.random.PRNGKey(1), (3, 6), jnp.float64)
        report = fn.check_gradients(model, params, state, x, x, losses.mse)
        dparams, _ = fn.backprop(model, params, state, x, jnp.ones((3, 6)))
        inner = fn.serial(fn.dense(3), fn.tanh, fn.dense(6))
        full = (params[0], {}, {"w": params[0]["w"].T, "b": params[2]["b"]})
        dfull, _ = fn.backprop(inner, full, state, x, jnp.ones((3, 6)))
    assert report.ok, report
    assert [r.path for r in report.rows] == ["0:dense/b", "0:dense/w", "2:dense/b", "input"]
    np.testing.assert_allclose(dparams[0]["w"], dfull[0]["w"] + dfull[2]["w"].T, rtol=1e-12)
    assert dparams[2]["w"] is None


def test_a_wrong_use_is_localised_inside_a_shared_model():
    def wrong(layer):
        def backward(params, cache, dy):
            dp, dx = layer.backward(params, cache, dy)
            return dp, dx * 2
        return layer._replace(backward=backward)
    model = fn.share(fn.serial(fn.dense(3), wrong(fn.tanh), fn.dense(6)), {"2:dense/w": "0:dense/w.T"})
    with jax.enable_x64(True):
        params, state = model.init(KEY, (2, 6), jnp.float64)
        x = fr.normal(jax.random.PRNGKey(1), (2, 6), jnp.float64)
        report = fn.check_gradients(model, params, state, x, x, losses.mse)
    assert not report.ok and report.notes[-1].startswith("layer 1 (tanh): backward disagrees")


def test_a_shared_model_trains_with_optax_and_fit():
    x = fr.normal(jax.random.PRNGKey(2), (64, 6))
    state, history = fn.train.fit(autoencoder(), optax.adam(0.02), (x, x), loss=losses.mse, epochs=30,
                                  batch_size=32, key=KEY, progress=False)
    assert state.params[2]["w"] is None
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]


@pytest.mark.parametrize("uses, message", [
    ({"2:dense/w": "0:dense/v"},
     "share: the model has no parameter '0:dense/v'; its parameters are: 0:dense/b"),
    ({"2:dense/w": "0:dense/w"},
     r"share: '2:dense/w' has shape \(3, 6\) but its owner '0:dense/w' gives \(6, 3\)"),
    ({"2:dense/w": "2:dense/w"}, "is itself a use"),
    ({}, "uses must be a non-empty dict"),
])
def test_bad_uses_are_named(uses, message):
    with pytest.raises(fn.LayerError, match=message):
        fn.share(fn.serial(fn.dense(3), fn.tanh, fn.dense(6)), uses).init(KEY, (2, 6))
