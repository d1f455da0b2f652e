"""gelu, gelu_tanh, softplus, elu, leaky_relu: forward against NumPy written elementwise
(math.erf, math.tanh, ...), backward three ways in one model, and the bad options."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from tests.reference import normal


def scalar(f):
    return lambda x: np.vectorize(f)(x)


REFERENCES = {
    "gelu": (fn.gelu, scalar(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))),
    "gelu_tanh": (fn.gelu_tanh, scalar(lambda v: 0.5 * v * (1 + math.tanh(
        math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))))),
    "softplus": (fn.softplus, scalar(lambda v: v + math.log1p(math.exp(-v)) if v > 0
                                     else math.log1p(math.exp(v)))),
    "elu": (fn.elu(1.5), scalar(lambda v: v if v > 0 else 1.5 * (math.exp(v) - 1))),
    "leaky_relu": (fn.leaky_relu(0.2), scalar(lambda v: v if v > 0 else 0.2 * v)),
    "leaky_relu_negative": (fn.leaky_relu(-0.5), scalar(lambda v: v if v > 0 else -0.5 * v)),
}


@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       scale=st.sampled_from([1.0, 30.0]))
def test_forward_matches_scalar_formulas(seed, shape, scale):
    x = scale * normal(seed, tuple(shape))
    with jax.enable_x64(True):
        for name, (layer, reference) in REFERENCES.items():
            y, _ = layer.apply({}, {}, jnp.asarray(x))
            np.testing.assert_allclose(np.asarray(y), reference(x), rtol=1e-12, atol=1e-300,
                                       err_msg=name)
            assert np.all(np.isfinite(np.asarray(y)))


def test_backward_three_ways():
    """Every activation side by side in one model (one compilation); x avoids the kinks."""
    layers = [layer for layer, _ in REFERENCES.values()]
    model = fn.serial(fn.fanout(len(layers)), fn.parallel(*layers), fn.fanin_concat())
    with jax.enable_x64(True):
        x = jnp.asarray(2 * normal(3, (3, 4)))
        assert float(jnp.min(jnp.abs(x))) > 1e-3
        params, state = model.init(jax.random.PRNGKey(0), x.shape)
        report = fn.check_gradients(model, params, state, x)
    assert report.ok, report


def test_derivatives_at_known_points():
    with jax.enable_x64(True):
        x = jnp.array([-1.0, 0.0, 2.0])
        dx = lambda layer: np.asarray(fn.backprop(layer, {}, {}, x, jnp.ones(3))[1])
        np.testing.assert_allclose(dx(fn.gelu), [0.5 * (1 + math.erf(-1 / math.sqrt(2)))
                                                 - math.exp(-0.5) / math.sqrt(2 * math.pi), 0.5,
                                                 0.5 * (1 + math.erf(2 / math.sqrt(2)))
                                                 + 2 * math.exp(-2) / math.sqrt(2 * math.pi)])
        np.testing.assert_allclose(dx(fn.softplus), [1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-2))])
        np.testing.assert_allclose(dx(fn.elu(2.0)), [2 * math.exp(-1), 2.0, 1.0])
        np.testing.assert_allclose(dx(fn.leaky_relu(0.1)), [0.1, 0.1, 1.0])


@pytest.mark.parametrize("make, message", [
    (lambda: fn.elu(0), "elu: alpha must be > 0"),
    (lambda: fn.elu(-1.0), "elu: alpha must be > 0"),
    (lambda: fn.elu(float("inf")), "elu: alpha must be a finite number"),
    (lambda: fn.leaky_relu("0.1"), "leaky_relu: negative_slope must be a finite number"),
])
def test_bad_options_fail_at_construction(make, message):
    with pytest.raises(fn.LayerError, match=message):
        make()


def test_forgetting_to_call_elu_is_explained():
    with pytest.raises(fn.LayerError, match="did you forget to call it"):
        fn.serial(fn.dense(2), fn.elu)
