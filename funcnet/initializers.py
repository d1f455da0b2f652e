"""Weight initializers: `init(key, shape, dtype) -> array`.

fan_in is the product of every axis but the last and fan_out the last axis, which fits
both layouts funcnet uses: dense (fan_in, out) and conv2d HWIO (kh, kw, c_in, c_out) ->
fan_in = kh * kw * c_in, fan_out = c_out. Each is named by what it draws:

- gaussian(std): N(0, std²), the fixed "weight scale" of cs231n's nets.
- lecun_normal: N(0, 1/fan_in) (LeCun et al. 1998).
- glorot_normal: N(0, 2/(fan_in + fan_out)); glorot_uniform: U(−a, a) with
  a = √(6/(fan_in + fan_out)) (Glorot & Bengio 2010; what JAX and PyTorch call "xavier").
- he_normal: N(0, 2/fan_in), for ReLU nets (He et al. 2015).
- zeros, ones: constants.

The notes' names stay as aliases: `xavier` and `lecun` are lecun_normal, N(0, 1/fan_in)
(the notes' "Xavier" is this 1/fan_in form, not Glorot's 2/(fan_in + fan_out); dense and
the convolutions default to lecun_normal, so results stay as they were), and `he` is
he_normal.

A weight with a zero-sized dimension is refused (a LayerError, which a serial labels with
the layer), not divided by zero.
"""
import math
import numbers

import jax.numpy as jnp

from . import _random
from ._validate import as_float
from .errors import LayerError

__all__ = ["gaussian", "lecun_normal", "glorot_normal", "glorot_uniform", "he_normal", "xavier",
           "lecun", "he", "zeros", "ones", "fan_in", "fan_out"]


def _check_shape(shape, name):
    if not all(int(d) > 0 for d in shape):
        raise LayerError(f"{name}: cannot initialize a weight of shape {tuple(shape)}: every "
                         f"dimension must be at least 1")


def fan_in(shape) -> int:
    """The product of every axis but the last (the only axis of a rank-1 shape)."""
    return int(math.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def fan_out(shape) -> int:
    """The last axis: a dense layer's outputs, a conv's output channels."""
    return int(shape[-1])


def gaussian(std: float):
    """N(0, std²) weights, whatever the layer's size."""
    scale = as_float(std, "std", "gaussian", low=0.0)

    def init(key, shape, dtype=jnp.float32):
        _check_shape(shape, init.__name__)
        return _random.normal(key, shape, dtype, scale)

    init.__name__ = f"gaussian({std})"
    return init


def _variance_scaled(name: str, variance, doc: str, uniform: bool = False):
    """An initializer drawing with variance(shape): normal, or uniform on ±√(3 variance)."""

    def init(key, shape, dtype=jnp.float32):
        _check_shape(shape, name)
        if uniform:
            limit = math.sqrt(3.0 * variance(shape))
            return _random.uniform(key, shape, dtype, -limit, limit)
        return _random.normal(key, shape, dtype, math.sqrt(variance(shape)))

    init.__name__, init.__doc__ = name, doc
    return init


lecun_normal = _variance_scaled("lecun_normal", lambda s: 1.0 / fan_in(s),
                                "N(0, 1/fan_in) weights (LeCun et al. 1998).")
he_normal = _variance_scaled("he_normal", lambda s: 2.0 / fan_in(s),
                             "N(0, 2/fan_in) weights, for ReLU nets (He et al. 2015).")
glorot_normal = _variance_scaled("glorot_normal", lambda s: 2.0 / (fan_in(s) + fan_out(s)),
                                 "N(0, 2/(fan_in + fan_out)) weights (Glorot & Bengio 2010).")
glorot_uniform = _variance_scaled(
    "glorot_uniform", lambda s: 2.0 / (fan_in(s) + fan_out(s)),
    "U(−a, a) weights, a = √(6/(fan_in + fan_out)) (Glorot & Bengio 2010).", uniform=True)

# The notes' names: their "Xavier" is N(0, 1/fan_in), i.e. LeCun normal (not Glorot).
xavier = lecun_normal
lecun = lecun_normal
he = he_normal


def zeros(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def _resolve(init, layer: str, what: str):
    """Accept an initializer function, or a number meaning gaussian(number)."""
    if isinstance(init, numbers.Real) and not isinstance(init, bool):
        return gaussian(init)
    if not callable(init):
        raise LayerError(f"{layer}: {what} must be an initializer (key, shape, dtype) -> array "
                         f"or a number (Gaussian std), got {init!r}")
    return init
