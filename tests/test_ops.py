"""ops: correlate / convolve in "valid" and "full" mode, rot180, dilate, downsample,
upsample — on 2-D matrices (as in the notes) and on NHWC batches, against loops; the CPU
arrangements of a convolution, kept to programs compiled for a CPU; the normalisation
backward against autodiff; float32 accumulation for bfloat16 / float16 operands (and no cast
at all for float32 / float64)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import ops
from tests.reference import normal


def full_convolution(x, k):
    """True 2-D convolution by its definition: every kernel entry adds a shifted, scaled
    copy of x, y[i + a, j + b] += k[a, b] x[i, j]  (the 2-D np.convolve)."""
    (h, w), (kh, kw) = x.shape, k.shape
    out = np.zeros((h + kh - 1, w + kw - 1))
    for a in range(kh):
        for b in range(kw):
            out[a:a + h, b:b + w] += k[a, b] * x
    return out


def valid_correlation(x, k):
    """cs231n-style loop: y[i, j] = Σ_ab x[i + a, j + b] k[a, b]."""
    (h, w), (kh, kw) = x.shape, k.shape
    out = np.zeros((h - kh + 1, w - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(x[i:i + kh, j:j + kw] * k)
    return out


# A few shapes (each new shape costs compilations); the values vary with the seed.
x_shapes = st.sampled_from([(1, 1), (3, 4), (5, 5), (2, 6), (6, 3)])
k_shapes = st.sampled_from([(1, 1), (2, 3), (3, 3), (4, 2)])


@given(seed=st.integers(0, 2**31 - 1), x_shape=x_shapes, k_shape=k_shapes)
def test_2d_convolve_and_correlate_match_loops(seed, x_shape, k_shape):
    (h, w), (kh, kw) = x_shape, k_shape
    x, k = normal(seed, (h, w)), normal(seed + 1, (kh, kw))
    with jax.enable_x64(True):
        X, K = jnp.asarray(x), jnp.asarray(k)
        full = full_convolution(x, k)
        np.testing.assert_allclose(np.asarray(ops.convolve(X, K, "full")), full, rtol=1e-12, atol=1e-12)
        # correlation is convolution with the kernel turned half a circle
        np.testing.assert_allclose(np.asarray(ops.correlate(X, K, "full")),
                                   full_convolution(x, k[::-1, ::-1]), rtol=1e-12, atol=1e-12)
        if h >= kh and w >= kw:
            # "valid" is the central part of "full", where the kernel lies wholly inside x
            valid = full[kh - 1:h, kw - 1:w]
            np.testing.assert_allclose(np.asarray(ops.convolve(X, K, "valid")), valid,
                                       rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(ops.correlate(X, K)), valid_correlation(x, k),
                                       rtol=1e-12, atol=1e-12)
            assert ops.correlate(X, K).shape == (h - kh + 1, w - kw + 1)
        assert ops.convolve(X, K, "full").shape == (h + kh - 1, w + kw - 1)


@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 3, 6]), k=st.sampled_from([1, 2, 4]))
def test_one_row_matrices_agree_with_numpy_convolve_and_correlate(seed, n, k):
    x, w = normal(seed, (n,)), normal(seed + 1, (k,))
    with jax.enable_x64(True):
        X, W = jnp.asarray(x[None]), jnp.asarray(w[None])
        np.testing.assert_allclose(np.asarray(ops.convolve(X, W, "full"))[0], np.convolve(x, w, "full"),
                                   rtol=1e-12, atol=1e-12)
        if n >= k:
            np.testing.assert_allclose(np.asarray(ops.convolve(X, W, "valid"))[0],
                                       np.convolve(x, w, "valid"), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(ops.correlate(X, W, "valid"))[0],
                                       np.correlate(x, w, "valid"), rtol=1e-12, atol=1e-12)


def test_nhwc_correlate_sums_over_input_channels_per_output_channel():
    x, w = normal(1, (2, 5, 4, 3)), normal(2, (3, 2, 3, 2))
    with jax.enable_x64(True):
        for mode in ("valid", "full"):
            y = np.asarray(ops.correlate(jnp.asarray(x), jnp.asarray(w), mode))
            c = np.asarray(ops.convolve(jnp.asarray(x), jnp.asarray(w), mode))
            for n in range(2):
                for o in range(2):
                    ref_corr = sum(full_convolution(x[n, :, :, i], w[::-1, ::-1, i, o]) for i in range(3))
                    ref_conv = sum(full_convolution(x[n, :, :, i], w[:, :, i, o]) for i in range(3))
                    if mode == "valid":
                        ref_corr, ref_conv = ref_corr[2:5, 1:4], ref_conv[2:5, 1:4]
                    np.testing.assert_allclose(y[n, :, :, o], ref_corr, rtol=1e-12, atol=1e-12)
                    np.testing.assert_allclose(c[n, :, :, o], ref_conv, rtol=1e-12, atol=1e-12)
        assert y.shape == (2, 7, 5, 2)


def test_correlate_with_stride_and_explicit_padding():
    x, k = normal(3, (6, 7)), normal(4, (3, 2))
    with jax.enable_x64(True):
        y = np.asarray(ops.correlate(jnp.asarray(x), jnp.asarray(k), stride=(2, 3),
                                     padding=((1, 0), (0, 2))))
    xp = np.pad(x, ((1, 0), (0, 2)))
    np.testing.assert_allclose(y, valid_correlation(xp, k)[::2, ::3], rtol=1e-12, atol=1e-12)


def _derivatives(conv):
    """y, the vjp of dy in x and w, the jvp along (tx, tw), and conv vmapped over ±x: one
    compiled program per convolution and case."""
    def run(x, w, dy, tx, tw):
        y, vjp = jax.vjp(conv, x, w)
        batched = jax.vmap(conv, in_axes=(0, None))(jnp.stack([x, -x]), w)
        return y, vjp(dy), jax.jvp(conv, (x, w), (tx, tw))[1], batched
    return jax.jit(run)


def _agrees_with_lax(cases, seed):
    """ops.correlate and lax's convolution: the same values, gradients in both operands,
    forward-mode derivatives and batching, in float64 (cases: x shape, kernel shape,
    stride, padding, kernel layout)."""
    with jax.enable_x64(True):
        for i, (xs, ws, stride, pads, kernel) in enumerate(cases):
            dims = ("NHWC", kernel, "NHWC")

            def conv(x, w, s=stride, p=pads, d=dims):
                return ops.correlate(x, w, stride=s, padding=p, dims=d)

            ours = _derivatives(conv)
            ref = _derivatives(lambda x, w, s=stride, p=pads, d=dims: jax.lax.conv_general_dilated(
                x, w, s, p, dimension_numbers=d))
            s = seed + 10 * i
            x, w = jnp.asarray(normal(s, xs)), jnp.asarray(normal(s + 1, ws))
            y_shape = jax.eval_shape(conv, x, w).shape
            args = (x, w, jnp.asarray(normal(s + 2, y_shape)), jnp.asarray(normal(s + 3, xs)),
                    jnp.asarray(normal(s + 4, ws)))
            got, want = ours(*args), ref(*args)
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-11)


def _compiled(x_shape, w_shape, **kw):
    with jax.enable_x64(True):
        return jax.jit(lambda x, w: ops.correlate(x, w, **kw)).lower(
            jnp.zeros(x_shape), jnp.zeros(w_shape)).compile().as_text()


def test_one_channel_correlate_is_lax_convolution_with_its_derivatives():
    """A one-channel input (of at least ~1k pixels) runs as the kernel's rows stacked as
    channels on CPU (faster on XLA:CPU), over strides, SAME-like and ragged paddings."""
    _agrees_with_lax([((4, 16, 16, 1), (3, 3, 1, 2), (1, 1), ((1, 1), (1, 1)), "HWIO"),
                      ((8, 13, 10, 1), (4, 2, 1, 3), (2, 3), ((1, 0), (0, 2)), "HWIO")], 10)
    # The arrangement itself holds for more channels (benchmarks/conv_forms.py times it there)
    with jax.enable_x64(True):
        x, w = jnp.asarray(normal(60, (2, 9, 8, 3))), jnp.asarray(normal(61, (3, 2, 3, 4)))
        np.testing.assert_allclose(
            ops._cpu_conv.rows_as_channels(x, w, (2, 1), ((1, 0), (0, 1))),
            jax.lax.conv_general_dilated(x, w, (2, 1), ((1, 0), (0, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")),
            rtol=1e-12, atol=1e-12)
    # The path is taken on CPU: the compiled convolution reads kh channels, not one.
    hlo = _compiled((16, 8, 8, 1), (5, 5, 1, 3), padding=((2, 2), (2, 2)))
    assert "f64[16,8,12,5]" in hlo, "one-channel correlate did not stack the kernel's rows"


def test_few_channel_correlate_runs_over_2x2_blocks_under_funcnets_flag(monkeypatch):
    """With YNNPACK's fusions off (funcnet's flag), 2-6 channels in (a forward convolution)
    or out (conv2d's dx, the kernel as HWOI) run over 2x2 blocks folded into channels: the
    same values and derivatives as lax's convolution, for odd and even sides, kernels of
    even and odd size and cropping pads. Under XLA's own flags (the suite's) XLA's
    convolution is kept."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # XLA's own flags, whatever the run's
    assert ops._cpu_conv.cpu_form(jnp.zeros((8, 14, 14, 6)), jnp.zeros((5, 5, 6, 16)), (1, 1),
                                  ((0, 0), (0, 0)), (1, 1), (1, 1), ops._DIMS) is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    _agrees_with_lax([((8, 14, 14, 6), (5, 5, 6, 4), (1, 1), ((0, 0), (0, 0)), "HWIO"),
                      ((8, 15, 13, 3), (2, 3, 3, 5), (1, 1), ((1, 0), (2, 1)), "HWIO"),
                      ((12, 10, 9, 5), (3, 3, 2, 5), (1, 1), ((2, 1), (-1, 2)), "HWOI")], 40)
    # LeNet's second convolution: 14x14x6 as 7x7 blocks of 24 channels, 4x16 = 64 out
    hlo = _compiled((8, 14, 14, 6), (5, 5, 6, 16))
    assert "f64[8,7,7,24]" in hlo and "f64[3,3,24,64]" in hlo, "few-channel correlate not blocked"



def _conv2d_forward_and_backward(c_in):
    """conv2d's forward and hand backward (x, params, dy) -> (y, dparams, dx), and its args."""
    layer = fn.conv2d(5, 3, padding="SAME")
    x_shape = (16, 9, 9, c_in)  # >= 1024 pixels: the CPU forms apply

    def run(x, params, dy):
        y, _, cache = layer.forward(params, {}, x)
        return y, layer.backward(params, cache, dy)

    with jax.enable_x64(True):
        params, _ = layer.init(jax.random.PRNGKey(0), x_shape, jnp.float64)
        args = (jnp.asarray(normal(1, x_shape)), params, jnp.asarray(normal(2, x_shape[:3] + (5,))))
    return run, args


def _convolutions(f, args, platform):
    """The type signatures of the convolutions in f's program lowered for `platform` (no
    device of that kind needed: the program is exported, not run)."""
    text = jax.export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()
    return sorted(re.findall(r"stablehlo\.convolution\(.*: (\(.*\) -> tensor<[^>]*>)", text))


@pytest.mark.parametrize("platform", ["cpu", "cuda", "rocm", "tpu"])
@pytest.mark.parametrize("c_in", [1, 3])
def test_cpu_arrangements_only_in_programs_compiled_for_a_cpu(platform, c_in, monkeypatch):
    """The rows-as-channels (one channel in) and 2x2-block (2-6 channels, under funcnet's
    flag) forms are chosen by the platform the program is lowered for: a program for a GPU
    or TPU holds exactly the convolutions of the plain lax.conv_general_dilated path,
    forward and backward; one for a CPU holds the CPU forms, with the plain path's values."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")  # both forms on
    run, args = _conv2d_forward_and_backward(c_in)
    with jax.enable_x64(True):
        arranged = _convolutions(run, args, platform)
        got = jax.jit(run)(*args) if platform == "cpu" else None
        monkeypatch.setattr(ops._cpu_conv, "cpu_form", lambda *a: None)  # the plain path only
        plain = _convolutions(lambda *a: run(*a), args, platform)
        want = jax.jit(lambda *a: run(*a))(*args) if platform == "cpu" else None
    assert len(plain) == 3  # y, dx, dw
    if platform != "cpu":
        assert arranged == plain
        return
    assert arranged != plain
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)

def test_rot180_flips_both_spatial_axes_only():
    m = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(ops.rot180(m)), [[5, 4, 3], [2, 1, 0]])
    w = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    r = np.asarray(ops.rot180(w))
    np.testing.assert_array_equal(r[0, 0], np.asarray(w[1, 2]))  # channels untouched
    np.testing.assert_array_equal(np.asarray(ops.rot180(ops.rot180(w))), np.asarray(w))


@pytest.mark.parametrize("h, w, stride", [(2, 3, 2), (3, 2, (2, 3)), (1, 4, 3), (3, 3, 1), (4, 1, (1, 2))])
def test_dilate_inserts_stride_minus_one_zeros(h, w, stride):
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = np.arange(1.0, h * w + 1).reshape(h, w)
    d = np.asarray(ops.dilate(jnp.asarray(x), stride))
    expected = np.zeros(((h - 1) * sh + 1, (w - 1) * sw + 1))
    expected[::sh, ::sw] = x
    np.testing.assert_array_equal(d, expected)
    xb = np.stack([x, -x], -1)[None]  # NHWC with two channels
    db = np.asarray(ops.dilate(jnp.asarray(xb), stride))
    np.testing.assert_array_equal(db[0, :, :, 0], expected)
    np.testing.assert_array_equal(db[0, :, :, 1], -expected)


def test_dilate_hand_example():
    d = ops.dilate(jnp.array([[1.0, 2.0], [3.0, 4.0]]), 2)
    np.testing.assert_array_equal(np.asarray(d), [[1, 0, 2], [0, 0, 0], [3, 0, 4]])


def downsample_reference(x, p, kind, edge):
    h, w = x.shape
    if edge == "pad":  # zero-fill the edge to a multiple of the window (the notes' mode)
        x = np.pad(x, ((0, -h % p[0]), (0, -w % p[1])))
    ho, wo = x.shape[0] // p[0], x.shape[1] // p[1]  # "ignore": the ragged edge is dropped
    f = np.max if kind == "max" else np.mean
    return np.array([[f(x[i * p[0]:(i + 1) * p[0], j * p[1]:(j + 1) * p[1]]) for j in range(wo)]
                     for i in range(ho)]).reshape(ho, wo)


DOWNSAMPLE = jax.jit(ops.downsample, static_argnums=(1, 2, 3))  # one compile per case


@given(seed=st.integers(0, 2**31 - 1), hw=st.sampled_from([(4, 5), (6, 6), (7, 3)]),
       window=st.sampled_from([2, (2, 3), 3, (1, 2)]),
       kind=st.sampled_from(["max", "mean"]), edge=st.sampled_from(["ignore", "pad"]))
def test_downsample_matches_loops_on_matrices_and_nhwc(seed, hw, window, kind, edge):
    h, w = hw
    p = (window, window) if isinstance(window, int) else window
    if edge == "ignore" and (h < p[0] or w < p[1]):
        return  # no whole window fits; covered by the layers' "larger than its input" errors
    x = normal(seed, (h, w))
    with jax.enable_x64(True):
        y = np.asarray(DOWNSAMPLE(jnp.asarray(x), window, kind, edge))
        expected = downsample_reference(x, p, kind, edge)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        xb = np.stack([x, 2 * x], -1)[None]
        yb = np.asarray(DOWNSAMPLE(jnp.asarray(xb), window, kind, edge))
        np.testing.assert_allclose(yb[0, :, :, 0], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(yb[0, :, :, 1], downsample_reference(2 * x, p, kind, edge),
                                   rtol=1e-12, atol=1e-12)


def test_downsample_edge_modes_on_a_hand_example():
    x = jnp.arange(1.0, 10.0).reshape(3, 3)
    np.testing.assert_array_equal(np.asarray(ops.downsample(x, 2, "max", "ignore")), [[5.0]])
    np.testing.assert_array_equal(np.asarray(ops.downsample(x, 2, "max", "pad")), [[5, 6], [8, 9]])
    np.testing.assert_allclose(np.asarray(ops.downsample(x, 2, "mean", "pad")),
                               [[3.0, 9 / 4], [15 / 4, 9 / 4]])


UPSAMPLE = jax.jit(ops.upsample, static_argnums=(1, 2))


@given(seed=st.integers(0, 2**31 - 1), h=st.sampled_from([1, 3]), w=st.sampled_from([2, 3]),
       window=st.sampled_from([(1, 1), (2, 2), (2, 3), (3, 1)]))
def test_upsample_is_the_kronecker_product_with_ones(seed, h, w, window):
    d = normal(seed, (h, w))
    with jax.enable_x64(True):
        up = np.asarray(UPSAMPLE(jnp.asarray(d), window))
        kron = np.kron(d, np.ones(window))
        np.testing.assert_array_equal(up, kron)
        db = np.stack([d, -d], -1)[None]
        upb = np.asarray(UPSAMPLE(jnp.asarray(db), window))
        np.testing.assert_array_equal(upb[0, :, :, 1], -kron)
        # to a given shape: cropped, or zero-filled past the windows (a ragged edge)
        H, W = h * window[0] + 1, max(1, w * window[1] - 1)
        shaped = np.asarray(UPSAMPLE(jnp.asarray(d), window, (H, W)))
        expected = np.zeros((H, W))
        expected[:h * window[0], :] = kron[:, :W]
        np.testing.assert_array_equal(shaped, expected)


def test_upsample_of_mean_pool_gradient_hand_example():
    dy = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(np.asarray(ops.upsample(dy / 4, 2)),
                                  np.kron([[1.0, 2.0], [3.0, 4.0]], np.ones((2, 2))) / 4)


def test_windows_and_scatter_windows_are_transposes():
    """⟨scatter(c), x⟩ = ⟨c, windows(x)⟩ for overlapping, padded windows."""
    x, c = normal(5, (2, 5, 6, 3)), normal(6, (2, 3, 3, 3, 6))
    pads = ((1, 0), (0, 1))
    with jax.enable_x64(True):
        cells = ops.windows(jnp.asarray(x), (2, 3), (2, 2), pads)
        assert cells.shape == (2, 3, 3, 3, 6)
        back = ops.scatter_windows(jnp.asarray(c), (2, 3), (2, 2), (5, 6), pads)
        assert back.shape == x.shape
        assert float(jnp.sum(back * x)) == pytest.approx(float(jnp.sum(cells * c)), rel=1e-12)
        xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        np.testing.assert_array_equal(np.asarray(cells[:, 1, 2, :, 4]), xp[:, 2 + 1, 4 + 1, :])



@pytest.mark.parametrize("axes", [(0, 1, 2), -1, (-1,)])
def test_normalize_backward_is_the_vjp_of_normalizing(axes):
    """dx = (1/σ)(dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)) over the normalised axes is the exact
    reverse of x -> x̂ = (x − μ)/√(var + ε): batch norm's axes (every one but the last) and
    layer norm's (the last)."""
    x, dx_hat = normal(7, (2, 3, 4, 5)), normal(8, (2, 3, 4, 5))
    eps = 1e-3

    def normalize(x):
        mean = x.mean(axes, keepdims=True)
        return (x - mean) / jnp.sqrt(x.var(axes, keepdims=True) + eps)

    with jax.enable_x64(True):
        x, dx_hat = jnp.asarray(x), jnp.asarray(dx_hat)
        x_hat, vjp = jax.vjp(normalize, x)
        inv_std = 1 / jnp.sqrt(x.var(axes, keepdims=True) + eps)
        got = ops.normalize_backward(dx_hat, x_hat, inv_std, axes)
        np.testing.assert_allclose(np.asarray(got), np.asarray(vjp(dx_hat)[0]), rtol=1e-10,
                                   atol=1e-12)
        # no gradient along a shift of a normalised slice: x̂ ignores it (μ takes it up)
        assert float(jnp.max(jnp.abs(jnp.sum(got, axes)))) < 1e-12

def test_ops_errors_are_clear():
    with pytest.raises(fn.LayerError, match="mode must be 'valid' or 'full', got 'same'"):
        ops.correlate(jnp.ones((3, 3)), jnp.ones((2, 2)), "same")
    with pytest.raises(fn.LayerError, match="kind must be 'max' or 'mean', got 'min'"):
        ops.downsample(jnp.ones((4, 4)), 2, "min")
    with pytest.raises(fn.LayerError, match="edge must be 'ignore' or 'pad', got 'keep'"):
        ops.downsample(jnp.ones((4, 4)), 2, "max", "keep")
    with pytest.raises(fn.LayerError, match=r"2-D matrix or an NHWC batch, got shape \(2, 3, 3\)"):
        ops.correlate(jnp.ones((2, 3, 3)), jnp.ones((2, 2)))


def test_widen_and_narrow_touch_only_narrow_floats():
    f32, bf16 = jnp.ones((2, 3)), jnp.ones((2, 3), jnp.bfloat16)
    ids = jnp.arange(3)
    assert ops.widen(f32) is f32 and ops.widen(ids) is ids and ops.widen(None) is None
    wide, same = ops.widen(bf16, f32)
    assert wide.dtype == jnp.float32 and same is f32
    assert ops.is_narrow(jnp.float16) and ops.is_narrow("bfloat16")
    assert not ops.is_narrow(jnp.float32) and not ops.is_narrow(jnp.int8)
    # back to narrow dtypes only: a float32 target (or float64) casts nothing
    assert ops.narrow(f32, jnp.float64) is f32 and ops.narrow(f32, f32.dtype) is f32
    tree = {"a": f32, "b": f32, "c": None}
    out = ops.narrow(tree, {"a": bf16, "b": jnp.ones(3), "c": None})
    assert out["a"].dtype == jnp.bfloat16 and out["b"] is f32 and out["c"] is None
    assert ops.narrow(tree, jnp.float16)["a"].dtype == jnp.float16


def one_rounding(got, truth, dtype):
    """got (in dtype) is the float64 truth rounded once: within half an ulp of dtype at each
    element's own size, plus float32 round-off of the sum."""
    got, truth = np.asarray(got, np.float64), np.asarray(truth, np.float64)
    half_ulp = float(jnp.finfo(dtype).eps) / 2
    bound = half_ulp * np.abs(truth) + 1e-6 * np.max(np.abs(truth))
    assert np.all(np.abs(got - truth) <= bound), np.max(np.abs(got - truth) / np.abs(truth))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_products_and_sums_accumulate_in_float32(dtype):
    """matmul, einsum, total and correlate of bfloat16 / float16 operands: the result in
    their dtype, summed in float32 (the exact sum rounded once, not once per term)."""
    a, b = (jnp.asarray(normal(s, shape), dtype) for s, shape in ((1, (3, 64)), (2, (64, 5))))
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    for got, truth in ((ops.matmul(a, b), a64 @ b64),
                       (ops.einsum("ik,kj->ij", a, b), a64 @ b64),
                       (ops.total(a, 1), a64.sum(1))):
        assert got.dtype == dtype
        one_rounding(got, truth, dtype)
    x, w = jnp.asarray(normal(3, (2, 6, 6, 8)), dtype), jnp.asarray(normal(4, (3, 3, 8, 4)), dtype)
    y = ops.correlate(x, w)
    assert y.dtype == dtype
    with jax.enable_x64(True):
        truth = ops.correlate(jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64))
    one_rounding(y, truth, dtype)
    # float32 operands: exactly XLA's own product
    f, g = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    np.testing.assert_array_equal(np.asarray(ops.matmul(f, g)), np.asarray(f @ g))
    assert ops.total(f, 1).dtype == jnp.float32


def test_overlapping_windows_add_up_in_float32():
    cells = jnp.asarray(normal(9, (1, 3, 3, 2, 9)) + 3.0, jnp.bfloat16)
    got = ops.scatter_windows(cells, (3, 3), (1, 1), (5, 5))
    with jax.enable_x64(True):
        truth = ops.scatter_windows(jnp.asarray(cells, jnp.float64), (3, 3), (1, 1), (5, 5))
    assert got.dtype == jnp.bfloat16
    one_rounding(got, truth, jnp.bfloat16)


def test_normalize_backward_of_narrow_arrays_is_computed_in_float32():
    x, dx_hat = normal(7, (8, 16)), normal(8, (8, 16))
    x_hat = (x - x.mean(0)) / x.std(0)
    inv_std = 1 / x.std(0)
    args = [jnp.asarray(a, jnp.bfloat16) for a in (dx_hat, x_hat, inv_std)]
    got = ops.normalize_backward(*args, 0)
    assert got.dtype == jnp.bfloat16
    with jax.enable_x64(True):
        truth = ops.normalize_backward(*(jnp.asarray(a, jnp.float64) for a in args), 0)
    # one rounding of the result, at the scale of the largest entry
    err = np.max(np.abs(np.asarray(got, np.float64) - np.asarray(truth)))
    assert err <= 2.0 ** -8 * float(np.max(np.abs(np.asarray(truth)))) * 1.01
