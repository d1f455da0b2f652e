"""check_vmap: under `jax.vmap(f, in_axes)`, the value, the VJP and the JVP equal those of f
applied to each example and stacked. Catches a wrong `jax.custom_batching.custom_vmap`
rule, a host callback declared vectorized that is not, a backward that assumes which axis
is the batch."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from ..errors import FuncnetError
from . import _precision, _probe, kernels
from .report import GradientReport, GradientRow, leaf_row

__all__ = ["check_vmap"]

TANGENTS = 4  # the stream of the tangents of the JVP leg


class _Batch(NamedTuple):
    """The arguments split for vmap: `leaves` (all, flat), their batch `axes` (int or None),
    `floats` (indices of the differentiable leaves), `size` (the batch), `rebuild(leaves)`
    -> the argument tuple, `names` of the float leaves."""

    leaves: list
    axes: list
    floats: list
    size: int
    rebuild: Callable
    names: list

    def example(self, i, leaves=None):
        """Example i of (these) leaves: each batched leaf indexed along its axis."""
        leaves = self.leaves if leaves is None else leaves
        # device arrays, as f would see them (a NumPy slice lacks .at and friends)
        return [x if ax is None else jax.device_put(np.take(np.asarray(x), i, axis=ax))
                for x, ax in zip(leaves, self.axes)]

    def with_floats(self, base, floats):
        full = list(base)
        for j, x in zip(self.floats, floats):
            full[j] = x
        return full


def check_vmap(f, *args, in_axes=0, key=None, rtol=1e-6, raise_on_failure=False) -> GradientReport:
    """Under `jax.vmap(f, in_axes)` (out_axes 0), compare with f applied to each example and
    stacked: the value, the VJP (for a random cotangent of the batched output: per example
    its slice; an unbatched argument's gradient is the sum over the examples) and the JVP
    (random tangents, an unbatched argument's shared by every example), per output or
    argument leaf, to `rtol` plus a round-off floor. Rows: "value out...", "VJP arg...",
    "JVP out...". Catches a wrong `jax.custom_batching.custom_vmap` rule, a host callback
    declared vectorized (`vmap_method=`) that is not, a backward that sums over axis 0
    taking it for the batch.

    A leg the function does not support (a custom_vjp function has no JVP; a custom_vmap one
    may have no VJP) — it fails on a single example too — is skipped and a note says so; a
    leg that works per example but fails under vmap is a failed row naming the error.
    `in_axes`: an int or None for every argument, or one per argument (an int, None, or a
    pytree of them like the argument). Float64, scoped; integer leaves are constants; random
    draws from streams of `key` (default PRNGKey(0)). Never raises on a failed check unless
    `raise_on_failure`; bad input (NaN, mismatched batch sizes) is a FuncnetError.

    Returns a GradientReport (one row per leg and leaf, the skipped legs in its notes).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        prec = _precision.working_precision()
        rtol = max(rtol, prec.min_rtol)
        args = _precision.cast(args, prec.dtype)
        _probe.split_args(args, "check_vmap")  # the input checks: float leaves, all finite
        batch = _split(args, in_axes)
        vmapped = jax.vmap(f, in_axes=tuple(in_axes) if isinstance(in_axes, list) else in_axes)
        report = GradientReport([], None, {"rtol": rtol}, columns=("vmap/per-example", "-"),
                                title="check_vmap")
        out = _value_leg(report, f, vmapped, batch, rtol, prec.widen)
        _vjp_leg(report, f, vmapped, batch, out, kernels.stream(key, kernels.COTANGENTS), rtol,
                 prec.widen)
        _jvp_leg(report, f, vmapped, batch, kernels.stream(key, TANGENTS), rtol, prec.widen)
    return report.finish(raise_on_failure)


def _split(args, in_axes) -> _Batch:
    """Every leaf of args with its batch axis (normalized), the batch size, the float leaves."""
    where = "check_vmap"
    per_arg = list(in_axes) if isinstance(in_axes, (tuple, list)) else [in_axes] * len(args)
    if len(per_arg) != len(args):
        raise FuncnetError(f"{where}: in_axes has {len(per_arg)} entries for {len(args)} arguments")
    leaves, treedef = jax.tree_util.tree_flatten(args)
    axes = []
    for a, ax in zip(args, per_arg):
        n = len(jax.tree_util.tree_leaves(a))
        spec = [ax] * n if ax is None or isinstance(ax, int) else \
            jax.tree_util.tree_leaves(ax, is_leaf=lambda v: v is None)
        if len(spec) != n:
            raise FuncnetError(f"{where}: in_axes {ax!r} does not match an argument of {n} leaves")
        axes += spec
    axes = [None if ax is None else ax % max(np.ndim(x), 1) for x, ax in zip(leaves, axes)]
    sizes = {np.shape(x)[ax] for x, ax in zip(leaves, axes) if ax is not None}
    if len(sizes) != 1:
        raise FuncnetError(f"{where}: the batched arguments must share one batch size along "
                           f"in_axes, got sizes {sorted(sizes) or 'none (nothing batched)'}")
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(args)[0]]
    floats = [j for j, x in enumerate(leaves) if np.issubdtype(np.asarray(x).dtype, np.inexact)]
    names = [_probe.arg_name(jax.tree_util.keystr(paths[j])) for j in floats]
    return _Batch(leaves, axes, floats, sizes.pop(),
                  lambda ls: jax.tree_util.tree_unflatten(treedef, ls), names)


def _attempt(thunk):
    """(value, None), or (None, 'Type: first line') when thunk raises (and its last line,
    where the first only opens a traceback: a host callback's error)."""
    try:
        return thunk(), None
    except Exception as e:  # noqa: BLE001 -- the user's code may raise anything
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [""]
        said = lines[0] if len(lines) == 1 or not lines[0].endswith(":") else \
            f"{lines[0]} ... {lines[-1]}"
        return None, f"{type(e).__name__}: {said}"


def _leg(report, leg, batched, per_example):
    """Run one leg: per_example() -> tree (the reference), batched() -> the same tree under
    vmap. Returns the pair, or None when the leg was skipped (f does not support it on one
    example) or failed under vmap (a failed row says so)."""
    want, why = _attempt(per_example)
    if why is not None:
        report.notes.append(f"{leg}: not checked, f does not support it ({why})")
        return None
    got, why = _attempt(batched)
    if why is not None:
        report.rows.append(GradientRow(f"{leg} under jax.vmap", (), np.inf, 0.0, 0.0, False,
                                       reason=f"{leg} fails under jax.vmap but not on one "
                                              f"example: {why}"))
        return None
    return got, want


def _rows(report, leg, names, got, want, rtol, widen):
    """One row per leaf: vmap vs per example, to rtol plus a round-off floor."""
    for name, g, w in zip(names, jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            report.rows.append(GradientRow(f"{leg} {name}", w.shape, np.inf, 0.0, 0.0, False,
                                           reason=f"under jax.vmap the shape is {g.shape}, "
                                                  f"stacked per example {w.shape}"))
            continue
        size = np.abs(w[np.isfinite(w)])
        floor = 1e-9 * widen * max(1.0, float(size.max(initial=0.0)))
        report.rows.append(leaf_row(f"{leg} {name}", [("vmap", g), ("per example", w)],
                                    [(0, 1, rtol, floor)]))


def _out_names(tree):
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return [("out" + p.replace("[", "/").replace("]", "").replace("'", "")) for p in paths]


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _value_leg(report, f, vmapped, batch, rtol, widen):
    """vmap(f) of the batch vs f of each example, stacked (f failing on one example is a
    FuncnetError: then nothing can be checked). Returns the stacked outputs."""
    want = _probe.guard("check_vmap", "calling f on one example", lambda: _stack(
        [f(*batch.rebuild(batch.example(i))) for i in range(batch.size)]))
    _probe.check_output(want, "check_vmap")
    pair = _leg(report, "value", lambda: vmapped(*batch.rebuild(batch.leaves)), lambda: want)
    if pair is not None:
        _rows(report, "value", _out_names(want), pair[0], want, rtol, widen)
    report.loss = float(sum(np.sum(np.asarray(y, np.float64)) for y in jax.tree_util.tree_leaves(want)))
    return want


def _vjp_leg(report, f, vmapped, batch, out, key, rtol, widen):
    """Per example i, the VJP of f for the i-th slice of a cotangent C of the batched
    output, stacked along each argument's axis (summed for an unbatched one), vs the VJP of
    vmap(f) for C."""
    base = [np.asarray(batch.leaves[j]) for j in batch.floats]
    treedef, cts = _probe.cotangents(out, key, 1)
    c = jax.tree_util.tree_unflatten(treedef, [ct[0] for ct in cts])

    def batched():
        h = lambda fl: vmapped(*batch.rebuild(batch.with_floats(batch.leaves, fl)))  # noqa: E731
        return jax.vjp(h, base)[1](c)[0]

    def per_example():
        grads = []
        for i in range(batch.size):
            example = batch.example(i)
            h = lambda fl, ex=example: f(*batch.rebuild(batch.with_floats(ex, fl)))  # noqa: E731
            ci = jax.tree_util.tree_map(lambda t, i=i: t[i], c)
            grads.append(jax.vjp(h, [example[j] for j in batch.floats])[1](ci)[0])
        return [_combine([g[k] for g in grads], batch.axes[j]) for k, j in enumerate(batch.floats)]

    pair = _leg(report, "VJP", batched, per_example)
    if pair is not None:
        _rows(report, "VJP", batch.names, pair[0], pair[1], rtol, widen)


def _combine(per, axis):
    """Per-example gradients of one argument leaf: stacked along its batch axis, or summed
    when it is not batched (every example used the same value)."""
    per = [np.asarray(p, np.float64) for p in per]
    return sum(per) if axis is None else np.stack(per, axis=axis)


def _jvp_leg(report, f, vmapped, batch, key, rtol, widen):
    """JVP of vmap(f) for random tangents T of the float leaves vs, per example, f's JVP for
    the i-th slice of T (the whole T for an unbatched leaf), stacked."""
    base = [np.asarray(batch.leaves[j]) for j in batch.floats]
    keys = jax.random.split(key, max(len(base), 1))
    ts = [np.asarray(kernels.normal(k, x.shape, x.dtype)) for k, x in zip(keys, base)]
    float_axes = [batch.axes[j] for j in batch.floats]

    def batched():
        h = lambda fl: vmapped(*batch.rebuild(batch.with_floats(batch.leaves, fl)))  # noqa: E731
        return jax.jvp(h, (base,), (ts,))[1]

    def per_example():
        outs = []
        for i in range(batch.size):
            example = batch.example(i)
            h = lambda fl, ex=example: f(*batch.rebuild(batch.with_floats(ex, fl)))  # noqa: E731
            ti = [t if ax is None else jax.device_put(np.take(t, i, axis=ax))
                  for t, ax in zip(ts, float_axes)]
            outs.append(jax.jvp(h, ([example[j] for j in batch.floats],), (ti,))[1])
        return _stack(outs)

    pair = _leg(report, "JVP", batched, per_example)
    if pair is not None:
        _rows(report, "JVP", _out_names(pair[1]), pair[0], pair[1], rtol, widen)
