"""conv2d forward against a naive cs231n-style loop in float64, over hypothesis-drawn
kernels, strides and paddings ("VALID", "SAME", an int, explicit pairs)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from tests.reference import as_pair, int_or_pair, normal, pair, pool_init, resolve_pads
from tests.layers.three_way import SEEDS, configs, three_way


def conv_reference(x, w, b, stride, pads):
    """cs231n conv_forward_naive, NHWC / HWIO: one window at a time."""
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    n, hp, wp, _ = xp.shape
    kh, kw, _, c_out = w.shape
    sh, sw = stride
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = np.zeros((n, ho, wo, c_out))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]  # (n, kh, kw, c_in)
            for o in range(c_out):
                out[:, i, j, o] = np.sum(patch * w[:, :, :, o], axis=(1, 2, 3)) + b[o]
    return out


paddings = st.one_of(st.just("VALID"), st.just("SAME"), st.integers(0, 2),
                     st.tuples(pair(0, 2), pair(0, 2)))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.integers(1, 7),
       w=st.integers(1, 7), c_in=st.integers(1, 2), c_out=st.integers(1, 2),
       kernel=int_or_pair(1, 4), stride=int_or_pair(1, 3), padding=paddings)
def test_conv2d_forward_matches_naive_loops(seed, n, h, w, c_in, c_out, kernel, stride, padding):
    kernel2, stride2 = as_pair(kernel), as_pair(stride)
    pads = resolve_pads(padding, (h, w), kernel2, stride2)
    fits = h + sum(pads[0]) >= kernel2[0] and w + sum(pads[1]) >= kernel2[1]
    layer = fn.conv2d(c_out, kernel, stride=stride, padding=padding, w_init=pool_init(seed),
                      b_init=pool_init(seed + 1))
    with jax.enable_x64(True):
        k_init = jax.random.PRNGKey(seed)
        if not fits:
            with pytest.raises(fn.LayerError, match="larger than its input"):
                layer.init(k_init, (n, h, w, c_in), jnp.float64)
            return
        params, state = layer.init(k_init, (n, h, w, c_in), jnp.float64)
        assert params["w"].shape == kernel2 + (c_in, c_out) and params["b"].shape == (c_out,)
        assert params["w"].dtype == jnp.float64
        x = jnp.asarray(normal(seed + 2, (n, h, w, c_in)))
        y, new_state = layer.apply(params, state, x)
        expected = conv_reference(np.asarray(x), np.asarray(params["w"]), np.asarray(params["b"]),
                                  stride2, pads)
        assert y.shape == expected.shape == layer.output_shape((n, h, w, c_in))
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
        assert new_state == {}


@pytest.mark.parametrize("h, w, kernel, stride", [(5, 5, 3, 1), (6, 7, 3, 2), (7, 4, (2, 3), (3, 2)),
                                                  (1, 1, 3, 1)])
def test_same_padding_keeps_ceil_in_over_stride_and_agrees_with_xla(h, w, kernel, stride):
    """"SAME" gives ceil(in / stride) and the same numbers as XLA's own "SAME"."""
    layer = fn.conv2d(2, kernel, stride=stride, padding="SAME", w_init=pool_init(h * w))
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(0), (2, h, w, 3), jnp.float64)
        x = jnp.asarray(normal(7, (2, h, w, 3)))
        y, _ = layer.apply(params, state, x)
        s = as_pair(stride)
        assert y.shape == (2, math.ceil(h / s[0]), math.ceil(w / s[1]), 2)
        ref = jax.lax.conv_general_dilated(x, params["w"], s, "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-12, atol=1e-12)


def test_conv2d_is_cross_correlation_on_a_hand_example():
    """A 3x3 input, a 2x2 kernel: y[i, j] = Σ x[i+a, j+b] w[a, b] (no kernel flip)."""
    layer = fn.conv2d(1, (2, 2))
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    w = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
    y, _ = layer.apply({"w": w, "b": jnp.array([0.5])}, {}, x)
    # top-left: 0*1 + 1*2 + 3*3 + 4*4 = 27
    np.testing.assert_allclose(np.asarray(y[0, :, :, 0]), [[27.5, 37.5], [57.5, 67.5]])


def test_conv2d_default_init_is_xavier_weights_and_zero_bias():
    layer = fn.conv2d(64, (5, 5))
    params, _ = layer.init(jax.random.PRNGKey(0), (1, 8, 8, 32))
    assert params["w"].dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.std(params["w"])), math.sqrt(1 / (5 * 5 * 32)), rtol=0.03)
    np.testing.assert_array_equal(np.asarray(params["b"]), np.zeros(64))


def test_conv2d_accepts_a_number_as_w_init():
    params, _ = fn.conv2d(64, (5, 5), w_init=0.05).init(jax.random.PRNGKey(3), (1, 8, 8, 32))
    np.testing.assert_allclose(float(jnp.std(params["w"])), 0.05, rtol=0.03)


@pytest.mark.parametrize("make, message", [
    (lambda: fn.conv2d(4, (3, 3), stride=0), "stride must be positive"),
    (lambda: fn.conv2d(4, (3, 3), stride=(1, -2)), "stride must be positive"),
    (lambda: fn.conv2d(4, (0, 3)), "kernel_size must be positive"),
    (lambda: fn.conv2d(4, 0), "kernel_size must be positive"),
    (lambda: fn.conv2d(4, (3, 3, 3)), "kernel_size must be an int or a pair"),
    (lambda: fn.conv2d(4, 2.5), "kernel_size must be an int or a pair"),
    (lambda: fn.conv2d(0, (3, 3)), "out_channels must be a positive int"),
    (lambda: fn.conv2d(2.0, (3, 3)), "out_channels must be a positive int"),
    (lambda: fn.conv2d(4, 3, padding="FULL"), "padding must be 'VALID', 'SAME'"),
    (lambda: fn.conv2d(4, 3, padding="valid "), "padding must be 'VALID', 'SAME'"),
    (lambda: fn.conv2d(4, 3, padding=-1), "padding must not be negative"),
    (lambda: fn.conv2d(4, 3, padding=((1, 1),)), "padding must be 'VALID', 'SAME'"),
    (lambda: fn.conv2d(4, 3, padding=((1, -1), (0, 0))), "padding must not be negative"),
    (lambda: fn.conv2d(4, 3, padding=((1.5, 1), (0, 0))), "padding must be 'VALID', 'SAME'"),
    (lambda: fn.conv2d(4, 3, w_init="he"), "w_init must be an initializer"),
])
def test_bad_hyperparameters_fail_at_construction(make, message):
    with pytest.raises(fn.FuncnetError, match=message) as e:
        make()
    assert "conv2d" in str(e.value)


def test_conv_on_a_non_nhwc_input_fails_at_init_naming_layer_and_shape():
    model = fn.serial(fn.dense(4), fn.conv2d(2, (3, 3)))
    with pytest.raises(fn.LayerError) as e:
        model.init(jax.random.PRNGKey(0), (2, 8))
    msg = str(e.value)
    assert msg.startswith("layer 1 (conv2d): ")
    assert "NHWC" in msg and "(2, 4)" in msg


def test_conv_kernel_larger_than_valid_input_fails_at_init():
    model = fn.serial(fn.conv2d(2, (5, 5)), fn.relu, fn.conv2d(2, (3, 3)))
    with pytest.raises(fn.LayerError) as e:
        model.init(jax.random.PRNGKey(0), (1, 6, 6, 1))
    msg = str(e.value)
    assert msg.startswith("layer 2 (conv2d): ")
    assert "kernel (3, 3) is larger than its input" in msg and "(2, 2)" in msg
    assert "(1, 2, 2, 2)" in msg
    # the same kernel fits once the input is padded
    params, _ = fn.serial(fn.conv2d(2, (5, 5)), fn.conv2d(2, (3, 3), padding=1)).init(
        jax.random.PRNGKey(0), (1, 6, 6, 1))
    assert params[1]["w"].shape == (3, 3, 2, 2)


def test_conv_channel_mismatch_at_apply_names_the_layer_and_shapes():
    model = fn.serial(fn.conv2d(2, (3, 3)), fn.relu)
    params, state = model.init(jax.random.PRNGKey(0), (1, 5, 5, 3))
    with pytest.raises(fn.LayerError) as e:
        model.apply(params, state, jnp.zeros((1, 5, 5, 4)))
    msg = str(e.value)
    assert msg.startswith("layer 0 (conv2d): ")
    assert "expects 3 input channels" in msg and "(3, 3, 3, 2)" in msg and "(1, 5, 5, 4)" in msg
    # also under jit: the check runs at trace time, before XLA sees the shapes
    with pytest.raises(fn.LayerError, match="expects 3 input channels"):
        jax.jit(model.apply)(params, state, jnp.zeros((1, 5, 5, 4)))


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

PADDINGS = st.sampled_from(["VALID", "SAME", 0, 1, 2, ((0, 1), (2, 0)), ((1, 2), (0, 1))])
CONV_FULL = st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 3, (1, 2), (2, 3), (3, 1)]),
                      st.sampled_from([1, 2, 3, (1, 2), (2, 1)]), PADDINGS,
                      st.sampled_from([(5, 5), (6, 4), (7, 7), (8, 5)]), st.integers(1, 2))
# (out, kernel, stride, padding, (h, w), c_in): every padding mode; ragged edges where the
# windows stop short of the input (rows/columns no window reads get zero gradient).
CONV_CURATED = [
    (2, 3, 1, "VALID", (5, 5), 2),
    (1, (2, 3), 2, "SAME", (6, 4), 1),         # SAME with stride: uneven padding
    (2, 3, 3, 1, (8, 8), 2),                   # int padding, stride 3, one ragged row/column
    (2, (3, 1), (2, 1), ((0, 1), (2, 0)), (7, 4), 1),  # explicit pairs, ragged bottom row
    (1, 2, (1, 2), "SAME", (5, 7), 2),
    (3, 1, 2, "VALID", (5, 6), 1),             # 1x1 kernel, stride 2: skipped rows/columns
]


@given(case=configs(CONV_CURATED, CONV_FULL), seed=SEEDS)
def test_conv2d(case, seed):
    out, kernel, stride, padding, hw, c_in = case
    three_way(("conv2d", out, kernel, stride, padding), (2,) + hw + (c_in,), seed)


def test_conv2d_under_funcnets_flag_keeps_values_and_gradients(monkeypatch):
    """With YNNPACK's fusions off (funcnet's flag) a 2-6 channel conv2d runs over 2x2 blocks,
    forward, autodiff and its hand dx (ops._cpu_conv): the same output, and the same
    gradients from the hand formulas and from jax.vjp, as XLA's own convolution gives."""
    layer = fn.conv2d(5, 3, padding="SAME")
    x_shape = (8, 12, 11, 3)  # >= 1024 pixels: the blocked path applies

    def run(x, params, dy):
        y, _, cache = layer.forward(params, {}, x)
        manual = layer.backward(params, cache, dy)
        auto = jax.vjp(lambda p, x: layer.forward(p, {}, x)[0], params, x)[1](dy)
        return y, manual, auto

    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the reference: XLA's convolution
    with jax.enable_x64(True):
        params, _ = layer.init(jax.random.PRNGKey(0), x_shape, jnp.float64)
        x = jnp.asarray(normal(1, x_shape))
        dy = jnp.asarray(normal(2, x_shape[:3] + (5,)))
        want = jax.jit(run)(x, params, dy)
        monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
        blocked = jax.jit(lambda x, p, d: run(x, p, d))
        assert "f64[8,7,7,12]" in blocked.lower(x, params, dy).compile().as_text()
        got = blocked(x, params, dy)
    y, (m_params, m_dx), (a_params, a_dx) = got
    y0, (m_params0, m_dx0), _ = want
    np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12)
    for g in (m_params, a_params):
        for k in ("w", "b"):
            np.testing.assert_allclose(g[k], m_params0[k], rtol=1e-11, atol=1e-11)
    for dx in (m_dx, a_dx):
        np.testing.assert_allclose(dx, m_dx0, rtol=1e-11, atol=1e-11)
