"""The working precision of the checks: float64 (scoped by the caller's jax.enable_x64), or
float32 with widened tolerances where the backend has no float64."""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import dtype_of

__all__ = []


def float64_available() -> bool:
    """Whether float64 arrays are really made here (call inside jax.enable_x64(True)): some
    backends silently give float32 even with x64 on."""
    return jnp.zeros((), jnp.float64).dtype == jnp.float64


@dataclass(frozen=True)
class Precision:
    """dtype the check computes in; `widen` multiplies the noise floors (1 in float64),
    `eps`/`rtol` are floors for the step and relative tolerances."""

    dtype: object
    widen: float = 1.0
    min_eps: float = 0.0
    min_rtol: float = 0.0

    @property
    def f64(self) -> bool:
        return self.widen == 1.0

    def note(self, floor, eps, rtol) -> list:
        """The report's note when float64 was not available (else nothing)."""
        if self.f64:
            return []
        return [f"float64 unavailable: checked in float32, floor widened to {floor:.1e} "
                f"(eps {eps:g}, rtol {rtol:g})"]


def working_precision() -> Precision:
    """float64 when available; else float32 with a finite-difference step of 1e-3 (about
    the cube root of float32's epsilon, where round-off and truncation balance), relative
    tolerance 1e-2 and noise floors 1e3 times wider (float32's round-off over a step of
    1e-3 is ~1e-4 of the function's scale, against ~1e-11 in float64: the float64 floor
    of 1e-6 is generous, 1e-3 keeps a margin of about ten)."""
    if float64_available():
        return Precision(jnp.float64)
    return Precision(jnp.float32, widen=1e3, min_eps=1e-3, min_rtol=1e-2)


def cast(tree, dtype):
    """Floating leaves of tree as `dtype`; integer and bool leaves unchanged."""
    def one(a):
        if not jnp.issubdtype(dtype_of(a), jnp.floating):
            return a
        # Through NumPy: a host-side cast and a transfer, where an eager jnp cast, and even
        # jnp.asarray of a NumPy array, compiles a small program per shape (~10 ms each).
        return jax.device_put(np.asarray(a).astype(dtype, copy=False))
    return jax.tree_util.tree_map(one, tree)
