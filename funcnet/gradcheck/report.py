"""The report every check returns: one row per leaf, a printable table, `.ok`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GradientRow", "GradientReport", "GradientCheckError"]


@dataclass
class GradientRow:
    path: str
    shape: tuple
    manual_vs_autodiff: float
    autodiff_vs_numerical: float
    max_abs_diff: float
    ok: bool


@dataclass
class GradientReport:
    """One row per parameter leaf, plus a row for the input gradient."""

    rows: List[GradientRow]
    loss: float
    tolerances: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> List[GradientRow]:
        return [r for r in self.rows if not r.ok]

    def summary(self) -> str:
        worst_m = max((r.manual_vs_autodiff for r in self.rows), default=0.0)
        worst_n = max((r.autodiff_vs_numerical for r in self.rows), default=0.0)
        verdict = "PASS" if self.ok else f"FAIL ({len(self.failures)} of {len(self.rows)} rows)"
        return (f"gradient check {verdict}: {len(self.rows)} rows, worst rel. error "
                f"manual/autodiff {worst_m:.1e}, autodiff/numerical {worst_n:.1e}, loss {self.loss:.6g}")

    def __str__(self) -> str:
        head = ("leaf", "shape", "manual/autodiff", "autodiff/numerical", "max |diff|", "ok")
        cells = [(r.path, str(tuple(r.shape)), f"{r.manual_vs_autodiff:.2e}",
                  f"{r.autodiff_vs_numerical:.2e}", f"{r.max_abs_diff:.1e}", "ok" if r.ok else "FAIL")
                 for r in self.rows]
        widths = [max(len(c[j]) for c in cells + [head]) for j in range(len(head))]
        line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip()
        sep = "  ".join("-" * w for w in widths)
        return "\n".join([line(head), sep] + [line(c) for c in cells] + [sep, self.summary()])

    def raise_if_failed(self):
        if not self.ok:
            raise GradientCheckError(str(self))
        return self


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
