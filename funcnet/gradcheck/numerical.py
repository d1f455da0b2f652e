"""Numerical gradients: centred differences (vectorized, chunked, jit-compiled), rel_error,
and one-direction checks.

Finite differences are vectorized: the ± perturbations of many coordinates are evaluated
at once, `jax.vmap`-ed in fixed-size chunks and jit-compiled, a whole block of leaves per
device call.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _random
from ..errors import FuncnetError
from . import kernels
from .kernels import key_rng, random_directions  # noqa: F401 -- their old home's names
from .settings import samples_option

__all__ = ["numerical_grad", "rel_error", "directional_check", "projected_differences",
           "random_directions"]


def rel_error(a, b) -> float:
    """max over elements of |a − b| / max(1e-8, |a| + |b|)  (cs231n's relative error).
    Works on arrays or pytrees of arrays; NaN entries (unsampled) are ignored.

    Returns a Python float. Raises a FuncnetError when the two sides differ in size.
    """
    a, b = (np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(t)]
                           or [np.zeros(0)]) for t in (a, b))
    if a.shape != b.shape:
        raise FuncnetError(f"rel_error: the two sides have {a.size} and {b.size} elements")
    keep = ~(np.isnan(a) | np.isnan(b))
    if not keep.any():
        return 0.0
    a, b = a[keep], b[keep]
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def _blocks(leaves, chunk):
    """Group leaf indices: consecutive small leaves of one dtype share a block (one
    compilation); a leaf of more than `chunk` coordinates gets a block of its own, so
    that whatever does not depend on it (a network's earlier layers) is not batched
    by vmap and is computed once per chunk, not once per perturbation."""
    blocks, current, size = [], [], 0
    for j, leaf in enumerate(leaves):
        if leaf.size == 0:
            continue
        fits = current and size + leaf.size <= chunk and leaves[current[0]].dtype == leaf.dtype
        if current and not fits:
            blocks.append(current)
            current, size = [], 0
        current.append(j)
        size += leaf.size
    return blocks + ([current] if current else [])


@functools.lru_cache(maxsize=64)
def _block_values(f, treedef, shapes, block, eps):
    """A jit-compiled g(leaves, flat, idx, args) -> (f(x + εeᵢ), f(x − εeᵢ)) for the
    coordinates idx (n_chunks, chunk) of the block's leaves raveled into `flat`, and f(x):
    lax.map over chunks, jax.vmap within one, so the whole block runs in one device call.
    Cached per function, so calling numerical_grad again with the same f (and new `args`)
    does not recompile."""
    block_shapes = [shapes[j] for j in block]
    splits = np.cumsum([math.prod(shape) for shape in block_shapes])[:-1]

    def evaluate(all_leaves, flat, args):
        tree = list(all_leaves)
        for j, part, shape in zip(block, jnp.split(flat, splits), block_shapes):
            tree[j] = part.reshape(shape)
        return f(jax.tree_util.tree_unflatten(treedef, tree), *args)

    def one(all_leaves, flat, i, args):
        step = kernels.coordinate_step(flat.size, i, eps, flat.dtype)
        return evaluate(all_leaves, flat + step, args), evaluate(all_leaves, flat - step, args)

    def run(all_leaves, flat, idx, args):
        in_chunk = jax.vmap(one, in_axes=(None, None, 0, None))
        pairs = jax.lax.map(lambda part: in_chunk(all_leaves, flat, part, args), idx)
        return pairs, evaluate(all_leaves, flat, args)

    return jax.jit(run)


def _check_leaves(f, leaves, treedef, args):
    """numerical_grad's input checks: floating leaves, a scalar f."""
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise FuncnetError(f"numerical_grad: every leaf of x must be floating point, got a "
                               f"leaf of dtype {leaf.dtype} and shape {tuple(leaf.shape)}")
    value = jax.eval_shape(f, jax.tree_util.tree_unflatten(treedef, leaves), *args)
    if getattr(value, "shape", None) != ():
        raise FuncnetError(f"numerical_grad: f must return a scalar, got "
                           f"{getattr(value, 'shape', value)}")


def coordinate_differences(f, leaves, treedef, picked, eps, *, args=(), chunk=256):
    """Per leaf, the (centred, forward, backward) differences of the scalar f(tree, *args)
    at the flat coordinates `picked[j]` of leaf j, float64 NumPy arrays of the leaf's shape
    with NaN at the coordinates not picked (numerical_grad's kernel; check_gradients uses
    the one-sided parts to tell a kink from a wrong formula)."""
    out = [[np.full(leaf.size, np.nan) for _ in range(3)] for leaf in leaves]
    shapes = tuple(tuple(leaf.shape) for leaf in leaves)
    for block in _blocks(leaves, chunk):
        offsets = np.cumsum([0] + [leaves[j].size for j in block])
        idx = np.concatenate([picked[j] + o for j, o in zip(block, offsets)])
        if idx.size == 0:
            continue
        flat = jnp.concatenate([leaves[j].ravel() for j in block])
        # vmap materializes one perturbed copy of the block per coordinate in a chunk; for a
        # big leaf that memory traffic costs more than the batching saves (a 400x120 dense
        # weight: 4 s at 1 per chunk, 10 s at 256), so chunks shrink as blocks grow.
        width = kernels.chunk_width(idx.size, flat.size, cap=chunk)
        n_chunks = -(-idx.size // width)
        padded = np.pad(idx, (0, n_chunks * width - idx.size), mode="edge")  # one shape
        (plus, minus), mid = _block_values(f, treedef, shapes, tuple(block), float(eps))(
            leaves, flat, jnp.asarray(padded.reshape(n_chunks, width)), tuple(args))
        triple = [d.ravel() for d in kernels.differences(plus, minus, mid, eps)]
        start = 0
        for j in block:
            for full, d in zip(out[j], triple):
                full[picked[j]] = d[start:start + picked[j].size]
            start += picked[j].size
    return [tuple(d.reshape(leaf.shape) for d in triple) for triple, leaf in zip(out, leaves)]


def numerical_grad(f, x, eps=1e-5, *, args=(), samples: Optional[int] = None, key=None,
                   chunk: int = 256):
    """Centred differences (f(x + ε eᵢ) − f(x − ε eᵢ)) / 2ε of a scalar function of a pytree,
    ∂f(x, *args)/∂x (like jax.grad(f)(x, *args): `args` are held fixed).

    Vectorized: the 2·n perturbed evaluations run `jax.vmap`-ed in chunks of `chunk`
    coordinates, all chunks of a leaf in one jit-compiled call (`lax.map`). Small leaves are
    perturbed together (one compilation); each big leaf on its own, so vmap batches only
    what depends on it: for a network, the layers before a perturbed weight are evaluated
    once per chunk, not once per coordinate.

    `samples=k` (any integer type) differentiates only k random coordinates per leaf (drawn
    from `key`, as cs231n's sparse check) and returns NaN elsewhere; None does every
    coordinate. The result has the structure, shapes and dtypes of x. The compiled
    differences are cached per `f`: passing data through `args` to one function object
    (rather than a new closure per call) compiles once per shape.

    Returns the gradient pytree. Raises a FuncnetError when a leaf of x is not floating point
    or f does not return a scalar.
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    _check_leaves(f, leaves, treedef, tuple(args))
    samples = samples_option(samples, "numerical_grad", auto=False)
    picked = kernels.sample_coordinates(leaves, samples,
                                        jax.random.PRNGKey(0) if key is None else key,
                                        jax_choice=True)
    diffs = coordinate_differences(f, leaves, treedef, picked, eps, args=args, chunk=chunk)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(c, leaf.dtype) for (c, _, _), leaf in zip(diffs, leaves)])


def directional_check(f, x, *, key, eps=1e-5, args=()):
    """One random unit direction v: returns (finite difference (f(x+εv) − f(x−εv)) / 2ε,
    jax.jvp's exact directional derivative ⟨∇f, v⟩). Cheap for models of any size."""
    flat, unravel = ravel_pytree(x)
    v = _random.normal(key, flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)
    fd = (f(unravel(flat + eps * v), *args) - f(unravel(flat - eps * v), *args)) / (2 * eps)
    _, exact = jax.jvp(lambda t: f(unravel(t), *args), (flat,), (v,))
    return float(fd), float(exact)


def projected_differences(f, leaves, which, directions, eps, *, args=(), compile=True):
    """The projected check's numerical side (torch gradcheck's fast mode): for f(leaves,
    *args) -> an array (a scalar, or a vector of scalars ⟨cᵏ, ·⟩), per leaf j in `which`
    and each of its unit directions v (directions[j]: (D,) + shape), the centred difference
    (f(x + εv) − f(x − εv)) / 2ε and the one-sided ones (f(x ± εv) − f(x)) / ±ε, as float64
    NumPy arrays (D,) + f's shape: [(centred, forward, backward)] in `which`'s order.
    Every leaf's directions run vmapped, all in one program (`compile=True`) or dispatched
    op by op (a user's function that changes every call: compiling would cost more)."""
    leaves = list(leaves)
    which = list(which)

    def run(leaves, vs, args):
        out = []
        for j, v in zip(which, vs):
            def at(step, j=j):
                moved = list(leaves)
                moved[j] = leaves[j] + step
                return f(moved, *args)
            out.append((jax.vmap(lambda t: at(eps * t))(v), jax.vmap(lambda t: at(-eps * t))(v)))
        return out, f(leaves, *args)

    vs = [directions[j] for j in which]
    pairs, mid = (jax.jit(run) if compile else run)(leaves, vs, tuple(args))
    return [kernels.differences(plus, minus, mid, eps) for plus, minus in pairs]
