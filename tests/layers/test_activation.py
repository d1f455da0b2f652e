"""Activations against NumPy in float64, and softmax / log_softmax stability."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import funcnet as fn
from tests.layers.three_way import SEEDS, configs, three_way


def np_sigmoid(x):
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


REFERENCES = {
    "relu": lambda x: np.maximum(x, 0), "sigmoid": np_sigmoid, "tanh": np.tanh,
    "sign": np.sign, "identity": lambda x: x, "softmax": np_softmax,
    "log_softmax": lambda z: z - z.max(-1, keepdims=True)
    - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)),
}
LAYERS = {"relu": fn.relu, "sigmoid": fn.sigmoid, "tanh": fn.tanh, "sign": fn.sign,
          "identity": fn.identity, "softmax": fn.softmax, "log_softmax": fn.log_softmax}

# No subnormals: XLA:CPU flushes them to zero (sign(5e-324) is 0 there, 1 in NumPy); the
# smallest normal numbers (±1e-300) stay in.
arrays = hnp.arrays(np.float64, st.sampled_from([(3, 4), (2, 3, 5), (2, 2, 2, 3)]),
                    elements=st.floats(-50, 50, allow_subnormal=False)
                    | st.sampled_from([0.0, -0.0, 1e-300, -1e-300]))


@pytest.mark.parametrize("name", sorted(LAYERS))
@given(x=arrays)
def test_activation_matches_numpy(name, x):
    layer = LAYERS[name]
    assert layer.name == name
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(0), x.shape)
        assert params == {} and state == {}
        y, new_state = layer.apply(params, state, jnp.asarray(x))
        assert y.dtype == jnp.float64 and y.shape == layer.output_shape(x.shape) == x.shape
        np.testing.assert_allclose(np.asarray(y), REFERENCES[name](x), rtol=1e-12, atol=1e-15)
        assert new_state == {}


def test_activations_on_hand_values():
    x = jnp.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(np.asarray(fn.relu.apply({}, {}, x)[0]), [[0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(np.asarray(fn.sign.apply({}, {}, x)[0]), [[-1.0, 0.0, 1.0]])
    # σ(0) = 1/2 and σ is not tanh: tanh(x) = 2σ(2x) − 1
    s = np.asarray(fn.sigmoid.apply({}, {}, x)[0])
    assert s[0, 1] == 0.5
    t = np.asarray(fn.tanh.apply({}, {}, x)[0])
    np.testing.assert_allclose(t, 2 * np.asarray(fn.sigmoid.apply({}, {}, 2 * x)[0]) - 1, rtol=1e-6)


def test_relu_autodiff_takes_the_formulas_subgradient_at_zero():
    """jax.grad of relu's forward and its hand backward agree at the kink x = 0 (both 0;
    jnp.maximum's autodiff would split the tie into 0.5), so a manual-vs-autodiff check
    of a network with an exact zero pre-activation does not flag a difference."""
    x = jnp.array([-2.0, -0.0, 0.0, 3.0])
    auto = jax.grad(lambda x: jnp.sum(fn.relu.apply({}, {}, x)[0]))(x)
    _, _, cache = fn.relu.forward({}, {}, x)
    manual = fn.relu.backward({}, cache, jnp.ones_like(x))[1]
    np.testing.assert_array_equal(np.asarray(auto), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(manual), np.asarray(auto))
    np.testing.assert_array_equal(np.asarray(jax.hessian(lambda x: jnp.sum(fn.relu.apply({}, {}, x)[0]))(x)),
                                  np.zeros((4, 4)))


def test_softmax_and_log_softmax_are_stable_for_huge_logits():
    z = jnp.array([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0], [-5000.0, -5000.0, -5000.0]])
    s, _ = fn.softmax.apply({}, {}, z)
    ls, _ = fn.log_softmax.apply({}, {}, z)
    assert np.isfinite(np.asarray(s)).all() and np.isfinite(np.asarray(ls)).all()
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(np.asarray(s[0]), e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ls[0]), np.log(e / e.sum()), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s[1]), [0.0, 0.0, 1.0], atol=1e-30)
    np.testing.assert_allclose(np.asarray(ls[1]), [-2000.0, -1000.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s[2]), [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.sum(-1)), 1.0, rtol=1e-6)


def test_softmax_works_over_the_last_axis_only():
    z = jnp.arange(24.0).reshape(2, 3, 4)
    s, _ = fn.softmax.apply({}, {}, z)
    np.testing.assert_allclose(np.asarray(s.sum(-1)), np.ones((2, 3)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s[0, 0]), np.asarray(s[1, 2]), rtol=1e-6)  # shift-invariant


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

ACTIVATIONS = ["relu", "sigmoid", "tanh", "sign", "softmax", "log_softmax", "identity"]


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(shape=configs([(3, 4), (2, 2, 3, 2)], st.sampled_from([(2, 3), (1, 5), (2, 2, 3, 2)])),
       seed=SEEDS)
def test_activation(name, shape, seed):
    m, _ = three_way((name,), shape, seed)
    if name == "sign":  # zero almost everywhere: nothing trains through a sign layer
        assert not np.any(np.asarray(m[1]))
