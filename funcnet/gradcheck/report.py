"""The report every check returns: one row per leaf, a printable table, `.ok`.

A row compares up to three gradients of one leaf: the one under test ("manual": a layer's
backward, a custom_vjp rule, a NumPy backward), a reference ("autodiff") and centred finite
differences ("numerical"), and names the worst element with its values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .kernels import excess as _excess

__all__ = ["GradientRow", "GradientReport", "GradientCheckError"]


@dataclass
class GradientRow:
    """One leaf. `worst_index` is the element where the check is furthest from passing,
    `worst_values` the gradients there by source ({"manual": .., "autodiff": .., ...}).
    `kinks` counts elements at a kink and `unreliable` elements whose numerical derivative's
    error bar exceeds the tolerance: both excused, neither passed nor failed. `reason`, when
    set, says why the row failed in words (a NaN or infinity in one leg)."""

    path: str
    shape: tuple
    manual_vs_autodiff: float
    autodiff_vs_numerical: float
    max_abs_diff: float
    ok: bool
    worst_index: Optional[tuple] = None
    worst_values: dict = field(default_factory=dict)
    kinks: int = 0
    where: str = "element"  # "direction" when the worst is a projection (projected rows)
    unreliable: int = 0
    reason: str = ""

    def describe(self) -> str:
        """'at element (0, 3): manual 0.25, autodiff 1.0', or the reason."""
        if self.reason:
            return self.reason
        if self.worst_index is None:
            return ""
        values = ", ".join(f"{k} {v:.6g}" for k, v in self.worst_values.items())
        return f"at {self.where} {tuple(int(i) for i in self.worst_index)}: {values}"

    @property
    def verdict(self) -> str:
        """"FAIL", "unreliable" (no failure, but some element could not be decided), "ok"."""
        return "FAIL" if not self.ok else "unreliable" if self.unreliable else "ok"


@dataclass
class GradientReport:
    """One row per leaf (parameters, then the input or the arguments); `notes` say what
    else was found (a failed property, the layer to blame, elements at a kink)."""

    rows: List[GradientRow]
    loss: float
    tolerances: dict = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    columns: tuple = ("manual/autodiff", "autodiff/numerical")
    title: str = "gradient check"
    properties: dict = field(default_factory=dict)  # name -> bool (check_layer's battery)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and all(self.properties.values())

    @property
    def failures(self) -> List[GradientRow]:
        return [r for r in self.rows if not r.ok]

    @property
    def failed_properties(self) -> List[str]:
        return [k for k, v in self.properties.items() if not v]

    @property
    def kinks(self) -> int:
        return sum(r.kinks for r in self.rows)

    @property
    def unreliable(self) -> int:
        """Elements whose numerical derivative is too uncertain to judge (not failures)."""
        return sum(r.unreliable for r in self.rows)

    @property
    def verdict(self) -> str:
        """"FAIL", "UNRELIABLE" (nothing failed, but some elements could not be decided:
        their finite differences' error bars exceed the tolerance), or "PASS"."""
        return "FAIL" if not self.ok else "UNRELIABLE" if self.unreliable else "PASS"

    def summary(self) -> str:
        finite = lambda v: v if np.isfinite(v) else np.inf  # noqa: E731 -- nan sorts as worst
        worst_m = max((finite(r.manual_vs_autodiff) for r in self.rows), default=0.0)
        worst_n = max((finite(r.autodiff_vs_numerical) for r in self.rows), default=0.0)
        bad = len(self.failures) + len(self.failed_properties)
        verdict = {"FAIL": f"FAIL ({bad} of {len(self.rows) + len(self.properties)} rows)",
                   "UNRELIABLE": f"UNRELIABLE ({self.unreliable} element(s) numerically "
                                 f"unreliable, none failed)"}.get(self.verdict, "PASS")
        loss = "" if self.loss is None else f", loss {self.loss:.6g}"
        return (f"{self.title} {verdict}: {len(self.rows)} rows, worst rel. error "
                f"{self.columns[0]} {worst_m:.1e}, {self.columns[1]} {worst_n:.1e}{loss}")

    def __str__(self) -> str:
        head = ("leaf", "shape") + tuple(self.columns) + ("max |diff|", "ok")
        cells = [(r.path, str(tuple(r.shape)), f"{r.manual_vs_autodiff:.2e}",
                  f"{r.autodiff_vs_numerical:.2e}", f"{r.max_abs_diff:.1e}", r.verdict)
                 for r in self.rows]
        widths = [max(len(c[j]) for c in cells + [head]) for j in range(len(head))]
        line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip()  # noqa: E731
        sep = "  ".join("-" * w for w in widths)
        extra = [f"{r.path}: FAIL {r.describe()}" for r in self.failures
                 if r.worst_index is not None or r.reason]
        extra += [f"{r.path}: {r.kinks} element(s) at a kink (one-sided differences disagree; "
                  f"not counted)" for r in self.rows if r.kinks]
        extra += [f"{r.path}: {r.unreliable} element(s) numerically unreliable (the error bar "
                  f"of their finite difference exceeds the tolerance; neither pass nor fail)"
                  for r in self.rows if r.unreliable]
        extra += [f"property {k}: FAIL" for k in self.failed_properties]
        return "\n".join([line(head), sep] + [line(c) for c in cells] + [sep, self.summary()]
                         + extra + list(self.notes))

    def raise_if_failed(self):
        if not self.ok:
            raise GradientCheckError(str(self))
        return self

    def finish(self, raise_on_failure: bool):
        """The report, as every check returns it: raised as a GradientCheckError when it
        failed and `raise_on_failure` is set."""
        return self.raise_if_failed() if raise_on_failure else self


class GradientCheckError(AssertionError):
    """A gradient check failed; the message is the report."""


def _close(a, b, rtol, atol):
    """Element-wise |a − b| <= rtol (|a| + |b|) + atol, ignoring NaN (unsampled) entries."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    return bool(np.all(np.abs(a - b)[keep] <= rtol * (np.abs(a) + np.abs(b))[keep] + atol))


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        else a, tree)


def combined_row(path, shape, first: Optional[GradientRow], second: Optional[GradientRow]):
    """One row from two partial ones: `first` gives the table's first column, `second` the
    second (each from its own first comparison). A projected leaf is compared element by
    element on one side and along random directions on the other; the row names the
    worst element or direction of whichever part fails (the first, if both)."""
    parts = [r for r in (first, second) if r is not None]
    pick = next((r for r in parts if not r.ok), parts[0])
    return GradientRow(path, tuple(shape), first.manual_vs_autodiff if first else 0.0,
                       second.manual_vs_autodiff if second else 0.0,
                       max(r.max_abs_diff for r in parts), all(r.ok for r in parts),
                       pick.worst_index, pick.worst_values, sum(r.kinks for r in parts),
                       pick.where, sum(r.unreliable for r in parts), pick.reason)


class Comparison(NamedTuple):
    """named[i] vs named[j]: |a − b| <= rtol (|a| + |b|) + atol per element, except where
    `skip` (elements this comparison does not cover: coordinates not sampled) or
    `unreliable` (elements whose finite difference's error bar exceeds the tolerance:
    excused, counted)."""

    i: int
    j: int
    rtol: float
    atol: float
    skip: object = None
    unreliable: object = None


# How a leg is named as the object of a sentence ("... where the numerical derivative is 0").
_PHRASE = {"numerical": "the numerical derivative", "rule": "the rule",
           "reference": "the reference", "backward": "the backward"}


def _fmt(v) -> str:
    """0.0 -> '0.0', nan -> 'nan', 0.25 -> '0.25', 1e-07 -> '1e-07'."""
    text = f"{float(v):.6g}"
    return text if not np.isfinite(v) or any(c in text for c in ".en") else text + ".0"


def _nonfinite(named, arrays, comparisons, shape, where):
    """(index, reason) of the first element (flat order) where a leg of a comparison is NaN
    or infinite on an element it covers, or None: such an element fails, whatever the
    tolerance (a non-finite gradient is never right)."""
    for c in comparisons:
        a, b = arrays[c.i], arrays[c.j]
        covered = np.ones(shape, bool) if c.skip is None else ~np.asarray(c.skip, bool)
        bad = covered & ~(np.isfinite(a) & np.isfinite(b))
        if bad.any():
            index = tuple(int(k) for k in np.unravel_index(int(np.argmax(bad)), shape))
            mine, other = (c.i, c.j) if not np.isfinite(a[index]) else (c.j, c.i)
            name, other_name = named[mine][0], named[other][0]
            subject = "the numerical derivative" if name == "numerical" else name
            return index, (f"{subject} is {_fmt(arrays[mine][index])} at {where} {index} where "
                           f"{_PHRASE.get(other_name, other_name)} is {_fmt(arrays[other][index])}")
    return None


def _compare(c, arrays, kinks, excess, errors, diffs, unreliable):
    """One comparison of leaf_row: its excess, relative error (inf with a non-finite leg)
    and |differences| appended; its unreliable elements marked."""
    from .numerical import rel_error
    off = kinks | (False if c.skip is None else np.asarray(c.skip, bool))
    if c.unreliable is not None:
        unreliable |= np.asarray(c.unreliable, bool) & ~off
        off = off | np.asarray(c.unreliable, bool)
    a, b = np.where(off, np.nan, arrays[c.i]), np.where(off, np.nan, arrays[c.j])
    excess.append(_excess(a, b, c.rtol, c.atol))
    finite = np.isfinite(a) & np.isfinite(b) | np.isnan(a) & np.isnan(b) & off
    errors.append(rel_error(a, b) if finite.all() else np.inf)
    diffs.append(np.nan_to_num(np.abs(a - b), posinf=0.0))


def leaf_row(path, named, comparisons, kinks=None, where="element") -> GradientRow:
    """The row of one leaf. `named`: [(source name, gradient array)], all one shape;
    `comparisons`: Comparison(i, j, rtol, atol, ...) (or (i, j, rtol, atol) tuples) of
    indices into `named` (one or two; the table's two columns). `kinks`: a boolean mask of
    elements at a kink, excused from every comparison (there, any one-sided derivative is a
    right answer). A NaN or infinity in a leg, on an element its comparison covers, fails
    the row and is named, kink or not."""
    arrays = [np.asarray(a, np.float64) for _, a in named]
    shape = arrays[0].shape
    comparisons = [Comparison(*c) for c in comparisons]
    kinks = np.zeros(shape, bool) if kinks is None else np.asarray(kinks, bool)
    excess, errors, diffs, unreliable = [], [], [], np.zeros(shape, bool)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite legs: _nonfinite names them
        for c in comparisons:
            _compare(c, arrays, kinks, excess, errors, diffs, unreliable)
    bad = _nonfinite(named, arrays, comparisons, shape, where)
    worst = np.max(np.stack(excess), axis=0) if excess else np.zeros(shape)
    ok = bad is None and not bool(np.any(worst > 0))
    at = int(np.argmax(worst if not ok else np.max(np.stack(diffs), axis=0))) if worst.size else None
    index = None if at is None else tuple(int(k) for k in np.unravel_index(at, shape))
    index = bad[0] if bad is not None else index
    values = {} if index is None else {n: float(a[index]) for (n, _), a in zip(named, arrays)}
    errors = (errors + [0.0])[:2]
    biggest = max((float(d.max()) for d in diffs if d.size), default=0.0)
    return GradientRow(path, shape, errors[0], errors[1], biggest, ok, index, values,
                       int(kinks.sum()), where, int(unreliable.sum()), "" if bad is None else bad[1])
