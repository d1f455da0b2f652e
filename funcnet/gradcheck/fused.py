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

_COPY_BUDGET = 1 << 18  # elements of perturbed copies per vmapped chunk
# LLVM's optimization level 0 for the CPU backend when the program does little work
# (LeNet on digits: compile + run 1.9 s -> 1.2 s on 2 cores): the check runs once, so there
# compile time is what counts. Not for big ones: float64 convolutions are not Eigen calls
# on XLA CPU but emitted loops, which -O0 leaves ~10x slower (a 28x28 resnet: minutes).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
QUICK_FLOPS = 2e9  # at most this many estimated flops: compile at -O0


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


def fused_check(objective, exact, point, big, directions, eps):
    """Run the one program. objective(point) -> scalar loss; exact(point) -> (value, auto,
    manual) (traced inside); big: indices of the leaves checked along `directions`
    ({j: (D,) + shape unit vectors}), every other leaf is differenced coordinate by
    coordinate. Returns (value, auto, manual, coords, projected): coords[j] = (centred,
    forward, backward) arrays of leaf j's shape for the small leaves, projected[j] =
    (centred, forward, backward) of shape (D,) for the big ones (float64 NumPy)."""
    leaves, treedef = jax.tree_util.tree_flatten(point)
    small = [j for j in range(len(leaves)) if j not in big]
    # A step in one direction (or in a batch-norm scale, a bias) moves many units of the
    # layers after the leaf: with eps = 1e-5 a few ReLU inputs of a big layer cross zero
    # inside the step (relative errors ~1e-4 on a 28x28 resnet, too small to be seen as a
    # kink); a 100 times smaller step crosses 100 times fewer, and float64 round-off over
    # 1e-7 (~1e-9 of the loss) stays far below the floor.
    eps = d_eps = step(eps, leaves)
    n_small = sum(leaves[j].size for j in small)
    n_big = sum(leaves[j].size for j in big)
    # Coordinate rows: coordinate i with sign +1 then -1 (padded with copies of row 0).
    rows = np.concatenate([np.arange(n_small)] * 2)
    signs = np.repeat([1.0, -1.0], n_small)
    c_chunks, c_width = _chunked(rows.size, n_small)
    pad = c_chunks * c_width - rows.size
    rows = np.pad(rows, (0, pad)).reshape(c_chunks, c_width)
    signs = np.pad(signs, (0, pad), constant_values=1.0).reshape(c_chunks, c_width)
    # Direction rows: every big leaf's directions, + then −, as vectors over all big leaves.
    dtype = leaves[0].dtype if leaves else jnp.float64
    block = []
    for j in big:
        for d in np.asarray(directions[j], np.float64):
            full = [np.zeros(leaves[i].size) for i in big]
            full[big.index(j)] = d.ravel()
            block.append(np.concatenate(full))
    dirs = np.concatenate([np.asarray(block), -np.asarray(block)]) if block else np.zeros((0, n_big))
    # One direction at a time: batching rows that each carry their own weights turns every
    # convolution into a grouped one (slow on CPU); a row is one plain forward pass.
    p_chunks, p_width = len(dirs), 1
    dirs = np.pad(dirs, ((0, p_chunks * p_width - len(dirs)), (0, 0)))
    dirs = dirs.reshape(p_chunks, p_width, n_big)

    def rebuild(base, idx, parts):
        full = list(base)
        for j, part in zip(idx, parts):
            full[j] = part
        return jax.tree_util.tree_unflatten(treedef, full)

    def program(leaves, rows, signs, dirs):
        value, auto, manual = exact(jax.tree_util.tree_unflatten(treedef, leaves))
        f0 = objective(jax.tree_util.tree_unflatten(treedef, leaves))
        s_leaves = [leaves[j] for j in small]
        b_leaves = [leaves[j] for j in big]
        coords = jnp.zeros((0, 0), dtype)
        if small:
            s_flat = jnp.concatenate([a.ravel() for a in s_leaves])

            def coordinate(i, sign):
                # ±ε·eᵢ as a masked vector: XLA fuses it into its consumer (no scatter).
                delta = jnp.where(jnp.arange(n_small) == i, sign * eps, 0).astype(s_flat.dtype)
                return objective(rebuild(leaves, small, _split(s_flat + delta, s_leaves)))

            coords = jax.lax.map(lambda rs: jax.vmap(coordinate)(*rs), (rows, signs))
        along = jnp.zeros((0, 0), dtype)
        if big:
            b_flat = jnp.concatenate([a.ravel() for a in b_leaves])

            def direction(d):
                moved = b_flat + d_eps * d.astype(b_flat.dtype)
                return objective(rebuild(leaves, big, _split(moved, b_leaves)))

            along = jax.lax.map(jax.vmap(direction), dirs)
        return value, auto, manual, f0, coords, along

    options = None
    if jax.default_backend() == "cpu":
        cost = jax.jit(objective).lower(jax.tree_util.tree_unflatten(treedef, leaves)).cost_analysis()
        flops = (cost or {}).get("flops", np.inf) if isinstance(cost, dict) else np.inf
        if flops * (rows.size + len(dirs) + 4) <= QUICK_FLOPS:
            options = COMPILER_OPTIONS
    value, auto, manual, f0, coords, along = jax.jit(program, compiler_options=options)(
        leaves, jnp.asarray(rows), jnp.asarray(signs), jnp.asarray(dirs))
    f0 = float(f0)
    out_c = {}
    if small:
        flat = np.asarray(coords, np.float64).ravel()
        plus, minus = flat[:n_small], flat[n_small:2 * n_small]
        start = 0
        for j in small:
            n = leaves[j].size
            p, m = plus[start:start + n], minus[start:start + n]
            shape = leaves[j].shape
            out_c[j] = tuple(a.reshape(shape) for a in ((p - m) / (2 * eps), (p - f0) / eps,
                                                         (f0 - m) / eps))
            start += n
    out_p = {}
    if big:
        flat = np.asarray(along, np.float64).ravel()
        half = len(block)
        plus, minus = flat[:half], flat[half:2 * half]
        for b, j in enumerate(big):
            k = len(directions[j])
            p, m = plus[b * k:(b + 1) * k], minus[b * k:(b + 1) * k]
            out_p[j] = ((p - m) / (2 * d_eps), (p - f0) / d_eps, (f0 - m) / d_eps)
    return value, auto, manual, out_c, out_p
