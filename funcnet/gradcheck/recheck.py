"""A failing comparison looked at again before it is reported: each failing element's (or
direction's) numerical derivative gets an error bar from a second difference at ε/2, and a
projected row that still fails is bisected down to the element behind it.

Verdicts per element: it passes with the better (Richardson) estimate; or its error bar
exceeds the tolerance, so the differences cannot decide ("numerically unreliable": neither
pass nor fail); or it fails, with a trustworthy number beside it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import numpy as np

from . import kernels
from .report import Comparison, GradientRow, leaf_row

__all__ = []


def failing(value, num, kinks, rtol, floor, limit: int = kernels.KINK_LIMIT):
    """Flat indices of the elements where value vs num fails (both finite, not at a kink),
    or none when more than `limit` fail: that is a wrong formula, and one more difference
    of each would only cost time."""
    value, num = np.asarray(value, np.float64), np.asarray(num, np.float64)
    bad = (kernels.excess(value, num, rtol, floor) > 0) & np.isfinite(value) & np.isfinite(num)
    if kinks is not None:
        bad &= ~np.asarray(kinks, bool)
    return np.flatnonzero(bad) if bad.sum() <= limit else np.zeros(0, int)


def refine(value, num, fine, rtol, floor, eps, scale=0.0):
    """(num, unreliable): at the elements where `fine` (the centred differences at ε/2) is
    not NaN, num replaced by the Richardson estimate, and the mask of those whose error
    bar exceeds the tolerance while they still fail."""
    num, fine = np.asarray(num, np.float64), np.asarray(fine, np.float64)
    at = ~np.isnan(fine)
    estimate, _, unreliable = kernels.second_look(value, num, fine, rtol, floor, eps, scale)
    return np.where(at, estimate, num), unreliable & at


class Probe(NamedTuple):
    """How to difference one leaf again. along(u, step) -> the centred difference
    (F(x + step·u) − F(x − step·u)) / 2 step of the checked scalar F along u (leaf-shaped);
    exact: the gradient under test (leaf-shaped); name: its name in the row."""

    along: Callable
    exact: np.ndarray
    name: str


def projected_row(label, shape, dots, num, kinks, vs, probe: Probe, rtol, floor, eps,
                  scale=0.0) -> GradientRow:
    """⟨exact, v_d⟩ (`dots`) vs the differences along each direction v_d (`num`), directions
    at a kink excused. A failing direction is differenced again at ε/2: it passes with the
    better estimate, or is numerically unreliable, or fails for sure; then the failure is
    bisected to an element, which the row names with both values."""
    num, dots = np.array(num, np.float64), np.asarray(dots, np.float64)
    vs = np.asarray(vs, np.float64)
    unreliable = np.zeros(num.shape, bool)
    named = lambda: [(f"{probe.name}·v", dots), ("numerical", num)]  # noqa: E731
    for _ in range(len(num)):
        row = leaf_row(label, named(), [Comparison(0, 1, rtol, floor, unreliable=unreliable)],
                       kinks, where="direction")
        if row.ok or row.reason:
            return row
        d = row.worst_index[0]
        fine = probe.along(vs[d], eps / 2)
        est, passes, unsure = kernels.second_look(dots[d], num[d], fine, rtol, floor, eps, scale)
        num[d] = est
        if not passes and not unsure:
            return _element_row(row, shape, probe, vs[d], dots[d] - num[d], eps)
        unreliable[d] = bool(unsure)
    return leaf_row(label, named(), [Comparison(0, 1, rtol, floor, unreliable=unreliable)],
                    kinks, where="direction")


def _element_row(row, shape, probe, v, total, eps) -> GradientRow:
    """The failed projected row, naming the element that bisection finds behind the
    discrepancy of direction v (or the direction, when the budget runs out)."""
    exact, flat_v = np.asarray(probe.exact, np.float64).ravel(), v.ravel()

    def discrepancy(support):
        u = np.zeros_like(flat_v)
        u[support] = flat_v[support]
        return float(exact @ u) - float(probe.along(u.reshape(v.shape), eps))

    at = kernels.bisect(discrepancy, np.flatnonzero(flat_v), total)
    if at is None:
        return row
    unit = np.zeros_like(flat_v)
    unit[at] = 1.0
    index = tuple(int(k) for k in np.unravel_index(at, tuple(shape)))
    values = {probe.name: float(exact[at]), "numerical": float(probe.along(unit.reshape(v.shape), eps))}
    said = ", ".join(f"{k} {val:.6g}" for k, val in values.items())
    return dataclasses.replace(row, worst_index=index, worst_values=values, where="element",
                               reason=f"{row.describe()}; the element behind it is {index}: {said}")
