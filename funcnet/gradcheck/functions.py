"""check_vjp: a JAX function's VJP (typically its own `jax.custom_vjp` rule) against finite
differences and a reference, eager and under jax.jit, evaluated twice. (check_hvp, its
second derivative, is in hvp.py; check_jvp and check_vmap in jvp.py and vmap.py.)"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..errors import FuncnetError
from . import _precision, _probe, kernels, recheck
from .hvp import check_hvp  # noqa: F401 -- importable from here, as before
from .numerical import projected_differences
from .report import Comparison, GradientReport, GradientRow, combined_row, leaf_row
from .settings import Settings, jit_option, samples_option

__all__ = ["check_vjp", "check_hvp"]

# The rule against the reference, and under jax.jit against eager: the same math both
# ways, so only round-off separates them.
REFERENCE_RTOL = 1e-7
JIT_RTOL = 1e-9


def check_vjp(f, *args, reference=None, key=None, eps=1e-5, rtol=1e-5, atol=None,
              cotangents=2, samples="auto", directions=4, avoid_kinks=False, jit="both",
              nondet_tol=0.0, raise_on_failure=False) -> GradientReport:
    """Check f's VJP — what `jax.vjp(f, *args)` gives, i.e. f's own `jax.custom_vjp` rule —
    for `cotangents` random cotangents c: per leaf of every floating-point argument, cᵀJ
    from the rule vs centred differences (⟨c, f(x + εeᵢ)⟩ − ⟨c, f(x − εeᵢ)⟩) / 2ε, and with
    `reference=g` (the same math without the rule) vs autodiff of g.

    Runs in float64 whatever the user's setting (restored after; where the backend has no
    float64, in float32 with a widened floor, and the report says so). f may return any pytree
    of floating arrays; integer arguments are constants. An element passes when
    |a − b| <= rtol (|a| + |b|) + atol, atol (default 1e-6 · max(1, Σ|c||f|)) being the
    differencing noise floor. A NaN or infinity in any leg (rule, reference, differences)
    fails its row, naming the element and the leg. Elements whose one-sided differences
    disagree are at a kink: counted, shown, excused; `avoid_kinks=True` re-draws the inputs
    (small noise, up to 3 times) instead. A failing element is differenced again at ε/2:
    with that error bar it passes (Richardson's estimate agrees), fails, or is "numerically
    unreliable" (the error bar exceeds the tolerance: no verdict).

    samples="auto" differences every coordinate of leaves up to 2048 elements and checks
    bigger ones along `directions` random unit directions v: ⟨rule, v⟩ vs
    (⟨c, f(x + εv)⟩ − ⟨c, f(x − εv)⟩) / 2ε, the projected check of torch's fast mode (rows
    say "projected (k directions)"; rule vs reference stays element by element); a failing
    direction is bisected down to the element behind it, which the row names. `samples=k`
    differences k random coordinates of every leaf instead, None all of them.

    jit="both" also compares the rule under jax.jit with the eager one (to round-off), and
    every evaluation of the rule with a second one (bitwise; `nondet_tol` relaxes it to
    |a − b| <= nondet_tol): a rule that draws randomness or reads global state fails the row
    "rule evaluated twice" or "rule under jax.jit" (rows shown only when they fail; a rule
    that fails under jit where f runs fails there too). jit="eager" (or False) skips the jit
    comparison; jit="jit" checks the jitted rule against the differences instead.

    Every random draw (cotangents, sampled coordinates, directions, re-draws) comes from a
    stream of `key` (default PRNGKey(0)). Never raises on a failed check unless
    `raise_on_failure`; bad input (NaN, integer outputs, an impure f) is a FuncnetError.

    Returns a GradientReport (one row per argument leaf; `print` it for the table).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        settings = Settings(eps, rtol, atol, samples=samples_option(samples, "check_vjp"),
                            directions=directions, cotangents=cotangents, key=key,
                            jit=jit_option(jit, "check_vjp"), nondet_tol=float(nondet_tol)).within()
        leaves, rebuild, names = _probe.split_args(
            _precision.cast(args, settings.precision.dtype), "check_vjp")
        for attempt in range(4 if avoid_kinks else 1):
            report = _vjp_report(f, reference, leaves, rebuild, names,
                                 settings._replace(key=jax.random.fold_in(key, attempt)))
            if not report.kinks:
                break
            noise = jax.random.split(kernels.stream(key, kernels.REDRAW + attempt), len(leaves))
            leaves = [x + _random.normal(k, x.shape, x.dtype, 1e-3) for k, x in zip(noise, leaves)]
    return report.finish(raise_on_failure)


class _Vjp(NamedTuple):
    """f's VJP at one point: h(leaves) -> f's output `out`; the stacked cotangents `cts`
    and unstack(i) -> the i-th as a tree like `out`; vjp_fn; `rule` (per cotangent, a list
    over the leaves) and `ref`, the reference's (or None)."""

    h: Callable
    out: object
    cts: list
    unstack: Callable
    vjp_fn: Callable
    rule: list
    ref: object


def _linearize(f, reference, leaves, rebuild, names, settings) -> _Vjp:
    """f's output, random cotangents, and the rule's (and reference's) VJP of each; a
    gradient of the wrong shape is an error."""
    where = "check_vjp"
    h = lambda ls: f(*rebuild(ls))  # noqa: E731
    out = _probe.guard(where, "calling f", lambda: h(leaves))
    _probe.check_output(out, where, _probe.guard(where, "calling f", lambda: h(leaves)))
    treedef, cts = _probe.cotangents(out, kernels.stream(settings.key, kernels.COTANGENTS),
                                     settings.cotangents)
    unstack = lambda i: jax.tree_util.tree_unflatten(treedef, [c[i] for c in cts])  # noqa: E731
    k = settings.cotangents
    _, vjp_fn = _probe.guard(where, "jax.vjp(f)", lambda: jax.vjp(h, leaves))
    if settings.jit == "jit":
        vjp_fn = _jitted_vjp(h, leaves)
    rule = _probe.guard(where, "f's VJP rule", lambda: [vjp_fn(unstack(i))[0] for i in range(k)])
    for r, x, name in zip(rule[0], leaves, names):
        if jnp.shape(r) != x.shape:
            raise FuncnetError(f"{where}: the VJP gave {name} a gradient of shape {jnp.shape(r)}, "
                               f"expected {x.shape}")
    ref = None
    if reference is not None:
        _, ref_fn = _probe.guard(where, "jax.vjp(reference)", lambda: jax.vjp(
            lambda ls: reference(*rebuild(ls)), leaves))
        ref = [ref_fn(unstack(i))[0] for i in range(k)]
    return _Vjp(h, out, cts, unstack, vjp_fn, rule, ref)


def _jitted_vjp(h, leaves):
    """ct -> (the rule's cotangents for the leaves,), computed by one jit-compiled program."""
    compiled = jax.jit(lambda ls, ct: jax.vjp(h, ls)[1](ct)[0])
    return lambda ct: (compiled(leaves, ct),)


def _vjp_report(f, reference, leaves, rebuild, names, settings):
    """One pass of check_vjp at `leaves`, its random draws from streams of settings.key."""
    where, key = "check_vjp", settings.key
    v = _linearize(f, reference, leaves, rebuild, names, settings)
    g = _probe.project(v.h, v.cts)
    auto = settings.samples == "auto"
    big = [j for j, x in enumerate(leaves) if auto and x.size > settings.project_above]
    picked = kernels.sample_coordinates(leaves, None if auto else settings.samples,
                                        kernels.stream(key, kernels.COORDINATES))
    picked = [p[:0] if j in big else p for j, p in enumerate(picked)]
    diffs, mid = _probe.guard(where, "finite differences of f",
                              lambda: _probe.differences(g, leaves, picked, settings.eps))
    projected = _probe.guard(where, "finite differences of f along directions", lambda: _along(
        g, leaves, big, settings, kernels.stream(key, kernels.DIRECTIONS), v.rule, v.ref))
    scale = _probe.scale(v.cts, v.out)
    floor = settings.floor(scale)
    rows = []
    for j, (name, triple) in enumerate(zip(names, diffs)):
        if j in projected:
            rows.append(_projected_row(name, leaves, j, projected[j], v, g, settings, floor, scale))
            continue
        computed = np.zeros(leaves[j].size, bool)
        computed[picked[j]] = True
        judged = _judged(g, leaves, j, triple, v.rule, settings, floor, scale)
        rows.append(_coordinate_row(name, judged, ~computed.reshape(leaves[j].shape), v, j,
                                    settings.rtol, floor))
    extra, notes = _consistency(v, leaves, names, settings, floor)
    return GradientReport(rows + extra, float(mid[0]), {"rtol": settings.rtol, "atol": floor,
                                                        "eps": settings.eps},
                          settings.precision.note(floor, settings.eps, settings.rtol) + notes,
                          columns=("rule/numerical", "rule/reference"), title="check_vjp")


def _judged(g, leaves, j, triple, rule, settings, floor, scale) -> recheck.Verdicts:
    """Leaf j's elements judged (recheck.judge), all cotangents at once ((K,) + shape):
    the few failing ones differenced again at ε/2, kinks and unreliable ones marked."""
    num, fw, bw = triple
    exact = np.stack([np.asarray(r[j], np.float64) for r in rule])

    def fine(mask):
        coords = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=0))
        picked = [coords if i == j else np.zeros(0, int) for i in range(len(leaves))]
        return _probe.differences(g, leaves, picked, settings.eps / 2)[0][j][0]

    return recheck.judge(exact, num, fw, bw, settings.rtol, floor, settings.eps, fine,
                         scale=scale)


def _coordinate_row(name, judged, unsampled, v, j, rtol, floor):
    """Leaf j's row, element by element: per cotangent, rule vs the differences (and vs the
    reference); elements at a kink (for any cotangent) excused; the first failing
    cotangent's row, else the first with unreliable elements, else the first."""
    kinks = np.any(judged.kinks, axis=0)
    rows = []
    for i in range(len(v.rule)):
        named = [("rule", v.rule[i][j]), ("numerical", judged.num[i])]
        comps = [Comparison(0, 1, rtol, floor, skip=unsampled, unreliable=judged.unreliable[i])]
        if v.ref is not None:
            named.append(("reference", v.ref[i][j]))
            comps.append(Comparison(0, 2, REFERENCE_RTOL, floor * 1e-3))
        rows.append(leaf_row(name, named, comps, kinks))
    return next((r for r in rows if not r.ok), next((r for r in rows if r.unreliable), rows[0]))


def _along(g, leaves, big, settings, key, rule, ref):
    """{leaf j: (numerical (D, K), forward, backward, rule·v (D, K), reference·v or None,
    the directions v)} for the big leaves: centred and one-sided differences of g along
    `directions` random unit directions, and the rule's (and reference's) cotangent
    gradients projected on them."""
    if not big:
        return {}
    keys = jax.random.split(key, len(leaves))
    vs = {j: kernels.random_directions(keys[j], leaves[j], settings.directions) for j in big}
    diffs = projected_differences(g, leaves, big, vs, settings.eps, compile=False)
    out = {}
    for j, (num, fw, bw) in zip(big, diffs):
        v = np.asarray(vs[j], np.float64)
        out[j] = (num, fw, bw, _dot(v, rule, j), None if ref is None else _dot(v, ref, j), v)
    return out


def _dot(v, grads, j):
    """(D, K): ⟨v_d, grads[k][j]⟩ for each direction d and cotangent k."""
    return np.stack([np.tensordot(v, np.asarray(g[j], np.float64), axes=v.ndim - 1)
                     for g in grads], axis=1)


def _directional(g, leaves, j, i):
    """(u, step) -> the centred difference of ⟨cᵢ, f⟩ along u in leaf j (eager)."""
    def along(u, step):
        moved = [list(leaves), list(leaves)]
        for side, sign in zip(moved, (1.0, -1.0)):
            side[j] = leaves[j] + sign * step * jnp.asarray(u, leaves[j].dtype)
        return float(np.asarray(g(moved[0]) - g(moved[1]), np.float64)[i]) / (2 * step)
    return along


def _projected_row(name, leaves, j, parts, v, g, settings, floor, scale):
    """The row of a big leaf: per cotangent, ⟨rule, v⟩ vs differences along v (directions
    at a kink excused, a failing one looked at again: error bar, then bisection to its
    element) and, with a reference, rule vs reference element by element; the first
    failing cotangent's row, else the first."""
    num, fw, bw, along, _, vs = parts
    shape = leaves[j].shape
    kinks = np.any(kernels.kink_mask(fw, bw, floor), axis=1)
    label = f"{name} projected ({num.shape[0]} directions)"
    rows = []
    for i in range(len(v.rule)):
        probe = recheck.Probe(_directional(g, leaves, j, i), np.asarray(v.rule[i][j]), "rule")
        proj = recheck.projected_row(label, shape, along[:, i], num[:, i], kinks, vs, probe,
                                     settings.rtol, floor, settings.eps, scale)
        full = None if v.ref is None else leaf_row(
            label, [("rule", v.rule[i][j]), ("reference", v.ref[i][j])],
            [(0, 1, REFERENCE_RTOL, floor * 1e-3)])
        rows.append(combined_row(label, shape, proj, full))
    return next((r for r in rows if not r.ok), rows[0])


def _consistency(v, leaves, names, settings, floor):
    """(rows, notes): the rule evaluated again (bitwise, or within nondet_tol) and, with
    jit="both", under jax.jit (to round-off). A rule that draws randomness or reads global
    state fails here, in a row that says so; rows that pass are not shown (the table keeps
    one row per argument leaf)."""
    again = [v.vjp_fn(v.unstack(i))[0] for i in range(len(v.rule))]
    rows = [_agreement("rule evaluated twice", names, again, v.rule, ("second", "first"),
                       0.0, settings.nondet_tol, "two evaluations of the rule differ (does it "
                       "draw randomness or read global state?)")]
    notes = []
    if settings.jit == "both":
        vjp_fn = _jitted_vjp(v.h, leaves)
        try:
            jitted = [vjp_fn(v.unstack(i))[0] for i in range(len(v.rule))]
        except Exception as e:  # noqa: BLE001 -- the user's code may raise anything
            row, note = _unjittable(v.h, leaves, e)
            rows.append(row)
            notes.append(note)
        else:
            rows.append(_agreement("rule under jax.jit", names, jitted, v.rule, ("jit", "eager"),
                                   JIT_RTOL, floor * 1e-3, "the rule under jax.jit differs from "
                                   "the eager rule (does it read global state or draw "
                                   "randomness, fixed when traced?)"))
    return [r for r in rows if r is not None and not r.ok], [n for n in notes if n]


def _unjittable(h, leaves, error):
    """(row, note) of a rule that fails under jax.jit: a failed row, unless f itself cannot
    be traced (then nothing is compared, and a note says so)."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    try:
        jax.jit(h)(leaves)
    except Exception:  # noqa: BLE001 -- f itself is not traceable: not the rule's fault
        return None, f"rule under jax.jit: not checked, f cannot be traced ({first})"
    return GradientRow("rule under jax.jit", (), np.inf, 0.0, 0.0, False,
                       reason=f"the rule fails under jax.jit where f runs: "
                              f"{type(error).__name__}: {first}"), None


def _agreement(label, names, got, want, legs, rtol, atol, why):
    """One row: `got` vs `want` (per cotangent, per leaf) element by element, NaN equal to
    NaN; the first failing leaf names itself and `why`, else the row of the largest gap."""
    rows = []
    for g_i, w_i in zip(got, want):
        for name, a, b in zip(names, g_i, w_i):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            a, b = np.where(same, 0.0, a), np.where(same, 0.0, b)
            row = leaf_row(label, [(legs[0], a), (legs[1], b)], [(0, 1, rtol, atol)])
            if not row.ok:
                return dataclasses.replace(row, reason=f"{why}: {name} {row.describe()}")
            rows.append(row)
    return max(rows, key=lambda r: r.max_abs_diff)
