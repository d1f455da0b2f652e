"""Weight initializers: `init(key, shape, dtype) -> array`.

fan_in is the product of every axis but the last, which fits both layouts funcnet uses:
dense (fan_in, out) and conv2d HWIO (kh, kw, c_in, c_out) -> kh * kw * c_in.

- gaussian(std): N(0, std²), the fixed "weight scale" of cs231n's nets.
- xavier / lecun: N(0, 1/fan_in) (Ng's Xavier form; Glorot & Bengio 2010, LeCun 1998).
- he: N(0, 2/fan_in), for ReLU nets (He et al. 2015).
- zeros, ones: constants.
"""
import math

import jax
import jax.numpy as jnp

from .core import FuncnetError


def _normal(key, shape, dtype):
    """jax.random.normal(key, shape), drawn flat and reshaped: the same values bit for bit,
    but XLA:CPU compiles a rank-4 draw (a conv kernel) several times slower than a flat one."""
    shape = tuple(shape)
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def fan_in(shape) -> int:
    return int(math.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def gaussian(std: float):
    """N(0, std²) weights, whatever the layer's size."""
    if not (isinstance(std, (int, float)) and std >= 0 and math.isfinite(std)):
        raise FuncnetError(f"gaussian: std must be a finite number >= 0, got {std!r}")

    def init(key, shape, dtype=jnp.float32):
        return std * _normal(key, shape, dtype)

    init.__name__ = f"gaussian({std})"
    return init


def _scaled(gain: float, name: str):
    def init(key, shape, dtype=jnp.float32):
        return math.sqrt(gain / fan_in(shape)) * _normal(key, shape, dtype)

    init.__name__ = name
    init.__doc__ = f"N(0, {gain}/fan_in) weights."
    return init


xavier = _scaled(1.0, "xavier")
lecun = xavier
he = _scaled(2.0, "he")


def zeros(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def resolve(init, layer: str, what: str):
    """Accept an initializer function, or a number meaning gaussian(number)."""
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return gaussian(float(init))
    if not callable(init):
        raise FuncnetError(f"{layer}: {what} must be an initializer (key, shape, dtype) -> array "
                           f"or a number (Gaussian std), got {init!r}")
    return init
