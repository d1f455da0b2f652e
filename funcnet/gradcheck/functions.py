"""Checks of gradients funcnet did not write: a JAX function's VJP (typically its own
`jax.custom_vjp` rule) against finite differences and a reference; its second derivative
(check_hvp)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..errors import FuncnetError
from . import _precision, _probe, kernels
from .numerical import projected_differences
from .report import GradientReport, combined_row, leaf_row
from .settings import Settings, samples_option

__all__ = ["check_vjp", "check_hvp"]


def _guard(where, what, thunk):
    """Run thunk(); an exception from inside JAX becomes a FuncnetError saying what failed."""
    try:
        return thunk()
    except FuncnetError:
        raise
    except Exception as e:  # noqa: BLE001 -- the user's code may raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FuncnetError(f"{where}: {what} failed: {type(e).__name__}: {first}") from e


def _cotangents(out, key, k):
    """k random normal cotangents for f's output pytree, stacked on a leading axis."""
    leaves, treedef = jax.tree_util.tree_flatten(out)
    keys = jax.random.split(key, len(leaves))
    return treedef, [kernels.normal(kk, (k,) + jnp.shape(y), jnp.asarray(y).dtype)
                     for kk, y in zip(keys, leaves)]


def _project(h, cts):
    """g(leaves) -> (K,): ⟨cᵏ, h(leaves)⟩ for each stacked cotangent cᵏ."""
    def g(leaves):
        ys = jax.tree_util.tree_leaves(h(leaves))
        return sum(jnp.sum(c * jnp.asarray(y, c.dtype)[None], axis=tuple(range(1, c.ndim)))
                   for c, y in zip(cts, ys))
    return g


def check_vjp(f, *args, reference=None, key=None, eps=1e-5, rtol=1e-5, atol=None,
              cotangents=2, samples="auto", directions=4, avoid_kinks=False,
              raise_on_failure=False) -> GradientReport:
    """Check f's VJP — what `jax.vjp(f, *args)` gives, i.e. f's own `jax.custom_vjp` rule —
    for `cotangents` random cotangents c: per leaf of every floating-point argument, cᵀJ
    from the rule vs centred differences (⟨c, f(x + εeᵢ)⟩ − ⟨c, f(x − εeᵢ)⟩) / 2ε, and with
    `reference=g` (the same math without the rule) vs autodiff of g.

    Runs in float64 whatever the user's setting (restored after; where the backend has no
    float64, in float32 with a widened floor, and the report says so). f may return any pytree
    of floating arrays; integer arguments are constants. An element passes when
    |a − b| <= rtol (|a| + |b|) + atol, atol (default 1e-6 · max(1, Σ|c||f|)) being the
    differencing noise floor. Elements whose one-sided differences disagree are at a kink:
    counted, shown, excused; `avoid_kinks=True` re-draws the inputs (small noise, up to 3
    times) instead. samples="auto" differences every coordinate of leaves up to 2048
    elements and checks bigger ones along `directions` random unit directions v: ⟨rule, v⟩
    vs (⟨c, f(x + εv)⟩ − ⟨c, f(x − εv)⟩) / 2ε, the projected check of torch's fast mode
    (rows say "projected (k directions)"; rule vs reference stays element by element);
    `samples=k` differences k random coordinates of every leaf instead, None all of them.
    Every random draw (cotangents, sampled coordinates, directions, re-draws) comes from a
    stream of `key` (default PRNGKey(0)). Never raises on a failed check unless
    `raise_on_failure`; bad input (NaN, integer outputs, an impure f) is a FuncnetError.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        settings = Settings(eps, rtol, atol, samples=samples_option(samples, "check_vjp"),
                            directions=directions, cotangents=cotangents, key=key).within()
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


def _rule(h, reference, leaves, names, cts, treedef):
    """(rule, ref): per cotangent cᵏ, the VJP of h (f's rule) and of the reference (or
    None), lists over the argument leaves; a gradient of the wrong shape is an error."""
    where = "check_vjp"
    unstack = lambda i: jax.tree_util.tree_unflatten(treedef, [c[i] for c in cts])  # noqa: E731
    k = cts[0].shape[0]
    _, vjp_fn = _guard(where, "jax.vjp(f)", lambda: jax.vjp(h, leaves))
    rule = _guard(where, "f's VJP rule", lambda: [vjp_fn(unstack(i))[0] for i in range(k)])
    for r, x, name in zip(rule[0], leaves, names):
        if jnp.shape(r) != x.shape:
            raise FuncnetError(f"{where}: the VJP gave {name} a gradient of shape {jnp.shape(r)}, "
                               f"expected {x.shape}")
    if reference is None:
        return rule, None
    _, ref_fn = _guard(where, "jax.vjp(reference)", lambda: jax.vjp(reference, leaves))
    return rule, [ref_fn(unstack(i))[0] for i in range(k)]


def _vjp_report(f, reference, leaves, rebuild, names, settings):
    """One pass of check_vjp at `leaves`, its random draws from streams of settings.key."""
    where, key, k = "check_vjp", settings.key, settings.cotangents
    h = lambda ls: f(*rebuild(ls))  # noqa: E731
    out = _guard(where, "calling f", lambda: h(leaves))
    _probe.check_output(out, where, _guard(where, "calling f", lambda: h(leaves)))
    treedef, cts = _cotangents(out, kernels.stream(key, kernels.COTANGENTS), k)
    ref_h = None if reference is None else (lambda ls: reference(*rebuild(ls)))
    rule, ref = _rule(h, ref_h, leaves, names, cts, treedef)
    g = _project(h, cts)
    auto = settings.samples == "auto"
    big = [j for j, x in enumerate(leaves) if auto and x.size > settings.project_above]
    picked = kernels.sample_coordinates(leaves, None if auto else settings.samples,
                                        kernels.stream(key, kernels.COORDINATES))
    picked = [p[:0] if j in big else p for j, p in enumerate(picked)]
    diffs, mid = _guard(where, "finite differences of f",
                        lambda: _probe.differences(g, leaves, picked, settings.eps))
    projected = _guard(where, "finite differences of f along directions", lambda: _along(
        g, leaves, big, settings, kernels.stream(key, kernels.DIRECTIONS), rule, ref))
    scale = max(float(sum(np.sum(np.abs(np.asarray(c[i]) * np.asarray(y)))
                          for c, y in zip(cts, jax.tree_util.tree_leaves(out)))) for i in range(k))
    floor = settings.floor(scale)
    rows = [_projected_row(name, leaves[j].shape, projected[j], rule, ref, j, settings.rtol, floor)
            if j in projected else _coordinate_row(name, triple, rule, ref, j, settings.rtol, floor)
            for j, (name, triple) in enumerate(zip(names, diffs))]
    return GradientReport(rows, float(mid[0]), {"rtol": settings.rtol, "atol": floor,
                                                "eps": settings.eps},
                          settings.precision.note(floor, settings.eps, settings.rtol),
                          columns=("rule/numerical", "rule/reference"), title="check_vjp")


def _coordinate_row(name, triple, rule, ref, j, rtol, floor):
    """Leaf j's row, element by element: per cotangent, rule vs the differences (and vs the
    reference); elements at a kink excused; the first failing cotangent's row, else the
    first."""
    num, fw, bw = triple
    kinks = np.any(kernels.kink_mask(fw, bw, floor), axis=0)
    rows = []
    for i in range(len(rule)):
        named, comps = [("rule", rule[i][j]), ("numerical", num[i])], [(0, 1, rtol, floor)]
        if ref is not None:
            named.append(("reference", ref[i][j]))
            comps.append((0, 2, 1e-7, floor * 1e-3))
        rows.append(leaf_row(name, named, comps, kinks))
    return next((r for r in rows if not r.ok), rows[0])


def _along(g, leaves, big, settings, key, rule, ref):
    """{leaf j: (numerical (D, K), forward, backward, rule·v (D, K), reference·v or None)}
    for the big leaves: centred and one-sided differences of g along `directions` random
    unit directions, and the rule's (and reference's) cotangent gradients projected on them."""
    if not big:
        return {}
    keys = jax.random.split(key, len(leaves))
    vs = {j: kernels.random_directions(keys[j], leaves[j], settings.directions) for j in big}
    diffs = projected_differences(g, leaves, big, vs, settings.eps, compile=False)
    out = {}
    for j, (num, fw, bw) in zip(big, diffs):
        v = np.asarray(vs[j], np.float64)
        out[j] = (num, fw, bw, _dot(v, rule, j), None if ref is None else _dot(v, ref, j))
    return out


def _dot(v, grads, j):
    """(D, K): ⟨v_d, grads[k][j]⟩ for each direction d and cotangent k."""
    return np.stack([np.tensordot(v, np.asarray(g[j], np.float64), axes=v.ndim - 1)
                     for g in grads], axis=1)


def _projected_row(name, shape, parts, rule, ref, j, rtol, floor):
    """The row of a big leaf: per cotangent, ⟨rule, v⟩ vs differences along v (directions at
    a kink excused) and, with a reference, rule vs reference element by element; the first
    failing cotangent's row, else the first."""
    num, fw, bw, along, ref_along = parts
    kinks = np.any(kernels.kink_mask(fw, bw, floor), axis=1)
    label = f"{name} projected ({num.shape[0]} directions)"
    rows = []
    for i in range(len(rule)):
        proj = leaf_row(label, [("rule·v", along[:, i]), ("numerical", num[:, i])],
                        [(0, 1, rtol, floor)], kinks, where="direction")
        full = None if ref is None else leaf_row(
            label, [("rule", rule[i][j]), ("reference", ref[i][j])], [(0, 1, 1e-7, floor * 1e-3)])
        rows.append(combined_row(label, shape, proj, full))
    return next((r for r in rows if not r.ok), rows[0])


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
    """
    where = "check_hvp"
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        settings = Settings(eps, rtol, atol, directions=directions, key=key).within()
        leaves, rebuild, names = _probe.split_args(
            _precision.cast(args, settings.precision.dtype), where)
        out = _guard(where, "calling f", lambda: f(*rebuild(leaves)))
        _probe.check_output(out, where, _guard(where, "calling f", lambda: f(*rebuild(leaves))))
        _, cts = _cotangents(out, kernels.stream(key, kernels.COTANGENTS), 1)
        scalar = lambda fn: lambda ls: _project(lambda q: fn(*rebuild(q)), cts)(ls)[0]  # noqa: E731
        s, grad = scalar(f), jax.grad(scalar(f))
        g0 = _guard(where, "the gradient through f's rule", lambda: grad(leaves))
        floor = settings.floor(max(float(jnp.max(jnp.abs(g))) for g in g0))
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
    for j, name in enumerate(second.names):
        num = kernels.differences(plus[j], minus[j], second.g0[j], eps)[0]
        named, comps = [("rule", hv[j]), ("numerical", num)], [(0, 1, rtol, floor)]
        if ref is not None:
            named.append(("reference", ref[j]))
            comps.append((0, 2, 1e-7, floor * 1e-3))
        report.rows.append(leaf_row(f"{name} (H v, direction {d})", named, comps))
    if zero and not report.ok and not report.notes:
        report.notes.append("H v through f's rule is exactly zero but the gradient changes along "
                            "v: the backward treats something as constant (lax.stop_gradient?)")
    return True
