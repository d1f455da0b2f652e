"""check_gradients' default numerical side as ONE compiled program: the exact gradients
(autodiff and the model's backward), centred differences of every coordinate of the small
leaves and differences along random directions of the big ones.

Compiling dominates a check of a small model (three programs of ~1 s each on 2 CPU cores),
so everything that runs the model is traced once: each kind of perturbation is one vmapped
copy of the forward pass (the + and − steps are rows of the same batch), run in chunks by
lax.map so a chunk's perturbed copies stay within a memory budget.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = []

_COPY_BUDGET = 1 << 16  # elements of perturbed copies per vmapped chunk


def _chunked(n_rows, size):
    """(number of chunks, width) for n_rows perturbations of `size` elements each."""
    width = max(1, min(n_rows, _COPY_BUDGET // max(size, 1)))
    return -(-n_rows // width), width


def _split(flat, like):
    """flat -> arrays shaped like `like` (a list of arrays)."""
    sizes = np.cumsum([a.size for a in like])[:-1]
    return [part.reshape(a.shape) for part, a in zip(jnp.split(flat, sizes), like)]


def step(eps, leaves):
    """The finite-difference step the program takes: eps / 100 in float64."""
    return eps / 100 if leaves and leaves[0].dtype == jnp.float64 else eps


def fused_check(objective, exact, point, big, directions, eps, one_by_one=()):
    """Run the one program. objective(point) -> scalar loss; exact(point) -> (value, auto,
    manual) (traced inside); big: indices of the leaves checked along `directions`
    ({j: (D,) + shape unit vectors}), every other leaf is differenced coordinate by
    coordinate: vmapped, except the leaves in `one_by_one` (convolution kernels: a batch
    of rows that each carry their own kernel is a grouped convolution, very slow on XLA
    CPU), which run one row at a time like the directions. Returns (value, auto, manual,
    coords, projected): coords[j] = (centred, forward, backward) arrays of leaf j's shape
    for the small leaves, projected[j] = (centred, forward, backward) of shape (D,) for the
    big ones (float64 NumPy)."""
    leaves, treedef = jax.tree_util.tree_flatten(point)
    alone = [j for j in one_by_one if j not in big]
    small = [j for j in range(len(leaves)) if j not in big and j not in alone]
    seq = list(big) + alone  # leaves moved by the one-row-at-a-time rows
    # A step in one direction (or in a batch-norm scale, a bias) moves many units of the
    # layers after the leaf: with eps = 1e-5 a few ReLU inputs of a big layer cross zero
    # inside the step (relative errors ~1e-4 on a 28x28 resnet, too small to be seen as a
    # kink); a 100 times smaller step crosses 100 times fewer, and float64 round-off over
    # 1e-7 (~1e-9 of the loss) stays far below the floor.
    eps = step(eps, leaves)
    n_small = sum(leaves[j].size for j in small)
    n_seq = sum(leaves[j].size for j in seq)
    # Vmapped coordinate rows: coordinate i with sign +1 then -1 (padded with row 0).
    rows = np.concatenate([np.arange(n_small)] * 2)
    signs = np.repeat([1.0, -1.0], n_small)
    c_chunks, c_width = _chunked(rows.size, n_small)
    pad = c_chunks * c_width - rows.size
    rows = np.pad(rows, (0, pad)).reshape(c_chunks, c_width)
    signs = np.pad(signs, (0, pad), constant_values=1.0).reshape(c_chunks, c_width)
    # One-at-a-time rows (index, sign, is_coordinate): each big leaf's directions (rows of
    # `table`, vectors over all seq leaves), then each coordinate of the `alone` leaves.
    table = []
    for j in big:
        for d in np.asarray(directions[j], np.float64):
            full = [np.zeros(leaves[i].size) for i in seq]
            full[seq.index(j)] = d.ravel()
            table.append(np.concatenate(full))
    n_dir = len(table)
    table = np.asarray(table) if table else np.zeros((1, n_seq))
    first = sum(leaves[j].size for j in big)  # alone coordinates start here in the seq flat
    n_alone = n_seq - first
    s_idx = np.concatenate([np.arange(n_dir), np.arange(first, n_seq)] * 2).astype(np.int64)
    s_sign = np.repeat([1.0, -1.0], n_dir + n_alone)
    s_coord = np.concatenate([np.zeros(n_dir, bool), np.ones(n_alone, bool)] * 2)

    dtype = leaves[0].dtype if leaves else jnp.float64

    def rebuild(base, idx, parts):
        full = list(base)
        for j, part in zip(idx, parts):
            full[j] = part
        return jax.tree_util.tree_unflatten(treedef, full)

    def program(leaves, rows, signs, table, s_idx, s_sign, s_coord):
        value, auto, manual = exact(jax.tree_util.tree_unflatten(treedef, leaves))
        f0 = objective(jax.tree_util.tree_unflatten(treedef, leaves))
        s_leaves = [leaves[j] for j in small]
        q_leaves = [leaves[j] for j in seq]
        coords = jnp.zeros((0, 0), dtype)
        if small:
            s_flat = jnp.concatenate([a.ravel() for a in s_leaves])

            def coordinate(i, sign):
                # ±ε·eᵢ as a masked vector: XLA fuses it into its consumer (no scatter).
                delta = jnp.where(jnp.arange(n_small) == i, sign * eps, 0).astype(s_flat.dtype)
                return objective(rebuild(leaves, small, _split(s_flat + delta, s_leaves)))

            coords = jax.lax.map(lambda rs: jax.vmap(coordinate)(*rs), (rows, signs))
        along = jnp.zeros((0,), dtype)
        if seq:
            q_flat = jnp.concatenate([a.ravel() for a in q_leaves])

            def one(r):
                i, sign, is_coord = r
                hot = (jnp.arange(n_seq) == i).astype(q_flat.dtype)
                d = jnp.where(is_coord, hot, table[jnp.where(is_coord, 0, i)].astype(q_flat.dtype))
                return objective(rebuild(leaves, seq, _split(q_flat + sign * eps * d, q_leaves)))

            along = jax.lax.map(one, (s_idx, s_sign, s_coord))
        return value, auto, manual, f0, coords, along

    # (LLVM -O0 for this program was measured and rejected: benchmarks/RESULTS.md,
    # "Gradient checking (#12)".)
    # NumPy arguments go in as they are: jnp.asarray would compile a program for each
    value, auto, manual, f0, coords, along = jax.jit(program)(
        leaves, rows, signs, table, s_idx, s_sign, s_coord)
    f0 = float(f0)
    out_c, out_p = {}, {}
    if small:
        flat = np.asarray(coords, np.float64).ravel()
        _unpack(out_c, small, leaves, flat[:n_small], flat[n_small:2 * n_small], f0, eps)
    if seq:
        flat = np.asarray(along, np.float64)
        half = n_dir + n_alone
        plus, minus = flat[:half], flat[half:2 * half]
        for b, j in enumerate(big):
            k = len(directions[j])
            p, m = plus[b * k:(b + 1) * k], minus[b * k:(b + 1) * k]
            out_p[j] = _differences(p, m, f0, eps)
        _unpack(out_c, alone, leaves, plus[n_dir:], minus[n_dir:], f0, eps)
    return value, auto, manual, out_c, out_p


def _differences(plus, minus, f0, eps):
    """(centred, forward, backward) differences from f(x ± εd) and f(x)."""
    return (plus - minus) / (2 * eps), (plus - f0) / eps, (f0 - minus) / eps


def _unpack(out, which, leaves, plus, minus, f0, eps):
    """out[j] = (centred, forward, backward) for consecutive leaves `which` of plus/minus."""
    start = 0
    for j in which:
        n, shape = leaves[j].size, leaves[j].shape
        out[j] = tuple(a.reshape(shape) for a in _differences(plus[start:start + n],
                                                               minus[start:start + n], f0, eps))
        start += n
