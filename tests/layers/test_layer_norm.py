"""layer_norm: forward against a NumPy loop over rows, backward three ways, bad eps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from tests.reference import normal


def layer_norm_reference(x, gamma, beta, eps):
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out[r] = [(v - mu) / np.sqrt(var + eps) for v in row]
    return out.reshape(x.shape) * gamma + beta


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       features=st.integers(1, 6), eps=st.sampled_from([1e-5, 0.1]))
def test_forward_matches_loops(seed, lead, features, eps):
    shape = tuple(lead) + (features,)
    layer = fn.layer_norm(eps)
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(0), shape, jnp.float64)
        np.testing.assert_array_equal(np.asarray(params["gamma"]), np.ones(features))
        np.testing.assert_array_equal(np.asarray(params["beta"]), np.zeros(features))
        assert state == {} and params["gamma"].dtype == jnp.float64
        params = {"gamma": jnp.asarray(normal(seed, (features,))),
                  "beta": jnp.asarray(normal(seed + 1, (features,)))}
        x = jnp.asarray(3 * normal(seed + 2, shape) + 1)
        y, new_state = layer.apply(params, state, x, train=True)
        expected = layer_norm_reference(np.asarray(x), np.asarray(params["gamma"]),
                                        np.asarray(params["beta"]), eps)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-10, atol=1e-10)
        # no batch statistics: evaluation mode gives the same numbers
        np.testing.assert_array_equal(np.asarray(layer.apply(params, state, x)[0]), np.asarray(y))


def test_backward_three_ways():
    layer = fn.layer_norm()
    with jax.enable_x64(True):
        params = {"gamma": jnp.asarray(normal(0, (4,))), "beta": jnp.asarray(normal(1, (4,)))}
        report = fn.check_gradients(layer, params, {}, jnp.asarray(normal(2, (2, 3, 4))))
    assert report.ok, report


@pytest.mark.parametrize("eps", [0, -1e-5, float("nan"), "1e-5", True])
def test_eps_must_be_positive(eps):
    with pytest.raises(fn.LayerError, match="layer_norm: eps must be a finite number > 0"):
        fn.layer_norm(eps)


def test_feature_mismatch_names_the_layer():
    with pytest.raises(fn.LayerError, match=r"layer 0 \(layer_norm\): layer_norm expects input"):
        fn.serial(fn.layer_norm()).init(jax.random.PRNGKey(0), (3,))
    params, state = fn.layer_norm().init(jax.random.PRNGKey(0), (2, 4))
    with pytest.raises(fn.LayerError, match="layer_norm has 4 features"):
        fn.layer_norm().apply(params, state, jnp.zeros((2, 5)))


def test_statistics_are_two_pass_and_float32_under_bfloat16():
    """x = 10⁴ + N(0, 1): E[x²] − E[x]² would lose every digit of the variance in float32;
    the two-pass statistics keep it, and a bfloat16 input's are taken in float32 (the
    cache holds x, with μ and 1/σ in float32), its y and gradients in bfloat16."""
    layer = fn.layer_norm()
    x = 1e4 + jnp.asarray(normal(4, (3, 64)), jnp.float32)
    params, state = layer.init(jax.random.PRNGKey(0), (3, 64))
    y = layer.apply(params, state, x)[0]
    np.testing.assert_allclose(np.asarray(y.var(-1)), 1.0, rtol=1e-3)
    low = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (params, x))
    y, _, cache = layer.forward(low[0], state, low[1])
    assert y.dtype == cache["x"].dtype == jnp.bfloat16
    assert cache["mean"].dtype == cache["inv_std"].dtype == jnp.float32
    dparams, dx = layer.backward(low[0], cache, jnp.ones_like(y))
    assert dx.dtype == dparams["gamma"].dtype == dparams["beta"].dtype == jnp.bfloat16
