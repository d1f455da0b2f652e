"""check_jvp: a JAX function's forward-mode rule (what `jax.jvp` gives, i.e. its own
`jax.custom_jvp` rule) against centred differences along random tangents, and the
transpose identity ⟨c, J t⟩ = ⟨Jᵀc, t⟩ between its JVP and its VJP."""
from __future__ import annotations

import jax
import numpy as np

from . import _precision, _probe, kernels, recheck
from .report import Comparison, GradientReport, GradientRow, leaf_row
from .settings import Settings

__all__ = ["check_jvp"]

TANGENTS = 4  # the stream of the tangents (after kernels' COTANGENTS .. DIRECTIONS)
TRANSPOSE_RTOL = 1e-9  # ⟨c, J t⟩ two ways: the same linear map, round-off apart


def check_jvp(f, *args, key=None, eps=1e-5, rtol=1e-5, atol=None, tangents=2,
              raise_on_failure=False) -> GradientReport:
    """Check f's JVP — `jax.jvp(f, args, ts)`, i.e. f's own `jax.custom_jvp` rule — per leaf
    x_j of every floating-point argument, for `tangents` random unit tangents t: J t from
    the rule vs centred differences (f(x + εt) − f(x − εt)) / 2ε, output element by output
    element; and the transpose identity ⟨c, J t⟩ (from jax.jvp) = ⟨Jᵀc, t⟩ (from jax.vjp,
    which transposes the rule) to round-off, for a random cotangent c and tangents in every
    leaf at once (row "transpose"): a rule that is not linear in its tangent fails there.

    Same report, float64 scoping and kink handling as check_vjp: an element passes when
    |a − b| <= rtol (|a| + |b|) + atol, atol (default 1e-6 · max(1, max |f(x)|)) the
    differencing floor; output elements whose one-sided differences disagree are at a kink
    (counted, excused); a failing element is differenced again at ε/2 (error bar: passes,
    fails, or numerically unreliable); a NaN or infinity in any leg fails its row, naming
    the element. A function without forward mode (a custom_vjp) is a FuncnetError saying
    so, as is bad input. Random draws come from streams of `key` (default PRNGKey(0)).

    Returns a GradientReport. Raises GradientCheckError on a failed check only with
    `raise_on_failure=True`.
    """
    where = "check_jvp"
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        settings = Settings(eps, rtol, atol, key=key).within()
        leaves, rebuild, names = _probe.split_args(
            _precision.cast(args, settings.precision.dtype), where)
        h = lambda ls: f(*rebuild(ls))  # noqa: E731
        out = _probe.guard(where, "calling f", lambda: h(leaves))
        _probe.check_output(out, where, _probe.guard(where, "calling f", lambda: h(leaves)))
        ys = _flat(out)
        scale = float(np.max(np.abs(ys[np.isfinite(ys)]), initial=0.0))
        floor = settings.floor(scale)
        keys = jax.random.split(kernels.stream(key, TANGENTS), len(leaves))
        rows = [_leaf_row(h, leaves, j, names[j], kernels.random_directions(keys[j], leaves[j],
                                                                            tangents),
                          np.shape(jax.tree_util.tree_leaves(out)[0]) if _single(out) else ys.shape,
                          settings, floor, scale)
                for j in range(len(leaves))]
        rows.append(_transpose_row(h, leaves, out, kernels.stream(key, kernels.COTANGENTS),
                                   tangents))
        report = GradientReport(rows, float(np.sum(ys)), {"rtol": settings.rtol, "atol": floor,
                                                          "eps": settings.eps},
                                settings.precision.note(floor, settings.eps, settings.rtol),
                                columns=("rule/numerical", "transpose"), title="check_jvp")
    return report.finish(raise_on_failure)


def _single(out) -> bool:
    return len(jax.tree_util.tree_leaves(out)) == 1


def _flat(tree) -> np.ndarray:
    """Every leaf of an output (or output tangent) raveled into one float64 vector."""
    parts = [np.ravel(np.asarray(y, np.float64)) for y in jax.tree_util.tree_leaves(tree)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _moved(leaves, j, t, size):
    """The leaves with leaf j moved by size · t."""
    moved = list(leaves)
    moved[j] = leaves[j] + size * t
    return moved


def _leaf_row(h, leaves, j, name, ts, shape, settings, floor, scale) -> GradientRow:
    """Leaf j's row: per tangent t, J t from the rule vs the centred differences along t,
    output element by output element; the first failing tangent's row, else the first
    with unreliable elements, else the first."""
    mid = _flat(h(leaves))
    rows = [_tangent_row(h, leaves, j, name, t, mid, shape, settings, floor, scale) for t in ts]
    return next((r for r in rows if not r.ok), next((r for r in rows if r.unreliable), rows[0]))


def _tangent_row(h, leaves, j, name, t, mid, shape, settings, floor, scale) -> GradientRow:
    """J t (the rule) vs (f(x + εt) − f(x − εt)) / 2ε for tangent t in leaf j; outputs at a
    kink excused, a few failing ones differenced again at ε/2 (error bars)."""
    where, eps, rtol = "check_jvp", settings.eps, settings.rtol
    tangent = [np.zeros(x.shape, x.dtype) if i != j else t for i, x in enumerate(leaves)]
    rule = _flat(_probe.guard(where, "jax.jvp(f)", lambda: jax.jvp(h, (leaves,), (tangent,))[1]))
    at = lambda size: _flat(_probe.guard(  # noqa: E731
        where, "finite differences of f", lambda: h(_moved(leaves, j, t, size))))
    num, fw, bw = kernels.differences(at(eps), at(-eps), mid, eps)
    fine = lambda mask: np.where(mask, kernels.differences(  # noqa: E731
        at(eps / 2), at(-eps / 2), mid, eps / 2)[0], np.nan)
    num, kinks, unsure = recheck.judge(rule, num, fw, bw, rtol, floor, eps, fine, scale=scale)
    return leaf_row(name, [("rule", rule.reshape(shape)), ("numerical", num.reshape(shape))],
                    [Comparison(0, 1, rtol, floor, unreliable=unsure.reshape(shape))],
                    kinks.reshape(shape), where="output element")


def _transpose_row(h, leaves, out, key, k) -> GradientRow:
    """⟨c, J t⟩ from the JVP vs ⟨Jᵀc, t⟩ from the VJP for k random (c, t) pairs, to
    round-off; a VJP that cannot be formed (a rule not linear in its tangent cannot be
    transposed) fails the row, saying why."""
    label = "transpose ⟨c, J t⟩ = ⟨Jᵀc, t⟩"
    ckey, tkey = jax.random.split(key)
    treedef, cts = _probe.cotangents(out, ckey, k)
    tkeys = jax.random.split(tkey, len(leaves))
    ts = [kernels.normal(kk, (k,) + x.shape, x.dtype) for kk, x in zip(tkeys, leaves)]
    try:
        _, vjp_fn = jax.vjp(h, leaves)
        jvp_side, vjp_side, size = np.zeros(k), np.zeros(k), 1.0
        for i in range(k):
            c = jax.tree_util.tree_unflatten(treedef, [ct[i] for ct in cts])
            terms = _flat(c) * _flat(jax.jvp(h, (leaves,), ([t[i] for t in ts],))[1])
            jvp_side[i] = float(np.sum(terms))
            size = max(size, float(np.sum(np.abs(terms[np.isfinite(terms)]))))
            vjp_side[i] = sum(float(np.sum(np.asarray(g, np.float64) * np.asarray(t[i], np.float64)))
                              for g, t in zip(vjp_fn(c)[0], ts))
    except Exception as e:  # noqa: BLE001 -- the user's rule may raise anything
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return GradientRow(label, (k,), 0.0, np.inf, 0.0, False,
                           reason=f"the VJP (the transposed JVP rule) cannot be formed: "
                                  f"{type(e).__name__}: {first} (is the rule linear in its "
                                  f"tangent?)")
    # round-off of a dot product: a few ulps of Σ |cₑ (J t)ₑ|, far below this floor
    row = leaf_row(label, [("⟨c, J t⟩", jvp_side), ("⟨Jᵀc, t⟩", vjp_side)],
                   [(0, 1, TRANSPOSE_RTOL, 1e-9 * size)], where="tangent")
    row.autodiff_vs_numerical, row.manual_vs_autodiff = row.manual_vs_autodiff, 0.0
    return row
