"""A check's options as one value: the tolerances, the step, what is sampled, the key.

Passed whole from a public check to its pieces (instead of a dozen positional arguments),
after `within(precision)` has applied the working precision's floors.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

from .._validate import as_int
from ..errors import FuncnetError
from . import kernels
from ._precision import Precision, working_precision

__all__ = []


class Settings(NamedTuple):
    """eps: the finite-difference step; rtol: the relative tolerance of the rule (or
    autodiff) against the differences; manual_rtol: check_gradients' manual vs autodiff;
    atol: the absolute floor (None: 1e-6 · max(1, the objective's scale), widened without
    float64); samples: "auto" (project leaves over `project_above` elements along
    `directions` random directions), an int (that many coordinates per leaf) or None
    (every coordinate); chunk: numerical_grad's; cotangents: how many random cotangents
    check_vjp tries; key: the check's one JAX key, every random draw comes from a stream
    of it (kernels.stream); sample_key: when given, the key of the sampled coordinates and
    random directions instead of their streams of `key`; jit: "both" (check_vjp compares
    the rule under jax.jit with the eager one), "eager" or "jit" (only that one); nondet_tol:
    how far two evaluations of a rule may differ (0: bitwise equal)."""

    eps: float = 1e-5
    rtol: float = 1e-5
    atol: Optional[float] = None
    manual_rtol: float = 1e-8
    samples: object = "auto"
    directions: int = 4
    project_above: int = kernels.PROJECT_ABOVE
    chunk: int = 256
    cotangents: int = 2
    key: object = None
    sample_key: object = None
    precision: Precision = Precision(None)
    jit: str = "both"
    nondet_tol: float = 0.0

    def within(self, precision: Optional[Precision] = None) -> Settings:
        """These settings at the working precision (default: the current one, so call it
        inside jax.enable_x64): its floors on eps and the tolerances applied."""
        p = working_precision() if precision is None else precision
        return self._replace(eps=max(self.eps, p.min_eps), rtol=max(self.rtol, p.min_rtol),
                             manual_rtol=max(self.manual_rtol, p.min_rtol * 1e-2), precision=p)

    def floor(self, scale: float) -> float:
        """The absolute tolerance: `atol`, else the finite-difference noise floor
        1e-6 · max(1, scale), widened where float64 is unavailable."""
        if self.atol is not None:
            return self.atol
        scale = scale if math.isfinite(scale) else 0.0  # a NaN objective fails on its own
        return 1e-6 * self.precision.widen * max(1.0, scale)

    def sampling_key(self, tag: int):
        """The key of a sampling stream (kernels.COORDINATES or DIRECTIONS): `sample_key`
        when given, else that stream of `key`."""
        return self.sample_key if self.sample_key is not None else kernels.stream(self.key, tag)


def samples_option(value, where: str, *, auto: bool = True):
    """`samples` checked: "auto" (where allowed), None, or a positive int of any integer type
    (a NumPy integer too), as a Python int; else a FuncnetError naming `where`."""
    if value is None or (auto and isinstance(value, str) and value == "auto"):
        return value
    kind = '"auto", None or a positive int' if auto else "a positive int or None"
    try:
        return as_int(value, "samples", where, error=FuncnetError)
    except FuncnetError:
        raise FuncnetError(f"{where}: samples must be {kind}, got {value!r}") from None


def jit_option(value, where: str) -> str:
    """`jit` checked: "both" (or True), "eager" (or False), "jit"."""
    named = {True: "both", False: "eager"}.get(value, value) if isinstance(value, bool) else value
    if named not in ("both", "eager", "jit"):
        raise FuncnetError(f'{where}: jit must be "both", "eager" or "jit", got {value!r}')
    return named
