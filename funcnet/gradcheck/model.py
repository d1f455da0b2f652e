"""check_gradients: a model's hand-derived backward vs jax.grad vs finite differences."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..core import FuncnetError, Layer, param_paths
from .localize import localize
from .numerical import numerical_grad
from ._probe import kink_mask
from .report import GradientReport, _excess, _to64, leaf_row

__all__ = ["check_gradients"]


def check_gradients(model: Layer, params, state, x, labels=None, loss=None, *, train=False,
                    key=None, eps=1e-5, rtol=1e-6, manual_rtol=1e-8, atol=None,
                    samples: Optional[int] = None, sample_key=None, seed=0, chunk: int = 256,
                    raise_on_failure=False) -> GradientReport:
    """Compare the hand-derived gradients (`model.backward`), `jax.grad` and centred
    finite differences of loss(model(x), labels), for every parameter leaf and the input.

    Runs in float64 whatever the caller's setting (params, state and x are cast; the
    setting is restored after). With `loss=None` the objective is Σ y ⊙ g for a fixed,
    random, non-uniform upstream gradient g. Dropout masks are fixed by `key`. An element
    passes when |a − b| <= tol · (|a| + |b|) + atol, with tol = `manual_rtol` for
    manual/autodiff and `rtol` for autodiff/numerical; atol (default 1e-6 · max(1, |loss|))
    is the finite-difference noise floor, so gradients that are zero in truth pass.
    `samples=k` checks only k random coordinates per leaf numerically (big models);
    `chunk` is numerical_grad's: leaves that fit in it together share one compiled program.
    """
    with jax.enable_x64(True):
        params, state, x = _to64(params), _to64(state), _to64(x)
        labels = None if labels is None else _to64(labels)
        if loss is None:
            y0 = model.apply(params, state, x, train=train, key=key)[0]
            g = jax.random.normal(jax.random.PRNGKey(seed), y0.shape, jnp.float64)
            loss_fn, dloss = (lambda y, t: jnp.sum(y * g)), (lambda y, t: g)
        else:
            loss_fn = loss
            dloss = getattr(loss, "grad", None) or jax.grad(loss)

        def objective(p, xx):
            return loss_fn(model.apply(p, state, xx, train=train, key=key)[0], labels)

        @jax.jit  # compiled: much faster than op-by-op dispatch, even for one call
        def exact(p, xx):
            value, auto = jax.value_and_grad(objective, argnums=(0, 1))(p, xx)
            y, _, cache = model.forward(p, state, xx, train=train, key=key)
            return value, auto, model.backward(p, cache, dloss(y, labels))

        value, (auto_p, auto_x), (man_p, man_x) = exact(params, x)
        value = float(value)
        if jax.tree_util.tree_structure(man_p) != jax.tree_util.tree_structure(auto_p):
            raise FuncnetError(f"check_gradients: the model's backward returned parameter gradients "
                               f"of structure {jax.tree_util.tree_structure(man_p)}, but the "
                               f"params have {jax.tree_util.tree_structure(auto_p)}")
        # One call for params and input together: small leaves share one compilation.
        num_p, num_x = numerical_grad(lambda px: objective(*px), (params, x), eps,
                                      samples=samples, key=sample_key, chunk=chunk)
        floor = 1e-6 * max(1.0, abs(value)) if atol is None else atol
        m_floor = floor * 1e-3  # manual and autodiff differ only by float64 round-off
        rows = []
        kinks = iter(_kink_masks(objective, (params, x), (man_p, man_x), (auto_p, auto_x),
                                 (num_p, num_x), eps, (manual_rtol, rtol), (m_floor, floor)))
        named = zip(param_paths(model, man_p), jax.tree_util.tree_leaves(auto_p),
                    jax.tree_util.tree_leaves(num_p))
        for (path, m), a, n in list(named) + [(("input", man_x), auto_x, num_x)]:
            m, a, n = (np.asarray(v, np.float64) for v in (m, a, n))
            if m.shape != a.shape:
                raise FuncnetError(f"check_gradients: backward gave {path} a gradient of shape "
                                   f"{m.shape}, expected {a.shape}")
            rows.append(leaf_row(path, [("manual", m), ("autodiff", a), ("numerical", n)],
                                 [(0, 1, manual_rtol, m_floor), (1, 2, rtol, floor)],
                                 next(kinks)))
        notes = []
        if not all(r.ok for r in rows):
            notes.append(_blame(model, params, state, x, train, key, seed))
    report = GradientReport(rows, value, {"rtol": rtol, "manual_rtol": manual_rtol, "atol": floor},
                            notes)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _blame(model, params, state, x, train, key, seed):
    """The localization note of a failed check (never raises: it only adds information)."""
    try:
        where = localize(model, params, state, x, train=train, key=key, seed=seed)
    except Exception as e:  # noqa: BLE001 -- a layer may not support the per-layer replay
        return f"could not localize the failure ({type(e).__name__}: {e})"
    return where or ("every layer's backward agrees with autodiff of that layer alone: the "
                     "fault is in how they are composed (a serial's or combinator's backward)")


def _kink_masks(objective, point, man, auto, num, eps, rtols, floors, limit=16):
    """Per leaf of point = (params, x), a mask of the elements at a kink: among those where
    the check fails (when at most `limit` in the leaf do), the ones whose
    one-sided differences (f(x + εe) − f(x)) / ε and (f(x) − f(x − εe)) / ε disagree too.
    Only disagreeing elements are probed, so a passing check costs nothing more."""
    leaves, treedef = jax.tree_util.tree_flatten(point)
    compiled = jax.jit(lambda ls: objective(*jax.tree_util.tree_unflatten(treedef, ls)))
    at = lambda ls: float(compiled(ls))  # noqa: E731 -- one compilation, only if probed
    masks, f0 = [], None
    trees = [jax.tree_util.tree_leaves(t) for t in (man, auto, num)]
    for j, (m, a, n) in enumerate(zip(*trees)):
        m, a, n = (np.asarray(v, np.float64) for v in (m, a, n))
        if m.shape != a.shape:
            masks.append(None)
            continue
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
