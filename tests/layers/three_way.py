"""The three-way check of a layer's hand-derived backward, in float64, shared by the
gradient tests in tests/layers/test_<family>.py.

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
from hypothesis import settings, strategies as st

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile

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
        treedef, [p + scale * fr.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


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
        x = fr.normal(k_x, input_shape, jnp.float64)
        y, _ = layer.apply(params, state, x, train=train, key=k_drop)
        assert y.dtype == jnp.float64
        g = fr.normal(k_g, y.shape, jnp.float64)
        px = (params, x)
        m, a = manual_and_autodiff(px, state, g, k_drop)
        n = fn.numerical_grad(objective, px, args=(state, g, k_drop))
        assert_close(m, a, 1e-8, f"{spec} manual vs autodiff")
        assert_close(a, n, 1e-6, f"{spec} autodiff vs numerical")
        return m, a
