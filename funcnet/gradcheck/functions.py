"""Checks of gradients funcnet did not write: a JAX function's VJP (typically its own
`jax.custom_vjp` rule) against finite differences and a reference; its second derivative
(check_hvp)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..errors import FuncnetError
from . import _precision, _probe
from .numerical import key_rng, projected_differences, random_directions
from .report import GradientReport, combined_row, leaf_row

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
    return treedef, [jnp.asarray(key_rng(kk).standard_normal((k,) + jnp.shape(y)), jnp.asarray(y).dtype)
                     for kk, y in zip(keys, leaves)]


def _project(h, cts):
    """g(leaves) -> (K,): ⟨cᵏ, h(leaves)⟩ for each stacked cotangent cᵏ."""
    def g(leaves):
        ys = jax.tree_util.tree_leaves(h(leaves))
        return sum(jnp.sum(c * jnp.asarray(y, c.dtype)[None], axis=tuple(range(1, c.ndim)))
                   for c, y in zip(cts, ys))
    return g


# Leaves above this many elements are checked along random directions when samples="auto".
PROJECT_ABOVE = 2048


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
    Never raises on a failed check unless
    `raise_on_failure`; bad input (NaN, integer outputs, an impure f) is a FuncnetError.
    """
    where = "check_vjp"
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        prec = _precision.working_precision()
        eps, rtol = max(eps, prec.min_eps), max(rtol, prec.min_rtol)
        leaves, rebuild, names = _probe.split_args(_precision.cast(args, prec.dtype), where)
        for attempt in range(4 if avoid_kinks else 1):
            report = _vjp_report(f, reference, leaves, rebuild, names, jax.random.fold_in(key, attempt),
                                 eps, rtol, atol, cotangents, samples, directions, prec)
            if not report.kinks:
                break
            noise = jax.random.split(jax.random.fold_in(key, 1000 + attempt), len(leaves))
            leaves = [x + _random.normal(k, x.shape, x.dtype, 1e-3) for k, x in zip(noise, leaves)]
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _vjp_report(f, reference, leaves, rebuild, names, key, eps, rtol, atol, k, samples,
                directions, prec):
    where = "check_vjp"
    h = lambda ls: f(*rebuild(ls))  # noqa: E731
    out = _guard(where, "calling f", lambda: h(leaves))
    _probe.check_output(out, where, _guard(where, "calling f", lambda: h(leaves)))
    treedef, cts = _cotangents(out, jax.random.fold_in(key, 1), k)
    unstack = lambda i: jax.tree_util.tree_unflatten(treedef, [c[i] for c in cts])  # noqa: E731
    _, vjp_fn = _guard(where, "jax.vjp(f)", lambda: jax.vjp(h, leaves))
    rule = _guard(where, "f's VJP rule", lambda: [vjp_fn(unstack(i))[0] for i in range(k)])
    for r, x, name in zip(rule[0], leaves, names):
        if jnp.shape(r) != x.shape:
            raise FuncnetError(f"{where}: the VJP gave {name} a gradient of shape {jnp.shape(r)}, "
                               f"expected {x.shape}")
    ref = None
    if reference is not None:
        _, ref_fn = _guard(where, "jax.vjp(reference)", lambda: jax.vjp(
            lambda ls: reference(*rebuild(ls)), leaves))
        ref = [ref_fn(unstack(i))[0] for i in range(k)]
    g = _project(h, cts)
    big = [j for j, x in enumerate(leaves) if samples == "auto" and x.size > PROJECT_ABOVE]
    picked = _probe.coordinates(leaves, None if samples == "auto" else samples,
                                jax.random.fold_in(key, 2))
    picked = [p[:0] if j in big else p for j, p in enumerate(picked)]
    diffs, mid = _guard(where, "finite differences of f",
                        lambda: _probe.differences(g, leaves, picked, eps))
    projected = _guard(where, "finite differences of f along directions", lambda: _along(
        g, leaves, big, directions, eps, jax.random.fold_in(key, 3), rule, ref))
    scale = max(float(sum(np.sum(np.abs(np.asarray(c[i]) * np.asarray(y)))
                          for c, y in zip(cts, jax.tree_util.tree_leaves(out)))) for i in range(k))
    floor = 1e-6 * prec.widen * max(1.0, scale) if atol is None else atol
    rows = []
    for j, (name, (num, fw, bw)) in enumerate(zip(names, diffs)):
        if j in projected:
            rows.append(_projected_row(name, leaves[j].shape, projected[j], rule, ref, j, k,
                                       rtol, floor))
            continue
        kinks = np.any(_probe.kink_mask(fw, bw, floor), axis=0)
        per_k = []
        for i in range(k):
            named = [("rule", rule[i][j]), ("numerical", num[i])]
            comps = [(0, 1, rtol, floor)]
            if ref is not None:
                named.append(("reference", ref[i][j]))
                comps.append((0, 2, 1e-7, floor * 1e-3))
            per_k.append(leaf_row(name, named, comps, kinks))
        rows.append(next((r for r in per_k if not r.ok), per_k[0]))
    return GradientReport(rows, float(mid[0]), {"rtol": rtol, "atol": floor, "eps": eps},
                          prec.note(floor, eps, rtol), columns=("rule/numerical", "rule/reference"),
                          title="check_vjp")


def _along(g, leaves, big, directions, eps, key, rule, ref):
    """{leaf j: (vs, numerical (D, K), forward, backward, rule·v (D, K), reference·v or None)}
    for the big leaves: centred and one-sided differences of g along `directions` random
    unit directions, and the rule's (and reference's) cotangent gradients projected on them."""
    if not big:
        return {}
    keys = jax.random.split(key, len(leaves))
    vs = {j: random_directions(keys[j], leaves[j], directions) for j in big}
    diffs = projected_differences(g, leaves, big, vs, eps, compile=False)
    out = {}
    for j, (num, fw, bw) in zip(big, diffs):
        v = np.asarray(vs[j], np.float64)
        out[j] = (num, fw, bw, _dot(v, rule, j), None if ref is None else _dot(v, ref, j))
    return out


def _dot(v, grads, j):
    """(D, K): ⟨v_d, grads[k][j]⟩ for each direction d and cotangent k."""
    return np.stack([np.tensordot(v, np.asarray(g[j], np.float64), axes=v.ndim - 1)
                     for g in grads], axis=1)


def _projected_row(name, shape, parts, rule, ref, j, k, rtol, floor):
    """The row of a big leaf: per cotangent, ⟨rule, v⟩ vs differences along v (directions at
    a kink excused) and, with a reference, rule vs reference element by element; the first
    failing cotangent's row, else the first."""
    num, fw, bw, along, ref_along = parts
    kinks = np.any(_probe.kink_mask(fw, bw, floor), axis=1)
    label = f"{name} projected ({num.shape[0]} directions)"
    rows = []
    for i in range(k):
        proj = leaf_row(label, [("rule·v", along[:, i]), ("numerical", num[:, i])],
                        [(0, 1, rtol, floor)], kinks, where="direction")
        full = None if ref is None else leaf_row(
            label, [("rule", rule[i][j]), ("reference", ref[i][j])], [(0, 1, 1e-7, floor * 1e-3)])
        rows.append(combined_row(label, shape, proj, full))
    return next((r for r in rows if not r.ok), rows[0])


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
    """
    where = "check_hvp"
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        prec = _precision.working_precision()
        eps, rtol = max(eps, prec.min_eps), max(rtol, prec.min_rtol)
        leaves, rebuild, names = _probe.split_args(_precision.cast(args, prec.dtype), where)
        out = _guard(where, "calling f", lambda: f(*rebuild(leaves)))
        _probe.check_output(out, where, _guard(where, "calling f", lambda: f(*rebuild(leaves))))
        treedef, cts = _cotangents(out, jax.random.fold_in(key, 1), 1)
        s = lambda ls: _project(lambda q: f(*rebuild(q)), cts)(ls)[0]  # noqa: E731
        grad = jax.grad(s)
        g0 = _guard(where, "the gradient through f's rule", lambda: grad(leaves))
        floor = (1e-6 * prec.widen * max(1.0, max(float(jnp.max(jnp.abs(g))) for g in g0))
                 if atol is None else atol)
        report = GradientReport([], float(s(leaves)), {"rtol": rtol, "atol": floor, "eps": eps},
                                prec.note(floor, eps, rtol),
                                columns=("rule/numerical", "rule/reference"), title="check_hvp")
        for d in range(directions):
            vkeys = jax.random.split(jax.random.fold_in(key, 10 + d), len(leaves))
            v = [_random.normal(k, x.shape, x.dtype) for k, x in zip(vkeys, leaves)]
            if not _hvp_rows(report, grad, s, reference, rebuild, cts, leaves, v, names, eps,
                             rtol, floor, d):
                break
    if raise_on_failure:
        report.raise_if_failed()
    return report


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


def _hvp_rows(report, grad, s, reference, rebuild, cts, leaves, v, names, eps, rtol, floor, d):
    """Append direction d's rows (or the failed property) to report; False to stop."""
    try:
        hv = _hessian_vector(grad, leaves, v)
    except Exception as e:  # noqa: BLE001 -- the rule's backward may not be differentiable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        report.properties["rule differentiable"] = False
        report.notes.append(f"H v cannot be computed through f's VJP rule ({type(e).__name__}: "
                            f"{first}): its backward is built from non-differentiable pieces "
                            f"(a NumPy / pure_callback computation?), so its second derivative "
                            f"is unavailable")
        return False
    plus = grad([x + eps * t for x, t in zip(leaves, v)])
    minus = grad([x - eps * t for x, t in zip(leaves, v)])
    ref = None
    if reference is not None:
        sr = lambda ls: _project(lambda q: reference(*rebuild(q)), cts)(ls)[0]  # noqa: E731
        ref = jax.jvp(jax.grad(sr), (leaves,), (v,))[1]
    zero = all(not bool(jnp.any(h != 0)) for h in hv)
    for j, name in enumerate(names):
        num = (np.asarray(plus[j]) - np.asarray(minus[j])) / (2 * eps)
        named, comps = [("rule", hv[j]), ("numerical", num)], [(0, 1, rtol, floor)]
        if ref is not None:
            named.append(("reference", ref[j]))
            comps.append((0, 2, 1e-7, floor * 1e-3))
        report.rows.append(leaf_row(f"{name} (H v, direction {d})", named, comps))
    if zero and not report.ok and not report.notes:
        report.notes.append("H v through f's rule is exactly zero but the gradient changes along "
                            "v: the backward treats something as constant (lax.stop_gradient?)")
    return True
