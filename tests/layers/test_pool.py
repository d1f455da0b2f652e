"""Pooling forward (max, avg, gaussian, learned) against naive window loops in float64,
over hypothesis-drawn windows, strides (overlapping ones included) and paddings."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from tests.reference import as_pair, int_or_pair, normal, pair, resolve_pads
from tests.layers.three_way import SEEDS, configs, three_way


def gaussian_weights(window, sigma):
    ph, pw = window
    i = np.arange(ph) - (ph - 1) / 2
    j = np.arange(pw) - (pw - 1) / 2
    g = np.exp(-(i[:, None] ** 2 + j[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def pool_reference(x, kind, window, stride, pads, sigma=1.0, w=None):
    """One window at a time. Max pads with -inf (a pad never wins); the others pad with 0
    and weigh every cell of the window (the mean divides by the full area)."""
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
    n, hp, wp, c = xp.shape
    (ph, pw), (sh, sw) = window, stride
    ho, wo = (hp - ph) // sh + 1, (wp - pw) // sw + 1
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * sh:i * sh + ph, j * sw:j * sw + pw, :]  # (n, ph, pw, c)
            if kind == "max":
                out[:, i, j, :] = patch.max(axis=(1, 2))
            elif kind == "avg":
                out[:, i, j, :] = patch.mean(axis=(1, 2))
            elif kind == "gaussian":
                out[:, i, j, :] = np.sum(patch * gaussian_weights(window, sigma)[None, :, :, None],
                                         axis=(1, 2))
            else:  # learned: one weight per window cell and channel
                out[:, i, j, :] = np.sum(patch * w[None], axis=(1, 2))
    return out


paddings = st.one_of(st.just("VALID"), st.just("SAME"), st.integers(0, 1),
                     st.tuples(pair(0, 1), pair(0, 1)))


def make(kind, window, stride, padding, sigma=1.0, seed=0):
    if kind == "max":
        return fn.max_pool(window, stride, padding)
    if kind == "avg":
        return fn.avg_pool(window, stride, padding)
    if kind == "gaussian":
        return fn.gaussian_pool(window, sigma, stride, padding)
    init = lambda key, shape, dtype=jnp.float32: jnp.asarray(normal(seed, shape), dtype)
    return fn.learned_pool(window, stride, padding, w_init=init)


@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["max", "avg", "gaussian", "learned"]),
       n=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 2),
       window=int_or_pair(1, 3), stride=st.one_of(st.none(), int_or_pair(1, 3)),
       padding=paddings, sigma=st.floats(0.3, 3.0))
def test_pool_forward_matches_naive_loops(seed, kind, n, h, w, c, window, stride, padding, sigma):
    window2 = as_pair(window)
    stride2 = window2 if stride is None else as_pair(stride)  # the stride defaults to the window
    pads = resolve_pads(padding, (h, w), window2, stride2)
    layer = make(kind, window, stride, padding, sigma, seed)
    shape = (n, h, w, c)
    with jax.enable_x64(True):
        if any(p >= k for side, k in zip(pads, window2) for p in side):
            with pytest.raises(fn.LayerError, match="must be smaller than the window"):
                layer.init(jax.random.PRNGKey(seed), shape, jnp.float64)
            return
        if h + sum(pads[0]) < window2[0] or w + sum(pads[1]) < window2[1]:
            with pytest.raises(fn.LayerError, match="larger than its input"):
                layer.init(jax.random.PRNGKey(seed), shape, jnp.float64)
            return
        params, state = layer.init(jax.random.PRNGKey(seed), shape, jnp.float64)
        x = jnp.asarray(normal(seed + 1, shape))
        y, new_state = jax.jit(layer.apply)(params, state, x)  # one compile, not one per op
        weights = None
        if kind == "learned":
            assert params["w"].shape == window2 + (c,) and params["w"].dtype == jnp.float64
            weights = np.asarray(params["w"])
        else:
            assert params == {}
        expected = pool_reference(np.asarray(x), kind, window2, stride2, pads, sigma, weights)
        assert y.shape == expected.shape == layer.output_shape(shape)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
        assert new_state == {}


X44 = jnp.array([[1.0, 3.0, 2.0, 0.0],
                 [4.0, -1.0, 5.0, 6.0],
                 [0.0, 2.0, -3.0, 1.0],
                 [7.0, 1.0, 1.0, 2.0]]).reshape(1, 4, 4, 1)


def test_max_and_avg_pool_on_a_hand_example():
    y, _ = fn.max_pool((2, 2)).apply({}, {}, X44)
    np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[4.0, 6.0], [7.0, 2.0]])
    y, _ = fn.avg_pool(2).apply({}, {}, X44)
    np.testing.assert_allclose(np.asarray(y[0, :, :, 0]), [[7 / 4, 13 / 4], [10 / 4, 1 / 4]])


def test_overlapping_max_pool_3_stride_2():
    """AlexNet's overlapping pool: 3x3 windows every 2 pixels."""
    layer = fn.max_pool((3, 3), stride=2)
    assert layer.output_shape((1, 13, 13, 4)) == (1, 6, 6, 4)
    y, _ = layer.apply({}, {}, X44)
    # windows rows/cols 0-2 only (the ragged last row/column is ignored under "VALID")
    np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[5.0]])
    y, _ = fn.max_pool(3, stride=1).apply({}, {}, X44)
    np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[5.0, 6.0], [7.0, 6.0]])


def test_ragged_edge_valid_ignores_it_and_same_keeps_it():
    x = jnp.arange(25.0).reshape(1, 5, 5, 1) - 30.0  # every value negative
    y, _ = fn.max_pool(2).apply({}, {}, x)
    np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), [[-24.0, -22.0], [-14.0, -12.0]])
    y, _ = fn.max_pool(2, padding="SAME").apply({}, {}, x)
    assert y.shape == (1, 3, 3, 1)
    # the kept edge holds the real values: -inf padding never wins, even over negatives
    np.testing.assert_array_equal(np.asarray(y[0, :, 2, 0]), [-21.0, -11.0, -6.0])
    np.testing.assert_array_equal(np.asarray(y[0, 2, :, 0]), [-9.0, -7.0, -6.0])
    y, _ = fn.avg_pool(2, padding="SAME").apply({}, {}, x)
    # the corner window holds x[4, 4] and three zeros, divided by the full area
    assert float(y[0, 2, 2, 0]) == pytest.approx(-6.0 / 4)


def test_gaussian_pool_weights_are_a_normalized_gaussian():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)  # an impulse at the window centre
    y, _ = fn.gaussian_pool(3, sigma=1.0).apply({}, {}, x)
    assert float(y[0, 0, 0, 0]) == pytest.approx(1 / sum(math.exp(-(i * i + j * j) / 2)
                                                         for i in (-1, 0, 1) for j in (-1, 0, 1)))
    ones = jnp.ones((1, 6, 6, 2))
    y, _ = fn.gaussian_pool(3, sigma=0.7).apply({}, {}, ones)
    np.testing.assert_allclose(np.asarray(y), 1.0, rtol=1e-6)  # weights sum to 1
    x = jnp.arange(36.0).reshape(1, 6, 6, 1)
    wide, _ = fn.gaussian_pool(2, sigma=1e4).apply({}, {}, x)  # a flat Gaussian is the mean
    mean, _ = fn.avg_pool(2).apply({}, {}, x)
    np.testing.assert_allclose(np.asarray(wide), np.asarray(mean), rtol=1e-6)
    narrow, _ = fn.gaussian_pool(3, sigma=0.05).apply({}, {}, x)  # a sharp one is the centre
    np.testing.assert_allclose(np.asarray(narrow[0, :, :, 0]), [[7.0, 10.0], [25.0, 28.0]], rtol=1e-6)


def test_learned_pool_starts_as_mean_pooling_with_one_weight_per_cell_and_channel():
    layer = fn.learned_pool((2, 3))
    params, _ = layer.init(jax.random.PRNGKey(0), (2, 4, 6, 3))
    assert params["w"].shape == (2, 3, 3)
    np.testing.assert_allclose(np.asarray(params["w"]), 1 / 6)
    x = jnp.asarray(normal(3, (2, 4, 6, 3)), jnp.float32)
    y, _ = layer.apply(params, {}, x)
    mean, _ = fn.avg_pool((2, 3)).apply({}, {}, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(mean), rtol=1e-5, atol=1e-6)
    # channel 1 weighted differently from the others
    w = params["w"].at[:, :, 1].set(0.0).at[0, 0, 1].set(2.0)
    y, _ = layer.apply({"w": w}, {}, x)
    np.testing.assert_allclose(np.asarray(y[:, :, :, 1]), 2 * np.asarray(x[:, ::2, ::3, 1]), rtol=1e-6)


@pytest.mark.parametrize("make_layer, message", [
    (lambda: fn.max_pool(0), "window must be positive"),
    (lambda: fn.avg_pool((2, -1)), "window must be positive"),
    (lambda: fn.gaussian_pool((0, 2)), "window must be positive"),
    (lambda: fn.learned_pool(-3), "window must be positive"),
    (lambda: fn.max_pool(2, stride=0), "stride must be positive"),
    (lambda: fn.avg_pool(2, stride=(1, 0)), "stride must be positive"),
    (lambda: fn.max_pool(2.0), "window must be an int or a pair"),
    (lambda: fn.max_pool((2, 2, 2)), "window must be an int or a pair"),
    (lambda: fn.max_pool(2, padding="FULL"), "padding must be 'VALID', 'SAME'"),
    (lambda: fn.avg_pool(2, padding=-1), "padding must not be negative"),
    (lambda: fn.gaussian_pool(3, sigma=0.0), "sigma must be a positive number"),
    (lambda: fn.gaussian_pool(3, sigma=float("nan")), "sigma must be a positive number"),
])
def test_bad_pool_hyperparameters_fail_at_construction(make_layer, message):
    with pytest.raises(fn.LayerError, match=message):
        make_layer()


@pytest.mark.parametrize("kind", ["max", "avg", "gaussian", "learned"])
def test_window_larger_than_valid_input_fails_at_init_naming_layer(kind):
    pool = make(kind, 4, None, "VALID")
    model = fn.serial(fn.conv2d(2, 3), pool)
    with pytest.raises(fn.LayerError) as e:
        model.init(jax.random.PRNGKey(0), (1, 5, 5, 1))
    msg = str(e.value)
    assert msg.startswith(f"layer 1 ({pool.name}): ")
    assert "window (4, 4) is larger than its input" in msg and "(1, 3, 3, 2)" in msg
    # "SAME" pads instead: ceil(3 / 4) = 1 output cell
    params, _ = fn.serial(fn.conv2d(2, 3), make(kind, 4, None, "SAME")).init(
        jax.random.PRNGKey(0), (1, 5, 5, 1))
    assert fn.serial(fn.conv2d(2, 3), make(kind, 4, None, "SAME")).output_shape((1, 5, 5, 1)) \
        == (1, 1, 1, 2)


def test_pool_on_a_non_nhwc_input_fails_at_init():
    with pytest.raises(fn.LayerError) as e:
        fn.serial(fn.flatten, fn.max_pool(2)).init(jax.random.PRNGKey(0), (3, 4, 4, 1))
    msg = str(e.value)
    assert msg.startswith("layer 1 (max_pool): ") and "NHWC" in msg and "(3, 16)" in msg


def test_learned_pool_channel_mismatch_at_apply_names_the_layer():
    model = fn.serial(fn.learned_pool(2))
    params, state = model.init(jax.random.PRNGKey(0), (1, 4, 4, 3))
    with pytest.raises(fn.LayerError) as e:
        model.apply(params, state, jnp.zeros((1, 4, 4, 5)))
    msg = str(e.value)
    assert msg.startswith("layer 0 (learned_pool): ") and "3 channels" in msg and "(1, 4, 4, 5)" in msg


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

def pool_padding(window):
    """Paddings for a window: named, an int, or explicit pairs, each side < the window
    (a max-pool window made of padding alone would have no maximum)."""
    ph, pw = window
    return st.one_of(st.sampled_from(["VALID", "SAME"]),
                     st.integers(0, min(ph, pw) - 1),
                     st.tuples(st.tuples(st.integers(0, ph - 1), st.integers(0, ph - 1)),
                               st.tuples(st.integers(0, pw - 1), st.integers(0, pw - 1))))


@st.composite
def pool_full(draw):
    window = draw(st.sampled_from([(2, 2), (3, 3), (2, 3), (1, 2)]))
    stride = draw(st.sampled_from([None, 1, 2, (1, 2)]))  # None = the window; 1 overlaps
    return window, stride, draw(pool_padding(window)), draw(st.sampled_from([(4, 4), (5, 7)]))


# (window, stride, padding, (h, w))
POOL_CURATED = [
    ((2, 2), None, "VALID", (5, 7)),           # the notes' 2x2 pooling, ragged edge ignored
    ((3, 3), 1, "VALID", (4, 4)),              # overlapping windows
    ((2, 3), (1, 2), "SAME", (5, 7)),          # SAME keeps the ragged edge
    ((2, 2), None, 1, (4, 4)),                 # int padding
    ((3, 2), 2, ((1, 2), (0, 1)), (5, 7)),     # explicit pairs, overlapping rows
]


@pytest.mark.parametrize("name", ["max_pool", "avg_pool", "learned_pool"])
@given(case=configs(POOL_CURATED, pool_full()), seed=SEEDS)
def test_pool(name, case, seed):
    window, stride, padding, hw = case
    three_way((name, window, stride, padding), (2,) + hw + (2,), seed)


@given(case=configs([c + (s,) for c, s in zip(POOL_CURATED, [1.0, 0.5, 3.0, 1.0, 0.7])],
                    st.tuples(pool_full(), st.sampled_from([0.5, 1.0, 3.0])).map(
                        lambda t: t[0] + (t[1],))),
       seed=SEEDS)
def test_gaussian_pool(case, seed):
    window, stride, padding, hw, sigma = case
    three_way(("gaussian_pool", window, sigma, stride, padding), (2,) + hw + (2,), seed)


def first_max_routing(x, dy, window, stride):
    """Reference max-pool backward by loops: δ goes to the first maximum of each window in
    row-major order (VALID padding)."""
    n, h, w, c = x.shape
    (ph, pw), (sh, sw) = window, stride
    dx = np.zeros_like(x)
    for b in range(n):
        for i in range(dy.shape[1]):
            for j in range(dy.shape[2]):
                for ch in range(c):
                    cells = x[b, i * sh:i * sh + ph, j * sw:j * sw + pw, ch]
                    r, s = divmod(int(np.argmax(cells)), pw)  # np.argmax: first maximum
                    dx[b, i * sh + r, j * sw + s, ch] += dy[b, i, j, ch]
    return dx


@pytest.mark.parametrize("window,stride", [((2, 2), None), ((3, 3), 1), ((2, 3), (1, 2))])
def test_max_pool_ties_route_to_first_max(window, stride):
    """Equal inputs (ties everywhere, and partial ties): δ goes to the first maximal cell in
    row-major window order, the same cell jax.grad picks; overlapping windows add up."""
    layer = fn.max_pool(window, stride)
    strides = window if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(7)
        @jax.jit
        def both(x, dy):
            _, _, cache = layer.forward({}, {}, x)
            _, vjp = jax.vjp(lambda x: layer.apply({}, {}, x)[0], x)
            return layer.backward({}, cache, dy)[1], vjp(dy)[0]

        constant = jnp.ones((2, 5, 6, 2), jnp.float64)
        for x in (constant, jnp.round(fr.uniform(key, (2, 5, 6, 2), jnp.float64) * 2)):
            y = layer.apply({}, {}, x)[0]
            dy = fr.normal(jax.random.fold_in(key, 1), y.shape, jnp.float64)
            dx, auto = both(x, dy)
            expected = first_max_routing(np.asarray(x), np.asarray(dy), window, strides)
            np.testing.assert_allclose(np.asarray(dx), expected, rtol=0, atol=1e-15)
            np.testing.assert_allclose(np.asarray(auto), expected, rtol=0, atol=1e-15)
            if x is constant and stride is None:  # only each window's top-left cell
                top_left = np.zeros(x.shape)
                top_left[:, :y.shape[1] * strides[0]:strides[0], :y.shape[2] * strides[1]:strides[1]] = 1
                np.testing.assert_array_equal(np.asarray(dx) != 0, top_left != 0)


def test_max_pool_overlap_sums_into_shared_max():
    """One big value inside four overlapping 2x2 windows (stride 1) collects all four δ."""
    layer = fn.max_pool((2, 2), 1)
    with jax.enable_x64(True):
        x = jnp.zeros((1, 3, 3, 1), jnp.float64).at[0, 1, 1, 0].set(5.0)
        y, _, cache = layer.forward({}, {}, x)
        dy = jnp.arange(1.0, 5.0, dtype=jnp.float64).reshape(1, 2, 2, 1)
        _, dx = layer.backward({}, cache, dy)
    expected = np.zeros((3, 3))
    expected[1, 1] = 1 + 2 + 3 + 4
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], expected)
    np.testing.assert_array_equal(np.asarray(y)[0, :, :, 0], np.full((2, 2), 5.0))
