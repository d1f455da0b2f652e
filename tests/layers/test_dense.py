"""dense: y = x W + b against NumPy in float64; init layout, initializers, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import initializers
from tests.reference import normal, pool_init
from tests.layers.three_way import SEEDS, configs, three_way


@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5), fan_in=st.integers(1, 8),
       out=st.integers(1, 8))
def test_dense_forward_is_x_w_plus_b(seed, batch, fan_in, out):
    layer = fn.dense(out, w_init=pool_init(seed), b_init=pool_init(seed + 1))
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(seed), (batch, fan_in), jnp.float64)
        assert params["w"].shape == (fan_in, out) and params["b"].shape == (out,)
        assert params["w"].dtype == params["b"].dtype == jnp.float64
        x = normal(seed + 2, (batch, fan_in))
        y, new_state = layer.apply(params, state, jnp.asarray(x))
        w, b = np.asarray(params["w"]), np.asarray(params["b"])
        expected = np.array([[sum(x[n, i] * w[i, o] for i in range(fan_in)) + b[o]
                              for o in range(out)] for n in range(batch)])
        assert y.shape == layer.output_shape((batch, fan_in)) == (batch, out)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
        assert new_state == {} and state == {}


def test_dense_default_init_is_xavier_weights_zero_bias_float32():
    params, state = fn.dense(256).init(jax.random.PRNGKey(0), (1, 1024))
    assert params["w"].dtype == jnp.float32 and state == {}
    np.testing.assert_allclose(float(jnp.std(params["w"])), math.sqrt(1 / 1024), rtol=0.02)
    assert abs(float(jnp.mean(params["w"]))) < 4 * math.sqrt(1 / 1024) / math.sqrt(1024 * 256)
    np.testing.assert_array_equal(np.asarray(params["b"]), np.zeros(256))


def test_dense_accepts_a_number_and_initializers():
    params, _ = fn.dense(256, w_init=0.01).init(jax.random.PRNGKey(1), (2, 512))
    np.testing.assert_allclose(float(jnp.std(params["w"])), 0.01, rtol=0.02)
    params, _ = fn.dense(256, w_init=initializers.he, b_init=initializers.ones).init(
        jax.random.PRNGKey(2), (2, 512))
    np.testing.assert_allclose(float(jnp.std(params["w"])), math.sqrt(2 / 512), rtol=0.02)
    np.testing.assert_array_equal(np.asarray(params["b"]), np.ones(256))


def test_dense_init_splits_the_key_so_weights_differ_per_key():
    a, _ = fn.dense(4).init(jax.random.PRNGKey(0), (1, 3))
    b, _ = fn.dense(4).init(jax.random.PRNGKey(1), (1, 3))
    c, _ = fn.dense(4).init(jax.random.PRNGKey(0), (1, 3))
    assert not np.allclose(np.asarray(a["w"]), np.asarray(b["w"]))
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(c["w"]))


@pytest.mark.parametrize("out", [0, -3, 2.0, True, "10", None])
def test_bad_width_fails_at_construction(out):
    with pytest.raises(fn.LayerError, match=r"dense: out must be a positive int, got"):
        fn.dense(out)


def test_bad_w_init_fails_at_construction():
    with pytest.raises(fn.FuncnetError, match="dense: w_init must be an initializer"):
        fn.dense(3, w_init="xavier")
    with pytest.raises(fn.FuncnetError, match="gaussian: std must be a finite number"):
        fn.dense(3, w_init=-0.1)


def test_dense_on_rank_3_input_says_to_add_flatten():
    model = fn.serial(fn.conv2d(2, 3), fn.dense(10))
    with pytest.raises(fn.LayerError) as e:
        model.init(jax.random.PRNGKey(0), (4, 5, 5, 1))
    msg = str(e.value)
    assert msg.startswith("layer 1 (dense): ")
    assert "rank-2 input (batch, features)" in msg and "(4, 3, 3, 2)" in msg
    assert "add flatten" in msg
    with pytest.raises(fn.LayerError, match=r"layer 0 \(dense\).*\(2, 3, 4\).*add flatten"):
        fn.serial(fn.dense(3)).init(jax.random.PRNGKey(0), (2, 3, 4))


def test_dense_feature_mismatch_at_apply_names_layer_not_xla():
    model = fn.serial(fn.dense(8), fn.relu, fn.dense(3))
    params, state = model.init(jax.random.PRNGKey(0), (2, 5))
    for apply in (model.apply, jax.jit(model.apply)):
        with pytest.raises(fn.LayerError) as e:
            apply(params, state, jnp.zeros((2, 6)))
        msg = str(e.value)
        assert msg.startswith("layer 0 (dense): ")
        assert "expects 5 input features" in msg and "(5, 8)" in msg and "(2, 6)" in msg
        assert "dot_general" not in msg
    with pytest.raises(fn.LayerError, match=r"layer 0 \(dense\).*\(2, 5, 1\).*add flatten"):
        model.apply(params, state, jnp.zeros((2, 5, 1)))


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

@given(case=configs([(1, (1, 1)), (3, (4, 5)), (2, (3, 2))],
                    st.tuples(st.integers(1, 4), st.sampled_from([(1, 1), (3, 2), (4, 5)]))),
       seed=SEEDS)
def test_dense(case, seed):
    out, shape = case
    three_way(("dense", out), shape, seed)
