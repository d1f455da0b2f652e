"""check_hvp: a function's second derivative through its own VJP rule, Hessian-vector
products against centred differences of the gradient (and a reference's exact H v)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from . import _precision, _probe, kernels, recheck
from .report import Comparison, GradientReport, leaf_row
from .settings import Settings

__all__ = ["check_hvp"]


class _Second(NamedTuple):
    """What check_hvp compares along each direction: grad = ∇s through f's rule, ref_grad
    = ∇ of the reference's s (or None), at `leaves` where grad gives g0."""

    grad: object
    ref_grad: object
    leaves: list
    names: list
    g0: list
    settings: Settings
    floor: float


def check_hvp(f, *args, reference=None, key=None, eps=1e-5, rtol=1e-5, atol=None,
              directions=2, raise_on_failure=False) -> GradientReport:
    """Second order: Hessian-vector products H v of s(x) = ⟨c, f(x)⟩ (s = f when f is
    scalar; c a random cotangent otherwise) by forward-over-reverse — jax.jvp of jax.grad,
    so through f's own VJP rule — vs centred differences of that gradient along v,
    (∇s(x + εv) − ∇s(x − εv)) / 2ε, for `directions` random directions v; with
    `reference=g` also vs g's exact H v. Catches a rule whose first derivative is right
    and whose own derivative is not: a backward built from `lax.stop_gradient` (its H v is
    zero) or from a NumPy callback (it cannot be differentiated) is reported as such, as a
    failed property, not a traceback. Float64, scoped; integer arguments are constants.
    The cotangent and the directions come from streams of `key` (default PRNGKey(0)).

    Returns a GradientReport (one row per argument leaf and direction). Never raises on a
    failed check unless `raise_on_failure=True` (GradientCheckError); bad input (NaN, an
    integer output) is a FuncnetError.
    """
    where = "check_hvp"
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        settings = Settings(eps, rtol, atol, directions=directions, key=key).within()
        leaves, rebuild, names = _probe.split_args(
            _precision.cast(args, settings.precision.dtype), where)
        out = _probe.guard(where, "calling f", lambda: f(*rebuild(leaves)))
        _probe.check_output(out, where, _probe.guard(where, "calling f", lambda: f(*rebuild(leaves))))
        _, cts = _probe.cotangents(out, kernels.stream(key, kernels.COTANGENTS), 1)
        scalar = lambda fn: lambda ls: _probe.project(lambda q: fn(*rebuild(q)), cts)(ls)[0]  # noqa: E731
        s, grad = scalar(f), jax.grad(scalar(f))
        g0 = _probe.guard(where, "the gradient through f's rule", lambda: grad(leaves))
        floor = settings.floor(max(_finite_max(g) for g in g0))
        second = _Second(grad, None if reference is None else jax.grad(scalar(reference)),
                         leaves, names, g0, settings, floor)
        report = GradientReport([], float(s(leaves)), {"rtol": settings.rtol, "atol": floor,
                                                       "eps": settings.eps},
                                settings.precision.note(floor, settings.eps, settings.rtol),
                                columns=("rule/numerical", "rule/reference"), title="check_hvp")
        for d in range(directions):
            vkeys = jax.random.split(kernels.stream(key, kernels.HVP_DIRECTIONS + d), len(leaves))
            v = [_random.normal(k, x.shape, x.dtype) for k, x in zip(vkeys, leaves)]
            if not _hvp_rows(report, second, v, d):
                break
    return report.finish(raise_on_failure)


def _hessian_vector(grad, leaves, v):
    """H v forward-over-reverse (jax.jvp of jax.grad); JAX cannot run forward mode through
    a custom_vjp, so for those reverse-over-reverse, ∇⟨∇s(x), v⟩, which differentiates the
    rule's backward just the same."""
    try:
        return jax.jvp(grad, (leaves,), (v,))[1]
    except TypeError as e:
        if "custom_vjp" not in str(e):
            raise
    dot = lambda ls: sum(jnp.vdot(g, t) for g, t in zip(grad(ls), v))  # noqa: E731
    return jax.grad(dot)(leaves)


def _hvp_rows(report, second, v, d):
    """Append direction d's rows (or the failed property) to report; False to stop."""
    try:
        hv = _hessian_vector(second.grad, second.leaves, v)
    except Exception as e:  # noqa: BLE001 -- the rule's backward may not be differentiable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        report.properties["rule differentiable"] = False
        report.notes.append(f"H v cannot be computed through f's VJP rule ({type(e).__name__}: "
                            f"{first}): its backward is built from non-differentiable pieces "
                            f"(a NumPy / pure_callback computation?), so its second derivative "
                            f"is unavailable")
        return False
    eps, rtol, floor = second.settings.eps, second.settings.rtol, second.floor
    plus = second.grad([x + eps * t for x, t in zip(second.leaves, v)])
    minus = second.grad([x - eps * t for x, t in zip(second.leaves, v)])
    ref = (None if second.ref_grad is None
           else jax.jvp(second.ref_grad, (second.leaves,), (v,))[1])
    zero = all(not bool(jnp.any(h != 0)) for h in hv)
    nums = [kernels.differences(p, m, g, eps)[0] for p, m, g in zip(plus, minus, second.g0)]
    nums, unsure = _refine(second, v, hv, nums)
    for j, name in enumerate(second.names):
        named = [("rule", hv[j]), ("numerical", nums[j])]
        comps = [Comparison(0, 1, rtol, floor, unreliable=unsure[j])]
        if ref is not None:
            named.append(("reference", ref[j]))
            comps.append(Comparison(0, 2, 1e-7, floor * 1e-3))
        report.rows.append(leaf_row(f"{name} (H v, direction {d})", named, comps))
    if zero and not report.ok and not report.notes:
        report.notes.append("H v through f's rule is exactly zero but the gradient changes along "
                            "v: the backward treats something as constant (lax.stop_gradient?)")
    return True


def _refine(second, v, hv, nums):
    """(nums, unreliable) per leaf: when a few elements fail, the gradient differenced again
    along v at ε/2 gives each an error bar (recheck.judge; no one-sided differences here,
    so no kinks)."""
    eps, rtol, floor = second.settings.eps, second.settings.rtol, second.floor
    fine = []  # the gradient at x ± (ε/2) v, computed on first need

    def at_half(j, mask):
        if not fine:
            fine.extend(second.grad([x + s * eps / 2 * t for x, t in zip(second.leaves, v)])
                        for s in (1.0, -1.0))
        return np.where(mask, kernels.differences(fine[0][j], fine[1][j], second.g0[j], eps / 2)[0],
                        np.nan)

    out = [recheck.judge(h, n, n, n, rtol, floor, eps, lambda mask, j=j: at_half(j, mask),
                         scale=_finite_max(g))
           for j, (h, n, g) in enumerate(zip(hv, nums, second.g0))]
    return [o.num for o in out], [o.unreliable for o in out]


def _finite_max(a) -> float:
    """max |a| over the finite elements (0 when there are none)."""
    a = np.abs(np.asarray(a, np.float64))
    return float(np.max(a[np.isfinite(a)], initial=0.0))
