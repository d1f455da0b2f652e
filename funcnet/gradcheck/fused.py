"""check_gradients' default numerical side as ONE compiled program: the exact gradients
(autodiff and the model's backward), centred differences of every coordinate of the small
leaves and differences along random directions of the big ones.

Compiling dominates a check of a small model (three programs of ~1 s each on 2 CPU cores),
so everything that runs the model is traced once: each kind of perturbation is one vmapped
copy of the forward pass (the + and − steps are rows of the same batch), run in chunks by
lax.map so a chunk's perturbed copies stay within a memory budget.

The pieces: `_plan` sorts the leaves, `_vmapped_rows` and `_sequential_rows` lay out the
perturbations as arrays, `_program` is the traced function, `_unpack` turns its output
into difference triples.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import kernels

__all__ = []


class _Plan(NamedTuple):
    """Which leaves are perturbed how. `small`: coordinate by coordinate, vmapped; `seq`:
    one row at a time, first the `big` leaves (along directions), then the `alone` ones
    (coordinate by coordinate). Sizes in elements; `n_dir` counts the direction rows."""

    small: list
    big: list
    alone: list
    n_small: int
    n_big: int
    n_alone: int
    n_dir: int

    @property
    def seq(self):
        return self.big + self.alone

    @property
    def n_seq(self):
        return self.n_big + self.n_alone


def step(eps, leaves):
    """The finite-difference step the program takes: eps / 100 in float64.

    A step in one direction (or in a batch-norm scale, a bias) moves many units of the
    layers after the leaf: with eps = 1e-5 a few ReLU inputs of a big layer cross zero
    inside the step (relative errors ~1e-4 on a 28x28 resnet, too small to be seen as a
    kink); a 100 times smaller step crosses 100 times fewer, and float64 round-off over
    1e-7 (~1e-9 of the loss) stays far below the floor."""
    return eps / 100 if leaves and leaves[0].dtype == jnp.float64 else eps


def _plan(leaves, big, directions, one_by_one):
    alone = [j for j in one_by_one if j not in big]
    small = [j for j in range(len(leaves)) if j not in big and j not in alone]
    size = lambda which: sum(leaves[j].size for j in which)  # noqa: E731
    return _Plan(small, list(big), alone, size(small), size(big), size(alone),
                 sum(len(directions[j]) for j in big))


def _vmapped_rows(n_small):
    """(rows, signs), each (chunks, width): coordinate i with sign +1, then each with -1,
    padded with row 0 to whole chunks."""
    rows = np.concatenate([np.arange(n_small)] * 2)
    signs = np.repeat([1.0, -1.0], n_small)
    width = kernels.chunk_width(rows.size, n_small)
    pad = -(-rows.size // width) * width - rows.size
    return (np.pad(rows, (0, pad)).reshape(-1, width),
            np.pad(signs, (0, pad), constant_values=1.0).reshape(-1, width))


def _sequential_rows(leaves, plan, directions):
    """(table, index, sign, is_coordinate) of the one-at-a-time rows: each big leaf's
    directions (rows of `table`, vectors over all seq leaves), then each coordinate of the
    `alone` leaves (index into the seq flat), all with sign +1, then all with -1."""
    seq = plan.seq
    table = []
    for j in plan.big:
        for d in np.asarray(directions[j], np.float64):
            full = [np.zeros(leaves[i].size) for i in seq]
            full[seq.index(j)] = d.ravel()
            table.append(np.concatenate(full))
    table = np.asarray(table) if table else np.zeros((1, plan.n_seq))
    # alone coordinates start after the big leaves' elements in the seq flat
    index = np.concatenate([np.arange(plan.n_dir), np.arange(plan.n_big, plan.n_seq)] * 2)
    sign = np.repeat([1.0, -1.0], plan.n_dir + plan.n_alone)
    is_coord = np.concatenate([np.zeros(plan.n_dir, bool), np.ones(plan.n_alone, bool)] * 2)
    return table, index.astype(np.int64), sign, is_coord


def _split(flat, like):
    """flat -> arrays shaped like `like` (a list of arrays)."""
    sizes = np.cumsum([a.size for a in like])[:-1]
    return [part.reshape(a.shape) for part, a in zip(jnp.split(flat, sizes), like)]


def _program(objective, exact, treedef, plan, eps):
    """The traced program(leaves, rows, signs, table, index, sign, is_coord) -> (value,
    auto, manual, f at the vmapped rows, f at the sequential rows)."""
    def moved(leaves, which, flat):
        full = list(leaves)
        for j, part in zip(which, _split(flat, [leaves[i] for i in which])):
            full[j] = part
        return objective(jax.tree_util.tree_unflatten(treedef, full))

    def program(leaves, rows, signs, table, index, sign, is_coord):
        # value is the objective at the point (exact's forward), the differences' centre
        value, auto, manual = exact(jax.tree_util.tree_unflatten(treedef, leaves))
        dtype = leaves[0].dtype if leaves else jnp.float64
        coords, along = jnp.zeros((0, 0), dtype), jnp.zeros((0,), dtype)
        if plan.small:
            flat = jnp.concatenate([leaves[j].ravel() for j in plan.small])
            coordinate = lambda i, s: moved(leaves, plan.small, flat + kernels.coordinate_step(  # noqa: E731
                plan.n_small, i, s * eps, flat.dtype))
            coords = jax.lax.map(lambda rs: jax.vmap(coordinate)(*rs), (rows, signs))
        if plan.seq:
            q_flat = jnp.concatenate([leaves[j].ravel() for j in plan.seq])

            def one(r):
                i, s, coord = r
                hot = kernels.coordinate_step(plan.n_seq, i, 1.0, q_flat.dtype)
                d = jnp.where(coord, hot, table[jnp.where(coord, 0, i)].astype(q_flat.dtype))
                return moved(leaves, plan.seq, q_flat + s * eps * d)

            along = jax.lax.map(one, (index, sign, is_coord))
        return value, auto, manual, coords, along
    return program


def fused_check(objective, exact, point, big, directions, eps, one_by_one=()):
    """Run the one program. objective(point) -> scalar loss; exact(point) -> (value, auto,
    manual) (traced inside), value being objective(point); big: indices of the leaves
    checked along `directions` ({j: (D,) + shape unit vectors}), every other leaf is
    differenced coordinate by coordinate: vmapped, except the leaves in `one_by_one`
    (convolution kernels: a batch of rows that each carry their own kernel is a grouped
    convolution, very slow on XLA CPU), which run one row at a time like the directions.
    Returns (value, auto, manual, coords, projected): coords[j] = (centred, forward,
    backward) arrays of leaf j's shape for the small leaves, projected[j] = (centred,
    forward, backward) of shape (D,) for the big ones (float64 NumPy)."""
    leaves, treedef = jax.tree_util.tree_flatten(point)
    eps = step(eps, leaves)
    plan = _plan(leaves, big, directions, one_by_one)
    # (LLVM -O0 for this program was measured and rejected: benchmarks/RESULTS.md,
    # "Gradient checking (#12)".) NumPy arguments go in as they are: jnp.asarray would
    # compile a program for each.
    value, auto, manual, coords, along = jax.jit(_program(objective, exact, treedef, plan, eps))(
        leaves, *_vmapped_rows(plan.n_small), *_sequential_rows(leaves, plan, directions))
    out_c, out_p = _unpack(leaves, plan, directions, float(value), coords, along, eps)
    return value, auto, manual, out_c, out_p


def _unpack(leaves, plan, directions, f0, coords, along, eps):
    """({leaf: (centred, forward, backward) of its shape}, {big leaf: the same, (D,)})."""
    out_c, out_p = {}, {}
    if plan.small:
        flat = np.asarray(coords, np.float64).ravel()
        _per_leaf(out_c, plan.small, leaves, flat[:plan.n_small],
                  flat[plan.n_small:2 * plan.n_small], f0, eps)
    if plan.seq:
        flat = np.asarray(along, np.float64)
        half = plan.n_dir + plan.n_alone
        plus, minus = flat[:half], flat[half:2 * half]
        start = 0
        for j in plan.big:
            k = len(directions[j])
            out_p[j] = kernels.differences(plus[start:start + k], minus[start:start + k], f0, eps)
            start += k
        _per_leaf(out_c, plan.alone, leaves, plus[plan.n_dir:], minus[plan.n_dir:], f0, eps)
    return out_c, out_p


def _per_leaf(out, which, leaves, plus, minus, f0, eps):
    """out[j] = (centred, forward, backward) for consecutive leaves `which` of plus/minus."""
    start = 0
    for j in which:
        n, shape = leaves[j].size, leaves[j].shape
        out[j] = tuple(a.reshape(shape) for a in kernels.differences(
            plus[start:start + n], minus[start:start + n], f0, eps))
        start += n
