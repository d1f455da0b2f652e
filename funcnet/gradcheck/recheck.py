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


class Verdicts(NamedTuple):
    """judge's answer: the numerical values (Richardson's where differenced again), and the
    masks of elements at a kink and numerically unreliable (both excused)."""

    num: np.ndarray
    kinks: np.ndarray
    unreliable: np.ndarray


def judge(value, num, forward, backward, rtol, floor, eps, fine, *, scale=0.0, also=None,
          limit: int = kernels.KINK_LIMIT, kink_limit=None) -> Verdicts:
    """The elements where value vs num (centred differences at ε) fails, looked at again.
    When at most `limit` fail, fine(mask) gives their centred differences at ε/2 (NaN
    elsewhere): an element whose Richardson estimate agrees passes (a smooth f with high
    curvature, no kink); of those still failing, one whose one-sided differences disagree
    is at a kink (guessed from the differences, as before: only where the second look
    could not clear it), else one whose error bar exceeds the tolerance is numerically
    unreliable, else it fails. `also`: elements failing another comparison that a kink
    excuses too; with more than `kink_limit` failing, none is excused as a kink."""
    value, num = np.asarray(value, np.float64), np.array(num, np.float64)
    bad = (kernels.excess(value, num, rtol, floor) > 0) & np.isfinite(value) & np.isfinite(num)
    unsure = np.zeros(num.shape, bool)
    if 0 < bad.sum() <= limit:
        again = np.asarray(fine(bad), np.float64)
        at = ~np.isnan(again)
        estimate, passes, unsure = kernels.second_look(value, num, again, rtol, floor, eps, scale)
        num = np.where(at, estimate, num)
        bad &= ~(passes & at)
        unsure &= at & bad
    if also is not None:
        bad = bad | np.asarray(also, bool)
    if kink_limit is not None and bad.sum() > kink_limit:
        return Verdicts(num, np.zeros(num.shape, bool), unsure)
    kinks = bad & kernels.kink_mask(forward, backward, floor)
    return Verdicts(num, kinks, unsure & ~kinks)


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
