"""batch_norm: batch statistics (biased variance) in training, running statistics in
evaluation, the running update, and the same per channel over NHWC conv features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from tests.reference import normal
from tests.layers.three_way import SEEDS, configs, three_way


def bn_reference(x, gamma, beta, mean, var, eps):
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


# few distinct shapes: each new shape costs compilations, the values vary with the seed
shapes = st.sampled_from([(2, 1), (4, 3), (3, 2),                      # (N, F)
                          (1, 2, 3, 2), (2, 3, 1, 1), (2, 2, 2, 3)])      # NHWC conv features


@given(seed=st.integers(0, 2**31 - 1), shape=shapes, momentum=st.floats(0.0, 1.0),
       eps=st.sampled_from([1e-5, 1e-3, 0.1]), loc=st.floats(-5, 5), scale=st.floats(0.1, 10))
def test_batch_norm_forward_train_and_eval(seed, shape, momentum, eps, loc, scale):
    layer = fn.batch_norm(momentum, eps)
    f = shape[-1]
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(seed), shape, jnp.float64)
        for tree in (params, state):
            assert all(v.shape == (f,) and v.dtype == jnp.float64 for v in tree.values())
        # start from non-default parameters and running statistics
        params = {"gamma": jnp.asarray(normal(seed, (f,))), "beta": jnp.asarray(normal(seed + 1, (f,)))}
        state = {"mean": jnp.asarray(normal(seed + 2, (f,))),
                 "var": jnp.asarray(np.abs(normal(seed + 3, (f,))) + 0.5)}
        x = loc + scale * normal(seed + 4, shape)
        g, b = np.asarray(params["gamma"]), np.asarray(params["beta"])
        rm, rv = np.asarray(state["mean"]), np.asarray(state["var"])

        y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
        flat = x.reshape(-1, f)  # every axis but the last is a sample of the feature
        mu = flat.mean(0)
        var = ((flat - mu) ** 2).sum(0) / flat.shape[0]  # biased: divide by m, not m - 1
        np.testing.assert_allclose(np.asarray(y), bn_reference(x, g, b, mu, var, eps),
                                   rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(new_state["mean"]), momentum * rm + (1 - momentum) * mu,
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(new_state["var"]), momentum * rv + (1 - momentum) * var,
                                   rtol=1e-12, atol=1e-12)
        # the state passed in is untouched
        np.testing.assert_array_equal(np.asarray(state["mean"]), rm)

        y, eval_state = layer.apply(params, state, jnp.asarray(x))  # train=False by default
        np.testing.assert_allclose(np.asarray(y), bn_reference(x, g, b, rm, rv, eps),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(np.asarray(eval_state["mean"]), rm)
        np.testing.assert_array_equal(np.asarray(eval_state["var"]), rv)
        assert y.shape == layer.output_shape(shape) == shape


def test_batch_norm_initial_values_and_normalized_output():
    layer = fn.batch_norm()
    params, state = layer.init(jax.random.PRNGKey(0), (8, 3))
    np.testing.assert_array_equal(np.asarray(params["gamma"]), np.ones(3))
    np.testing.assert_array_equal(np.asarray(params["beta"]), np.zeros(3))
    np.testing.assert_array_equal(np.asarray(state["mean"]), np.zeros(3))
    np.testing.assert_array_equal(np.asarray(state["var"]), np.ones(3))
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(0), (64, 3), jnp.float64)
        x = 3.0 + 2.0 * jnp.asarray(normal(5, (64, 3)))
        y, _ = layer.apply(params, state, x, train=True)
        np.testing.assert_allclose(np.asarray(y.mean(0)), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(y.var(0)), np.asarray(x.var(0) / (x.var(0) + 1e-5)),
                                   rtol=1e-12)


def test_running_statistics_converge_to_the_data_statistics():
    """With the same batch k times: running mean = (1 − m^k) · μ_B, running var
    = m^k · 1 + (1 − m^k) · σ²_B."""
    layer = fn.batch_norm(momentum=0.9)
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(0), (32, 2, 2, 4), jnp.float64)
        x = jnp.asarray(2.0 + 3.0 * normal(9, (32, 2, 2, 4)))
        step = jax.jit(lambda s: layer.apply(params, s, x, train=True)[1])
        for _ in range(50):
            state = step(state)
        mu, var = np.asarray(x.mean((0, 1, 2))), np.asarray(x.var((0, 1, 2)))
        np.testing.assert_allclose(np.asarray(state["mean"]), (1 - 0.9 ** 50) * mu, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(state["var"]), 0.9 ** 50 + (1 - 0.9 ** 50) * var,
                                   rtol=1e-10)
        # evaluation now normalizes with (nearly) the batch's own statistics
        y_eval, _ = layer.apply(params, state, x)
        y_train, _ = layer.apply(params, state, x, train=True)
        np.testing.assert_allclose(np.asarray(y_eval), np.asarray(y_train), atol=0.02)


@pytest.mark.parametrize("kwargs, message", [
    ({"momentum": 1.5}, "momentum must be in"), ({"momentum": -0.1}, "momentum must be a finite"),
    ({"eps": -1e-5}, "eps must be a finite"), ({"eps": float("nan")}, "eps must be a finite"),
    ({"momentum": "0.9"}, "momentum must be a finite"),
])
def test_bad_batch_norm_hyperparameters_fail_at_construction(kwargs, message):
    with pytest.raises(fn.LayerError, match=f"batch_norm: {message}"):
        fn.batch_norm(**kwargs)


def test_batch_norm_shape_errors_name_the_layer():
    with pytest.raises(fn.LayerError, match=r"layer 0 \(batch_norm\).*\(batch, \.\.\., features\).*\(5,\)"):
        fn.serial(fn.batch_norm()).init(jax.random.PRNGKey(0), (5,))
    model = fn.serial(fn.dense(4), fn.batch_norm())
    params, state = model.init(jax.random.PRNGKey(0), (3, 2))
    params = (params[0], fn.batch_norm().init(jax.random.PRNGKey(0), (3, 6))[0])
    with pytest.raises(fn.LayerError) as e:
        model.apply(params, state, jnp.zeros((3, 2)))
    msg = str(e.value)
    assert msg.startswith("layer 1 (batch_norm): ") and "6 features" in msg and "(3, 4)" in msg


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

def running_stats(state, key):
    k1, k2 = jax.random.split(key)
    return {"mean": fr.normal(k1, state["mean"].shape, state["mean"].dtype),
            "var": 0.5 + fr.uniform(k2, state["var"].shape, state["var"].dtype)}


# (train, shape, momentum, eps)
BN_CURATED = [(True, (4, 3), 0.9, 1e-5), (True, (2, 3, 2, 2), 0.0, 1e-2),
              (False, (4, 3), 0.9, 1e-2), (False, (1, 2, 2, 3), 0.9, 1e-5)]
BN_FULL = st.tuples(st.booleans(), st.sampled_from([(4, 3), (3, 1), (2, 3, 2, 2), (1, 2, 2, 3)]),
                    st.sampled_from([0.0, 0.9]), st.sampled_from([1e-5, 1e-2]))


@given(case=configs(BN_CURATED, BN_FULL), seed=SEEDS)
def test_batch_norm(case, seed):
    """Training (the full dx through the batch mean and variance) and evaluation (running
    statistics as constants), for dense (N, F) and NHWC conv features."""
    train, shape, momentum, eps = case
    three_way(("batch_norm", momentum, eps), shape, seed, train=train, state_fn=running_stats)


def test_statistics_are_two_pass_and_float32_under_bfloat16():
    """x = 10⁴ + N(0, 1): E[x²] − E[x]² would lose every digit of the variance in float32;
    the two-pass statistics keep it, and a bfloat16 input's are taken in float32 (the
    cache holds x, with μ and 1/σ in float32), its y, state and gradients in bfloat16."""
    layer = fn.batch_norm(momentum=0.0)
    x = 1e4 + jnp.asarray(normal(3, (64, 2)), jnp.float32)
    params, state = layer.init(jax.random.PRNGKey(0), (64, 2))
    y, new_state = layer.apply(params, state, x, train=True)
    np.testing.assert_allclose(np.asarray(new_state["var"]), np.asarray(x, np.float64).var(0),
                               rtol=1e-3)
    np.testing.assert_allclose(np.asarray(y.var(0)), 1.0, rtol=1e-3)
    low = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (params, state, x))
    y, new_state, cache = layer.forward(*low, train=True)
    assert y.dtype == new_state["var"].dtype == cache["x"].dtype == jnp.bfloat16
    assert cache["mean"].dtype == cache["inv_std"].dtype == jnp.float32
    dparams, dx = layer.backward(low[0], cache, jnp.ones_like(y))
    assert dx.dtype == dparams["gamma"].dtype == jnp.bfloat16
