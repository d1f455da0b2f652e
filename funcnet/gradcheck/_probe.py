"""What the function checks share: splitting arguments into differentiable leaves and
constants, input checks (NaN, output dtype, purity), a guard that turns an exception in the
user's code into a FuncnetError saying what failed, random cotangents, and centred plus
one-sided differences of a vector of scalars ⟨cᵏ, f(x)⟩ along chosen coordinates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import FuncnetError
from . import kernels

__all__ = []


def split_args(args, where):
    """(float leaves, rebuild(leaves) -> args, paths): every inexact leaf of every argument
    is differentiable; integer and bool leaves are constants. NaN or inf in a float leaf is
    an error naming the argument."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    floats = [j for j, leaf in enumerate(leaves) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    if not floats:
        raise FuncnetError(f"{where}: no floating-point argument to differentiate "
                           f"(got dtypes {[str(leaf.dtype) for leaf in leaves]})")
    for j in floats:
        if not bool(jnp.all(jnp.isfinite(leaves[j]))):
            raise FuncnetError(f"{where}: argument {arg_name(paths[j])} holds NaN or inf; "
                               f"gradients can only be checked at finite inputs")

    def rebuild(float_leaves):
        full = list(leaves)
        for j, leaf in zip(floats, float_leaves):
            full[j] = leaf
        return jax.tree_util.tree_unflatten(treedef, full)

    return [leaves[j] for j in floats], rebuild, [arg_name(paths[j]) for j in floats]


def arg_name(keystr):
    """'[0]["w"]' -> 'arg0/w'."""
    parts = [p.strip("[]'\"") for p in keystr.replace("][", "]|[").split("|") if p]
    return "/".join(["arg" + parts[0]] + parts[1:]) if parts else "arg"


def check_output(out, where, second=None):
    """f's output must be floating point (a differentiable dtype), and a second call must
    give the same (f pure)."""
    for leaf in jax.tree_util.tree_leaves(out):
        if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
            raise FuncnetError(f"{where}: f returns a leaf of dtype {jnp.asarray(leaf).dtype}, "
                               f"which has no gradient; return floating-point values")
    if second is not None:
        same = jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(second) and all(
            np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
            for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(second)))
        if not same:
            raise FuncnetError(f"{where}: f is not pure: two calls with the same arguments gave "
                               f"different results (a hidden random draw or global state?); "
                               f"pass randomness in as an argument")


def differences(g, leaves, picked, eps):
    """For g(leaves) -> a vector of K scalars: per leaf, (centred, forward, backward)
    differences, each of shape (K,) + leaf.shape with NaN at unpicked coordinates.
    jax.vmap over the picked coordinates, in chunks, not jit-compiled: for the small
    inputs these checks are for, a few dispatched batched ops cost less than compiling a
    new program per call (and a user's function changes every call)."""
    flat = jnp.concatenate([leaf.ravel() for leaf in leaves])
    sizes = [leaf.size for leaf in leaves]
    splits = np.cumsum(sizes)[:-1]
    unflat = lambda v: [p.reshape(leaf.shape) for p, leaf in zip(jnp.split(v, splits), leaves)]  # noqa: E731
    offsets = np.cumsum([0] + sizes)
    idx = np.concatenate([p + o for p, o in zip(picked, offsets)])

    def one(i):
        step = kernels.coordinate_step(flat.size, i, eps, flat.dtype)
        return g(unflat(flat + step)), g(unflat(flat - step))

    width = kernels.chunk_width(max(idx.size, 1), flat.size, cap=kernels.EAGER_CHUNK,
                                budget=kernels.EAGER_COPY_BUDGET)
    parts = [jax.vmap(one)(jnp.asarray(idx[s:s + width])) for s in range(0, idx.size, width)]
    mid = g(unflat(flat))
    empty = jnp.zeros((0,) + jnp.shape(mid), mid.dtype)  # every leaf projected: none here
    plus = jnp.concatenate([p for p, _ in parts]) if parts else empty
    minus = jnp.concatenate([m for _, m in parts]) if parts else empty
    triple = kernels.differences(plus, minus, mid, eps)
    return list(zip(*[_scatter(v, idx, offsets, leaves) for v in triple])), np.asarray(mid, np.float64)


def _scatter(values, idx, offsets, leaves):
    """values (n_idx, K) at flat coordinates idx -> per leaf (K,) + shape, NaN elsewhere."""
    k = values.shape[1]
    out = []
    for j, leaf in enumerate(leaves):
        full = np.full((k, leaf.size), np.nan)
        mine = (idx >= offsets[j]) & (idx < offsets[j + 1])
        full[:, idx[mine] - offsets[j]] = values[mine].T
        out.append(full.reshape((k,) + tuple(leaf.shape)))
    return out


def guard(where, what, thunk):
    """Run thunk(); an exception from inside JAX becomes a FuncnetError saying what failed."""
    try:
        return thunk()
    except FuncnetError:
        raise
    except Exception as e:  # noqa: BLE001 -- the user's code may raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FuncnetError(f"{where}: {what} failed: {type(e).__name__}: {first}") from e


def cotangents(out, key, k):
    """k random normal cotangents for f's output pytree, stacked on a leading axis."""
    leaves, treedef = jax.tree_util.tree_flatten(out)
    keys = jax.random.split(key, len(leaves))
    return treedef, [kernels.normal(kk, (k,) + jnp.shape(y), jnp.asarray(y).dtype)
                     for kk, y in zip(keys, leaves)]


def project(h, cts):
    """g(leaves) -> (K,): ⟨cᵏ, h(leaves)⟩ for each stacked cotangent cᵏ."""
    def g(leaves):
        ys = jax.tree_util.tree_leaves(h(leaves))
        return sum(jnp.sum(c * jnp.asarray(y, c.dtype)[None], axis=tuple(range(1, c.ndim)))
                   for c, y in zip(cts, ys))
    return g


def scale(cts, out) -> float:
    """max over cotangents cᵏ of Σ |cᵏ ⊙ f(x)| over the finite elements: the size of the
    scalars the checks difference (a NaN or infinity in f's output is its own failure)."""
    ys = [np.asarray(y, np.float64) for y in jax.tree_util.tree_leaves(out)]
    per = [sum(float(np.sum(np.abs(np.asarray(c[i], np.float64) * y)[np.isfinite(y)]))
               for c, y in zip(cts, ys)) for i in range(cts[0].shape[0])] if cts else [0.0]
    return max(per)
