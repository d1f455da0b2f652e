"""conv1d: forward against a NumPy loop over hypothesis-drawn kernels, strides and
paddings; backward three ways; bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from tests.reference import normal, pool_init


def conv1d_reference(x, w, b, stride, pads):
    xp = np.pad(x, ((0, 0), pads, (0, 0)))
    k, _, c_out = w.shape
    steps = (xp.shape[1] - k) // stride + 1
    out = np.zeros((x.shape[0], steps, c_out))
    for t in range(steps):
        for o in range(c_out):
            out[:, t, o] = np.sum(xp[:, t * stride:t * stride + k, :] * w[:, :, o], axis=(1, 2)) + b[o]
    return out


def resolve(padding, width, k, s):
    if padding == "VALID":
        return (0, 0)
    if padding == "SAME":
        total = max((math.ceil(width / s) - 1) * s + k - width, 0)
        return (total // 2, total - total // 2)
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 8), c_in=st.integers(1, 3),
       c_out=st.integers(1, 2), k=st.integers(1, 4), s=st.integers(1, 3),
       padding=st.one_of(st.just("VALID"), st.just("SAME"), st.integers(0, 2),
                         st.tuples(st.integers(0, 2), st.integers(0, 2))))
def test_forward_matches_loops(seed, width, c_in, c_out, k, s, padding):
    layer = fn.conv1d(c_out, k, s, padding, w_init=pool_init(seed), b_init=pool_init(seed + 1))
    pads = resolve(padding, width, k, s)
    shape = (2, width, c_in)
    with jax.enable_x64(True):
        if width + sum(pads) < k:
            with pytest.raises(fn.LayerError, match="larger than its input"):
                layer.init(jax.random.PRNGKey(0), shape, jnp.float64)
            return
        params, state = layer.init(jax.random.PRNGKey(0), shape, jnp.float64)
        assert params["w"].shape == (k, c_in, c_out) and params["w"].dtype == jnp.float64
        x = jnp.asarray(normal(seed + 2, shape))
        y, _ = layer.apply(params, state, x)
        expected = conv1d_reference(np.asarray(x), np.asarray(params["w"]), np.asarray(params["b"]),
                                    s, pads)
        assert y.shape == expected.shape == layer.output_shape(shape)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


def test_backward_three_ways():
    """Two configurations side by side in one model (one compilation)."""
    model = fn.serial(fn.fanout(2), fn.parallel(fn.conv1d(2, 3, 2, 1), fn.conv1d(2, 2, 1, "SAME")),
                      fn.fanin_concat(axis=1))
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(0), (2, 5, 2), jnp.float64)
        params = jax.tree_util.tree_map(lambda p: p + jnp.asarray(normal(1, p.shape)), params)
        report = fn.check_gradients(model, params, state, jnp.asarray(normal(2, (2, 5, 2))))
    assert report.ok, report


@pytest.mark.parametrize("make, message", [
    (lambda: fn.conv1d(0, 3), "out_channels must be a positive int"),
    (lambda: fn.conv1d(2, (3, 3)), "kernel_size must be a positive int"),
    (lambda: fn.conv1d(2, 3, stride=0), "stride must be a positive int"),
    (lambda: fn.conv1d(2, 3, padding=(1,)), r"padding must be .* \(left, right\)"),
    (lambda: fn.conv1d(2, 3, padding="FULL"), r"padding must be"),
])
def test_bad_hyperparameters_fail_at_construction(make, message):
    with pytest.raises(fn.LayerError, match=message) as e:
        make()
    assert str(e.value).startswith("conv1d")


def test_wrong_input_rank_and_channels():
    with pytest.raises(fn.LayerError, match=r"layer 0 \(conv1d\): conv1d expects NWC .*\(2, 5, 5, 1\)"):
        fn.serial(fn.conv1d(2, 3)).init(jax.random.PRNGKey(0), (2, 5, 5, 1))
    layer = fn.conv1d(2, 3)
    params, state = layer.init(jax.random.PRNGKey(0), (1, 5, 2))
    with pytest.raises(fn.LayerError, match="expects 2 input channels"):
        layer.apply(params, state, jnp.zeros((1, 5, 3)))
