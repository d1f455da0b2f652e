"""check_gradients: a model's hand-derived backward vs jax.grad vs finite differences."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..core import FuncnetError, Layer, param_paths
from . import _precision
from .localize import localize
from .fused import fused_check, step
from .numerical import key_rng, numerical_grad, random_directions
from ._probe import kink_mask
from .report import GradientReport, _excess, combined_row, leaf_row

__all__ = ["check_gradients"]

# Leaves above this many elements are differenced along random directions when
# samples="auto" (every element is still compared manual vs autodiff).
PROJECT_ABOVE = 2048


def check_gradients(model: Layer, params, state, x, labels=None, loss=None, *, train=False,
                    key=None, eps=1e-5, rtol=1e-6, manual_rtol=1e-8, atol=None,
                    samples: int | str | None = "auto", directions: int = 4,
                    sample_key=None, seed=0, chunk: int = 256, avoid_kinks=False,
                    project_above: int = PROJECT_ABOVE, raise_on_failure=False) -> GradientReport:
    """Compare the hand-derived gradients (`model.backward`), `jax.grad` and centred
    finite differences of loss(model(x), labels), for every parameter leaf and the input.

    Runs in float64 whatever the caller's setting (params, state and x are cast; the
    setting is restored after); where float64 is unavailable, in float32 with widened
    tolerances, and the report says so. With `loss=None` the objective is Σ y ⊙ g for a
    fixed, random, non-uniform upstream gradient g. Dropout masks are fixed by `key`. An
    element passes when |a − b| <= tol · (|a| + |b|) + atol, with tol = `manual_rtol` for
    manual/autodiff and `rtol` for autodiff/numerical; atol (default 1e-6 · max(1, |loss|))
    is the finite-difference noise floor, so gradients that are zero in truth pass.

    Manual vs autodiff is always element by element. Numerically: samples="auto" differences
    every coordinate of leaves up to `project_above` (2048) elements and checks bigger ones
    along `directions`
    random unit directions v (⟨autodiff, v⟩ vs (L(x + εv) − L(x − εv)) / 2ε: the projected
    check, as torch's fast mode; rows say "projected (k directions)"); `samples=k` differences
    k random coordinates per leaf instead; None every coordinate. `chunk` is
    numerical_grad's. Integer x (token ids) is a constant: no input row. The "auto" check is
    one compiled program and steps eps / 100 in float64 (fewer ReLU crossings in big nets).

    Elements at a kink (one-sided differences disagree) are counted, not failed;
    `avoid_kinks=True` instead re-draws params and float inputs with small noise (up to 3
    times) until none is at a kink; whole-number inputs (an embedding's ids) stay as they are.
    """
    with jax.enable_x64(True):
        prec = _precision.working_precision()
        tol = dict(eps=max(eps, prec.min_eps), rtol=max(rtol, prec.min_rtol),
                   manual_rtol=max(manual_rtol, prec.min_rtol * 1e-2), atol=atol)
        params, state, x = (_precision.cast(t, prec.dtype) for t in (params, state, x))
        labels = None if labels is None else _precision.cast(labels, prec.dtype)
        base = jax.random.PRNGKey(seed)
        for attempt in range(4 if avoid_kinks else 1):
            report = _check(model, params, state, x, labels, loss, train, key, tol, samples,
                            directions, project_above, sample_key, seed, chunk, prec)
            if not report.kinks:
                break
            params, x = _redraw(params, x, jax.random.fold_in(base, 1000 + attempt))
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _redraw(params, x, key):
    """params and x plus N(0, 1e-3²) noise (avoid_kinks). x is left alone when it holds ids:
    an integer dtype, or floats that are all whole numbers (embedding inputs)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves) + 1)
    moved = [leaf + _random.normal(k, leaf.shape, leaf.dtype, 1e-3)
             if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf for k, leaf in zip(keys, leaves)]
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(x == jnp.round(x))):
        x = x + _random.normal(keys[-1], x.shape, x.dtype, 1e-3)
    return jax.tree_util.tree_unflatten(treedef, moved), x


def _loss_parts(model, params, state, x, labels, loss, train, key, seed, dtype):
    """(loss_fn(y, labels), dloss(y, labels)): the given loss, or Σ y ⊙ g."""
    if loss is not None:
        return loss, getattr(loss, "grad", None) or jax.grad(loss)
    y0 = jax.eval_shape(lambda: model.apply(params, state, x, train=train, key=key)[0])
    g = _random.normal(jax.random.PRNGKey(seed), y0.shape, dtype)
    return (lambda y, t: jnp.sum(y * g)), (lambda y, t: g)


def _check(model, params, state, x, labels, loss, train, key, tol, samples, directions,
           project_above, sample_key, seed, chunk, prec):
    """One pass of check_gradients at (params, x): the report."""
    diff_x = jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)  # integer ids: a constant
    loss_fn, dloss = _loss_parts(model, params, state, x, labels, loss, train, key, seed,
                                 prec.dtype)

    def objective(point):
        xx = point[1] if diff_x else x
        return loss_fn(model.apply(point[0], state, xx, train=train, key=key)[0], labels)

    point = (params, x) if diff_x else (params,)

    def exact(point):
        value, auto = jax.value_and_grad(objective)(point)
        y, _, cache = model.forward(point[0], state, point[1] if diff_x else x, train=train,
                                    key=key)
        man_p, man_x = model.backward(point[0], cache, dloss(y, labels))
        return value, auto, (man_p, man_x) if diff_x else (man_p,)

    leaves, treedef = jax.tree_util.tree_flatten(point)
    big, vs, coords, along = [], {}, None, {}
    if samples == "auto":  # one compiled program for everything
        big = [j for j, leaf in enumerate(leaves) if leaf.size > project_above]
        rng = np.random.default_rng([seed, 77]) if sample_key is None else key_rng(sample_key)
        vs = {j: random_directions(rng, leaves[j], directions) for j in big}
        last = len(leaves) - 1 if diff_x else -1  # the input: batched, not a kernel
        kernels = [j for j, leaf in enumerate(leaves) if leaf.ndim >= 3 and j != last]
        value, auto, man, coords, along = fused_check(objective, exact, point, big, vs, tol["eps"],
                                                      one_by_one=kernels)
        tol = dict(tol, eps=step(tol["eps"], leaves))  # the step it took
    else:
        value, auto, man = jax.jit(exact)(point)  # compiled: much faster than op by op
    value = float(value)
    if jax.tree_util.tree_structure(man[0]) != jax.tree_util.tree_structure(auto[0]):
        raise FuncnetError(f"check_gradients: the model's backward returned parameter gradients "
                           f"of structure {jax.tree_util.tree_structure(man[0])}, but the "
                           f"params have {jax.tree_util.tree_structure(auto[0])}")
    floor = 1e-6 * prec.widen * max(1.0, abs(value)) if tol["atol"] is None else tol["atol"]
    floors = (floor * 1e-3 * (1 if prec.f64 else 10), floor)  # manual/autodiff: round-off only
    rtols = (tol["manual_rtol"], tol["rtol"])
    paths = [path for path, _ in param_paths(model, man[0])] + (["input"] if diff_x else [])
    m_leaves, a_leaves = jax.tree_util.tree_leaves(man), jax.tree_util.tree_leaves(auto)
    for path, m, a in zip(paths, m_leaves, a_leaves):
        if np.shape(m) != np.shape(a):
            raise FuncnetError(f"check_gradients: backward gave {path} a gradient of shape "
                               f"{np.shape(m)}, expected {np.shape(a)}")
    if coords is None:
        num = _coordinate_part(objective, leaves, treedef, tol["eps"], samples, sample_key, chunk)
        kinks = _kink_masks(objective, leaves, treedef, m_leaves, a_leaves, num, tol["eps"],
                            rtols, floors)
    else:
        num = [coords[j][0] if j in coords else np.full(leaf.shape, np.nan)
               for j, leaf in enumerate(leaves)]
        kinks = [_kinks_seen(m, a, n, coords.get(j), rtols, floors)
                 for j, (m, a, n) in enumerate(zip(m_leaves, a_leaves, num))]
    rows = []
    for j, (path, m, a, n) in enumerate(zip(paths, m_leaves, a_leaves, num)):
        named = [("manual", m), ("autodiff", a), ("numerical", n)]
        if j in along:
            full = leaf_row(path, named[:2], [(0, 1, rtols[0], floors[0])], kinks[j])
            rows.append(combined_row(f"{path} projected ({directions} directions)", np.shape(a),
                                     full, _projected_row(a, vs[j], along[j], rtols[1], floors[1])))
        else:
            rows.append(leaf_row(path, named, [(0, 1, rtols[0], floors[0]),
                                               (1, 2, rtols[1], floors[1])], kinks[j]))
    notes = prec.note(floor, tol["eps"], tol["rtol"])
    if not diff_x:
        notes.append(f"input: constant ({jnp.asarray(x).dtype} ids), not differentiated")
    if not all(r.ok for r in rows):
        notes.append(_blame(model, params, state, x, train, key, seed))
    return GradientReport(rows, value, {"rtol": tol["rtol"], "manual_rtol": tol["manual_rtol"],
                                        "atol": floor, "eps": tol["eps"]}, notes)


def _kinks_seen(m, a, n, diffs, rtols, floors, limit=16):
    """Elements at a kink, from the one-sided differences the program already computed:
    those failing a comparison whose forward and backward differences disagree (none when
    more than `limit` fail: that is a wrong formula, not a few kinks)."""
    m, a, n = (np.asarray(v, np.float64) for v in (m, a, n))
    failing = (_excess(m, a, rtols[0], floors[0]) > 0) | (_excess(a, n, rtols[1], floors[1]) > 0)
    if diffs is None or failing.sum() > limit:
        return np.zeros(a.shape, bool)
    return failing & kink_mask(diffs[1], diffs[2], floors[1])


def _projected_row(auto, vs, diffs, rtol, floor):
    """⟨autodiff, v⟩ vs the differences along v, directions at a kink excused."""
    num, fw, bw = diffs
    dots = np.tensordot(np.asarray(vs, np.float64), np.asarray(auto, np.float64),
                        axes=np.ndim(auto))
    return leaf_row("", [("autodiff·v", dots), ("numerical", num)], [(0, 1, rtol, floor)],
                    kink_mask(fw, bw, floor), where="direction")


def _coordinate_part(objective, leaves, treedef, eps, samples, sample_key, chunk):
    """Centred differences of every leaf (all or `samples` coordinates), float64 NumPy: one
    call of numerical_grad (samples=int or None; "auto" is the fused program)."""
    if not leaves:
        return []
    got = numerical_grad(lambda ls: objective(jax.tree_util.tree_unflatten(treedef, ls)), leaves,
                         eps, samples=samples, key=sample_key, chunk=chunk)
    return [np.asarray(g, np.float64) for g in got]


def _blame(model, params, state, x, train, key, seed):
    """The localization note of a failed check (never raises: it only adds information)."""
    try:
        where = localize(model, params, state, x, train=train, key=key, seed=seed)
    except Exception as e:  # noqa: BLE001 -- a layer may not support the per-layer replay
        return f"could not localize the failure ({type(e).__name__}: {e})"
    return where or ("every layer's backward agrees with autodiff of that layer alone: the "
                     "fault is in how they are composed (a serial's or combinator's backward)")


def _kink_masks(objective, leaves, treedef, man, auto, num, eps, rtols, floors, limit=16):
    """Per leaf, a mask of the elements at a kink: among those where the check fails (when
    at most `limit` in the leaf do), the ones whose one-sided differences
    (f(x + εe) − f(x)) / ε and (f(x) − f(x − εe)) / ε disagree too.
    Only disagreeing elements are probed, so a passing check costs nothing more."""
    compiled = jax.jit(lambda ls: objective(jax.tree_util.tree_unflatten(treedef, ls)))
    at = lambda ls: float(compiled(ls))  # noqa: E731 -- one compilation, only if probed
    masks, f0 = [], None
    for j, (m, a, n) in enumerate(zip(man, auto, num)):
        m, a, n = (np.asarray(v, np.float64) for v in (m, a, n))
        mask = np.zeros(a.shape, bool)
        failing = (_excess(m, a, rtols[0], floors[0]) > 0) | (_excess(a, n, rtols[1], floors[1]) > 0)
        # More failing elements than `limit` is a wrong formula, not a few kinks: not probed.
        for k in np.flatnonzero(failing) if failing.sum() <= limit else ():
            f0 = at(leaves) if f0 is None else f0
            moved = [list(leaves), list(leaves)]
            for side, sign in zip(moved, (1, -1)):
                side[j] = leaves[j].ravel().at[k].add(sign * eps).reshape(leaves[j].shape)
            fw, bw = (at(moved[0]) - f0) / eps, (f0 - at(moved[1])) / eps
            mask.flat[k] = bool(kink_mask(np.array(fw), np.array(bw), floors[1]))
        masks.append(mask)
    return masks
