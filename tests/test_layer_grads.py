"""Every layer's hand-derived backward, checked three ways in float64.

For each layer family, across hypothesis-drawn hyperparameters (strides, every padding
mode, windows, rates, train/eval) and random data:
    manual (layer.backward) == autodiff (jax.vjp)      to 1e-8 relative
    autodiff                == finite differences       to 1e-6 relative
The objective is Σ y ⊙ g for a random upstream gradient g (the vjp with g).

Layers are built from hashable specs and their jitted functions are cached per spec and
shape, so a config drawn twice compiles once. In the default profile the hyperparameters
are drawn from curated lists that cover every case (each padding mode, strides with a
ragged edge, overlapping windows, train and eval) and the data from random seeds; under
--slow (500 examples) they are drawn from the full strategies, at the cost of one
compilation per new config.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn

SLOW = settings().max_examples >= 500
SEEDS = st.integers(0, 2 ** 31 - 1)


def configs(curated, full):
    """The curated list in the default profile; the full strategy under --slow."""
    return full if SLOW else st.sampled_from(curated)


def build(spec):
    """A layer from a hashable spec: (name, *args)."""
    name, *args = spec
    return getattr(fn, name)(*args) if args else getattr(fn, name)


@functools.cache
def compiled(spec, train):
    """(objective, manual_and_autodiff) for a layer spec, jitted once per spec and shape."""
    layer = build(spec)

    def objective(px, state, g, key):
        params, x = px
        return jnp.sum(layer.apply(params, state, x, train=train, key=key)[0] * g)

    @jax.jit
    def manual_and_autodiff(px, state, g, key):
        params, x = px
        _, _, cache = layer.forward(params, state, x, train=train, key=key)
        manual = layer.backward(params, cache, g)
        _, vjp = jax.vjp(lambda p, x: layer.apply(p, state, x, train=train, key=key)[0], *px)
        return manual, vjp(g)

    return objective, manual_and_autodiff


def assert_close(a, b, rtol, what):
    """Element-wise |a − b| <= rtol (|a| + |b|) + floor, leaf by leaf. The floor,
    rtol · 1e-3 · (largest gradient entry), lets entries that are zero in truth pass,
    where round-off (manual) or finite-difference noise (numerical) leaves a residue."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), what
    scale = max([float(np.max(np.abs(np.asarray(v)))) for v in la + lb if np.size(v)] + [1.0])
    for i, (u, v) in enumerate(zip(la, lb)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        assert u.shape == v.shape, f"{what}, leaf {i}: shapes {u.shape} vs {v.shape}"
        bound = rtol * (np.abs(u) + np.abs(v)) + rtol * 1e-3 * scale
        bad = np.abs(u - v) > bound
        assert not bad.any(), (f"{what}, leaf {i}: {bad.sum()} of {u.size} entries differ, worst "
                               f"|diff| {np.abs(u - v).max():.2e}\n{u}\n{v}")


def randomize(tree, key, scale=0.5):
    """Move every parameter away from its init (γ = 1, β = 0, b = 0 are special points)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def three_way(spec, input_shape, seed, *, train=False, state_fn=None):
    """Check one layer at one input shape, returning (manual, autodiff) for further checks."""
    layer = build(spec)
    objective, manual_and_autodiff = compiled(spec, train)
    with jax.enable_x64(True):
        k_init, k_p, k_x, k_g, k_drop, k_s = jax.random.split(jax.random.PRNGKey(seed), 6)
        params, state = layer.init(k_init, input_shape, jnp.float64)
        params = randomize(params, k_p)
        if state_fn is not None:
            state = state_fn(state, k_s)
        x = jax.random.normal(k_x, input_shape, jnp.float64)
        y, _ = layer.apply(params, state, x, train=train, key=k_drop)
        assert y.dtype == jnp.float64
        g = jax.random.normal(k_g, y.shape, jnp.float64)
        px = (params, x)
        m, a = manual_and_autodiff(px, state, g, k_drop)
        n = fn.numerical_grad(objective, px, args=(state, g, k_drop))
        assert_close(m, a, 1e-8, f"{spec} manual vs autodiff")
        assert_close(a, n, 1e-6, f"{spec} autodiff vs numerical")
        return m, a


@given(case=configs([(1, (1, 1)), (3, (4, 5)), (2, (3, 2))],
                    st.tuples(st.integers(1, 4), st.sampled_from([(1, 1), (3, 2), (4, 5)]))),
       seed=SEEDS)
def test_dense(case, seed):
    out, shape = case
    three_way(("dense", out), shape, seed)


ACTIVATIONS = ["relu", "sigmoid", "tanh", "sign", "softmax", "log_softmax", "identity"]


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(shape=configs([(3, 4), (2, 2, 3, 2)], st.sampled_from([(2, 3), (1, 5), (2, 2, 3, 2)])),
       seed=SEEDS)
def test_activation(name, shape, seed):
    m, _ = three_way((name,), shape, seed)
    if name == "sign":  # zero almost everywhere: nothing trains through a sign layer
        assert not np.any(np.asarray(m[1]))


@given(shape=configs([(2, 3, 4), (1, 2, 3, 2)], st.sampled_from([(2, 3), (2, 3, 4), (1, 2, 3, 2)])),
       seed=SEEDS)
def test_flatten(shape, seed):
    m, _ = three_way(("flatten",), shape, seed)
    assert m[1].shape == shape


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


def running_stats(state, key):
    k1, k2 = jax.random.split(key)
    return {"mean": jax.random.normal(k1, state["mean"].shape, state["mean"].dtype),
            "var": 0.5 + jax.random.uniform(k2, state["var"].shape, state["var"].dtype)}


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


# (rate, train, shape)
DROPOUT_CURATED = [(0.5, True, (3, 4)), (0.1, True, (2, 3, 3, 2)), (0.9, True, (3, 4)),
                   (0.0, True, (3, 4)), (0.5, False, (2, 3, 3, 2))]
DROPOUT_FULL = st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.9]), st.booleans(),
                         st.sampled_from([(3, 4), (2, 3, 3, 2)]))


@given(case=configs(DROPOUT_CURATED, DROPOUT_FULL), seed=SEEDS)
def test_dropout(case, seed):
    """The backward uses the forward's mask: the same key gives the same mask."""
    rate, train, shape = case
    m, _ = three_way(("dropout", rate), shape, seed, train=train)
    dx = np.asarray(m[1])
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(seed), 6)  # as three_way splits them
        x = jax.random.normal(k[2], shape, jnp.float64)
        y, _ = fn.dropout(rate).apply({}, {}, x, train=train, key=k[4])
        g = np.asarray(jax.random.normal(k[3], shape, jnp.float64))
    if not train or rate == 0:
        np.testing.assert_array_equal(dx, g)
        return
    # Kept units pass δ / (1 − rate), dropped ones 0.
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(dx[kept] * (1 - rate), g[kept], rtol=1e-12)
    assert not np.any(dx[~kept])


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
        for x in (constant, jnp.round(jax.random.uniform(key, (2, 5, 6, 2), jnp.float64) * 2)):
            y = layer.apply({}, {}, x)[0]
            dy = jax.random.normal(jax.random.fold_in(key, 1), y.shape, jnp.float64)
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
