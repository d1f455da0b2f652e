"""The report every check returns: one row per leaf, a printable table, `.ok`.

A row compares up to three gradients of one leaf: the one under test ("manual": a layer's
backward, a custom_vjp rule, a NumPy backward), a reference ("autodiff") and centred finite
differences ("numerical"), and names the worst element with its values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .kernels import excess as _excess

__all__ = ["GradientRow", "GradientReport", "GradientCheckError"]


@dataclass
class GradientRow:
    """One leaf. `worst_index` is the element where the check is furthest from passing,
    `worst_values` the gradients there by source ({"manual": .., "autodiff": .., ...})."""

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

    def describe(self) -> str:
        """'at element (0, 3): manual 0.25, autodiff 1.0'."""
        if self.worst_index is None:
            return ""
        values = ", ".join(f"{k} {v:.6g}" for k, v in self.worst_values.items())
        return f"at {self.where} {tuple(int(i) for i in self.worst_index)}: {values}"


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

    def summary(self) -> str:
        worst_m = max((r.manual_vs_autodiff for r in self.rows), default=0.0)
        worst_n = max((r.autodiff_vs_numerical for r in self.rows), default=0.0)
        bad = len(self.failures) + len(self.failed_properties)
        verdict = "PASS" if self.ok else f"FAIL ({bad} of {len(self.rows) + len(self.properties)} rows)"
        return (f"{self.title} {verdict}: {len(self.rows)} rows, worst rel. error "
                f"{self.columns[0]} {worst_m:.1e}, {self.columns[1]} {worst_n:.1e}, "
                f"loss {self.loss:.6g}")

    def __str__(self) -> str:
        head = ("leaf", "shape") + tuple(self.columns) + ("max |diff|", "ok")
        cells = [(r.path, str(tuple(r.shape)), f"{r.manual_vs_autodiff:.2e}",
                  f"{r.autodiff_vs_numerical:.2e}", f"{r.max_abs_diff:.1e}",
                  "ok" if r.ok else "FAIL")
                 for r in self.rows]
        widths = [max(len(c[j]) for c in cells + [head]) for j in range(len(head))]
        line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip()  # noqa: E731
        sep = "  ".join("-" * w for w in widths)
        extra = [f"{r.path}: FAIL {r.describe()}" for r in self.failures if r.worst_index is not None]
        extra += [f"{r.path}: {r.kinks} element(s) at a kink (one-sided differences disagree; "
                  f"not counted)" for r in self.rows if r.kinks]
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
                       pick.where)


def leaf_row(path, named, comparisons, kinks=None, where="element") -> GradientRow:
    """The row of one leaf. `named`: [(source name, gradient array)], all one shape;
    `comparisons`: [(i, j, rtol, atol)] pairs of indices into `named` (one or two; the
    table's two columns). `kinks`: a boolean mask of elements at a kink, excused from every
    comparison (there, any one-sided derivative is a right answer)."""
    from .numerical import rel_error
    arrays = [np.asarray(a, np.float64) for _, a in named]
    shape = arrays[0].shape
    skip = np.zeros(shape, bool) if kinks is None else np.asarray(kinks, bool)
    excess, errors, diffs = [], [], []
    for i, j, rtol, atol in comparisons:
        a, b = arrays[i], arrays[j]
        a, b = np.where(skip, np.nan, a), np.where(skip, np.nan, b)
        excess.append(_excess(a, b, rtol, atol))
        errors.append(rel_error(a, b))
        diffs.append(np.nan_to_num(np.abs(a - b)))
    worst = np.max(np.stack(excess), axis=0) if excess else np.zeros(shape)
    ok = not bool(np.any(worst > 0))
    at = int(np.argmax(worst if not ok else np.max(np.stack(diffs), axis=0))) if worst.size else None
    index = None if at is None else tuple(int(k) for k in np.unravel_index(at, shape))
    values = {} if index is None else {n: float(a[index]) for (n, _), a in zip(named, arrays)}
    errors = (errors + [0.0])[:2]
    biggest = max((float(d.max()) for d in diffs if d.size), default=0.0)
    return GradientRow(path, shape, errors[0], errors[1], biggest, ok, index, values,
                       int(skip.sum()), where)
