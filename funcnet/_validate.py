"""Argument checks shared by every module: one way to check an int, a float, a pair, a
condition, and one way to carry ints through a cache.

Private to the package: layers, training and data import these; users never need them.
NumPy integers are accepted wherever a Python int is (`operator.index`), NumPy floats and
ints wherever a Python float is (`numbers.Real`); bools are neither.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Tuple

import jax
import jax.numpy as jnp

from .errors import LayerError

__all__ = ["check", "as_int", "as_float", "positive_pair", "float_dtype", "padding_spec",
           "nonempty_shape", "int_token", "token_int", "ints_token", "token_ints"]


def check(condition: bool, message: str):
    """Raise a LayerError with `message` unless `condition` holds."""
    if not condition:
        raise LayerError(message)


def as_int(value, what: str, where: str, *, minimum: int = 1, error=LayerError) -> int:
    """`value` as a Python int >= `minimum` (any integer type but bool), else `error`
    naming `where` and `what`: "dense: out must be a positive int, got 2.5"."""
    ok = _is_int(value)
    value = operator.index(value) if ok else value
    if not ok or value < minimum:
        kind = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise error(f"{where}: {what} must be {kind}, got {value!r}")
    return value


def as_float(value, what: str, where: str, *, low=None, high=None, low_open: bool = False,
             high_open: bool = False, words: str | None = None, error=LayerError) -> float:
    """`value` as a Python float: a real number (Python or NumPy, float or int, not bool),
    finite, and within the bounds given (`low_open` / `high_open` exclude the bound itself),
    else `error` naming `where`, `what` and the allowed range:
    "layer_norm: eps must be a finite number > 0, got nan", "dropout: rate must be in
    [0, 1), got 1.0". `words` replaces the range's wording where a message already says it
    its own way ("a positive number")."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        ok = ((low is None or (v > low if low_open else v >= low))
              and (high is None or (v < high if high_open else v <= high)))
    if not ok:
        words = words or _range_words(low, high, low_open, high_open)
        raise error(f"{where}: {what} must be {words}, got {value!r}")
    return float(value)


def _range_words(low, high, low_open, high_open) -> str:
    """The allowed range in words: "a finite number >= 0", "in [0, 1)", "strictly between
    0 and 1"."""
    if low is not None and high is not None:
        if low_open and high_open:
            return f"strictly between {low:g} and {high:g}"
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def positive_pair(value, what: str, where: str) -> Tuple[int, int]:
    """An int or a pair of ints, each >= 1, as a pair of Python ints."""
    if _is_int(value):
        pair = (value, value)
    else:
        try:  # a float or None is not iterable: report it like any other bad value
            pair = tuple(value)
        except TypeError:
            pair = ()
    if len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise LayerError(f"{where}: {what} must be an int or a pair of ints, got {value!r}")
    if min(operator.index(v) for v in pair) <= 0:
        raise LayerError(f"{where}: {what} must be positive, got {value!r}")
    return tuple(operator.index(v) for v in pair)


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
        return True
    except TypeError:
        return False


def float_dtype(dtype):
    """The dtype parameters are created in: float32 unless asked otherwise."""
    return jnp.float32 if dtype is None else jnp.dtype(dtype)


def dtype_of(value):
    """The dtype JAX gives `value`, without converting it: jnp.asarray of a NumPy array or a
    Python number compiles (and runs) a small program per shape just to say it."""
    if hasattr(value, "dtype"):
        return jax.dtypes.canonicalize_dtype(value.dtype)
    return jnp.asarray(value).dtype  # lists and Python scalars: rare on these paths


def padding_spec(value, where: str):
    """A padding spec, checked: "VALID" or "SAME" (any case, returned upper-case), or
    ((top, bottom), (left, right)) of non-negative ints (an int n means n on every side)."""
    if isinstance(value, str):
        if value.upper() in ("VALID", "SAME"):
            return value.upper()
        pairs = None
    elif _is_int(value):
        n = operator.index(value)
        pairs = ((n, n), (n, n))
    else:
        try:  # ints only: int() would silently truncate 1.5 to 1
            pairs = tuple((a, b) for a, b in value)
        except (TypeError, ValueError):
            pairs = None
        if pairs is not None and (len(pairs) != 2 or not all(_is_int(v) for p in pairs for v in p)):
            pairs = None
    if pairs is None:
        raise LayerError(f"{where}: padding must be 'VALID', 'SAME', an int or "
                         f"((top, bottom), (left, right)), got {value!r}")
    pairs = tuple(tuple(operator.index(v) for v in p) for p in pairs)
    if min(min(p) for p in pairs) < 0:
        raise LayerError(f"{where}: padding must not be negative, got {value!r}")
    return pairs


def nonempty_shape(shape, where: str) -> tuple:
    """`shape` as a tuple, refused when a dimension is zero (nothing to compute with)."""
    shape = tuple(shape)
    if any(d == 0 for d in shape):
        raise LayerError(f"{where}: input shape {shape} has a zero-sized dimension; every "
                         f"dimension must be at least 1")
    return shape


# Ints through a cache. A cache holds arrays only (core.py, the Layer's docstring, says
# why), so an int a backward needs (a count, a size, a shape) travels as the shape of an
# empty array: the ints followed by a 0, which holds no elements and costs nothing. Its
# shape is static under jit and vmap, so the backward reads Python ints back. One
# mechanism, two spellings: a tuple of ints (a shape), or one int.

def ints_token(ints) -> jax.Array:
    """An empty array of shape (*ints, 0) that carries the Python ints `ints` through a
    cache (a cache holds arrays only: core.py); read back with `token_ints`."""
    return jnp.zeros(tuple(operator.index(n) for n in ints) + (0,))


def token_ints(token) -> tuple:
    """The ints an `ints_token` carries, as a tuple of Python ints."""
    return tuple(token.shape[:-1])


def int_token(n) -> jax.Array:
    """An empty array that carries the Python int `n` through a cache (`ints_token((n,))`);
    read back with `token_int`."""
    return ints_token((n,))


def token_int(token) -> int:
    """The int an `int_token` carries."""
    (n,) = token_ints(token)
    return n
