"""conv_transpose2d: forward against a NumPy scatter loop (torch's definition) over
hypothesis-drawn kernels, strides and paddings, a hand example computed once with
torch.nn.ConvTranspose2d, the backward three ways, and the bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from tests.reference import as_pair, int_or_pair, normal, pool_init


def conv_transpose_reference(x, w, b, stride, padding):
    """Every input pixel adds x[n, h, w, :] · W into the output window at (h·s, w·s); then
    `padding` is cropped from the edges (an int p from both sides, as torch does; "SAME"
    leaves H·s: crop max(k − s, 0) with the odd one at the bottom, zeros added when k < s)."""
    n, h, wd, _ = x.shape
    kh, kw, _, c_out = w.shape
    sh, sw = stride
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, c_out))
    for i in range(h):
        for j in range(wd):
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += np.einsum(
                "nc,ijco->nijo", x[:, i, j, :], w)
    if padding == "SAME":
        rows, cols = h * sh, wd * sw
        top, left = max(kh - sh, 0) // 2, max(kw - sw, 0) // 2
        out = np.zeros((n, rows, cols, c_out))
        part = full[:, top:top + rows, left:left + cols]
        out[:, :part.shape[1], :part.shape[2]] = part
        return out + b
    p = 0 if padding == "VALID" else padding
    return full[:, p:full.shape[1] - p, p:full.shape[2] - p] + b


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 4), w=st.integers(1, 4),
       c_in=st.integers(1, 2), c_out=st.integers(1, 2), kernel=int_or_pair(1, 3),
       stride=int_or_pair(1, 3), padding=st.one_of(st.just("VALID"), st.just("SAME"),
                                                    st.integers(0, 1)))
def test_forward_matches_the_scatter_loop(seed, h, w, c_in, c_out, kernel, stride, padding):
    k, s = as_pair(kernel), as_pair(stride)
    layer = fn.conv_transpose2d(c_out, kernel, stride, padding, w_init=pool_init(seed),
                                b_init=pool_init(seed + 1))
    shape = (2, h, w, c_in)
    with jax.enable_x64(True):
        if isinstance(padding, int) and min((h - 1) * s[0] + k[0], (w - 1) * s[1] + k[1]) - 2 * padding < 1:
            with pytest.raises(fn.LayerError, match="crops the whole output"):
                layer.init(jax.random.PRNGKey(0), shape, jnp.float64)
            return
        params, state = layer.init(jax.random.PRNGKey(0), shape, jnp.float64)
        assert params["w"].shape == k + (c_in, c_out) and params["w"].dtype == jnp.float64
        x = jnp.asarray(normal(seed + 2, shape))
        y, _ = layer.apply(params, state, x)
        expected = conv_transpose_reference(np.asarray(x), np.asarray(params["w"]),
                                            np.asarray(params["b"]), s, padding)
        assert y.shape == expected.shape == layer.output_shape(shape)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    if padding == "VALID":
        assert y.shape[1:3] == ((h - 1) * s[0] + k[0], (w - 1) * s[1] + k[1])
    if padding == "SAME":
        assert y.shape[1:3] == (h * s[0], w * s[1])


@pytest.mark.parametrize("padding, expected", [
    (0, [[0.5, 2.0, 2.5, 1.5, 3.5], [5.0, 6.5, 13.0, 7.5, 9.5], [-1.5, 1.0, 0.5, 0.5, 3.5],
         [6.0, 8.5, 17.0, 9.5, 12.5]]),
    (1, [[6.5, 13.0, 7.5], [1.0, 0.5, 0.5]])])
def test_agrees_with_torch_conv_transpose2d_on_a_hand_example(padding, expected):
    """Numbers from torch.nn.functional.conv_transpose2d(x, W, b, stride=2, padding=p) with
    x = arange(1, 9) as (1, 2, 2, 2) NCHW, W = (arange(1, 13) − 6) / 4 as (2, 1, 2, 3) and
    b = 0.5 (torch 2.13, CPU); funcnet's weight is W.transpose(2, 3, 0, 1)."""
    x = np.arange(1.0, 9.0).reshape(1, 2, 2, 2).transpose(0, 2, 3, 1)
    w_torch = (np.arange(1.0, 13.0).reshape(2, 1, 2, 3) - 6) / 4
    params = {"w": jnp.asarray(w_torch.transpose(2, 3, 0, 1)), "b": jnp.array([0.5])}
    y, _ = fn.conv_transpose2d(1, (2, 3), 2, padding).apply(params, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y[0, :, :, 0]), expected, rtol=1e-6)


def test_backward_three_ways():
    """Two configurations side by side in one model (one compilation): int padding under
    stride, and "SAME" with k < s on the height (zeros added at the bottom) and k > s on
    the width (cropped)."""
    configs = [(3, 2, 1), ((2, 3), (3, 1), "SAME")]
    model = fn.serial(fn.fanout(2), fn.parallel(*[fn.serial(fn.conv_transpose2d(2, *c), fn.flatten)
                                                  for c in configs]), fn.fanin_concat())
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(1), (2, 3, 2, 2), jnp.float64)
        params = jax.tree_util.tree_map(lambda p: p + jnp.asarray(normal(3, p.shape)), params)
        report = fn.check_gradients(model, params, state, jnp.asarray(normal(4, (2, 3, 2, 2))))
    assert report.ok, report
    assert len(report.rows) == 5  # w and b of each configuration, and the input


def test_same_is_the_adjoint_of_a_same_conv2d():
    """⟨conv2d(u), v⟩ = ⟨u, conv_transpose2d(v)⟩ with one kernel (its channels swapped):
    "SAME" of stride s maps H to H·s as the SAME conv2d maps H·s to H."""
    s, k = 2, 3
    conv = fn.conv2d(3, k, s, "SAME")
    convt = fn.conv_transpose2d(2, k, s, "SAME")
    w = jnp.asarray(normal(5, (k, k, 2, 3)))
    u, v = jnp.asarray(normal(6, (1, 6, 6, 2))), jnp.asarray(normal(7, (1, 3, 3, 3)))
    with jax.enable_x64(True):
        u, v, w = (jnp.asarray(a, jnp.float64) for a in (u, v, w))
        cu, _ = conv.apply({"w": w, "b": jnp.zeros(3)}, {}, u)
        tv, _ = convt.apply({"w": w.transpose(0, 1, 3, 2), "b": jnp.zeros(2)}, {}, v)
        assert tv.shape == u.shape
        np.testing.assert_allclose(float(jnp.sum(cu * v)), float(jnp.sum(u * tv)), rtol=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda: fn.conv_transpose2d(0, 3), "out_channels must be a positive int"),
    (lambda: fn.conv_transpose2d(2, 0), "kernel_size must be positive"),
    (lambda: fn.conv_transpose2d(2, 3, stride=0), "stride must be positive"),
    (lambda: fn.conv_transpose2d(2, 3, padding="FULL"), "padding must be 'VALID', 'SAME'"),
    (lambda: fn.conv_transpose2d(2, 3, padding=-1), "padding must not be negative"),
])
def test_bad_hyperparameters_fail_at_construction(make, message):
    with pytest.raises(fn.LayerError, match=message) as e:
        make()
    assert "conv_transpose2d" in str(e.value)


def test_wrong_rank_and_channels_name_the_layer():
    with pytest.raises(fn.LayerError, match=r"layer 1 \(conv_transpose2d\): .*NHWC.*\(2, 4\)"):
        fn.serial(fn.dense(4), fn.conv_transpose2d(2, 3)).init(jax.random.PRNGKey(0), (2, 3))
    layer = fn.conv_transpose2d(2, 3)
    params, state = layer.init(jax.random.PRNGKey(0), (1, 2, 2, 3))
    with pytest.raises(fn.LayerError, match="expects 3 input channels"):
        layer.apply(params, state, jnp.zeros((1, 2, 2, 4)))
