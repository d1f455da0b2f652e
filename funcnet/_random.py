"""Random draws with the values of `jax.random`'s, drawn flat and reshaped.

Bit for bit the same arrays as jax.random.normal / uniform / bernoulli / randint with the
shape given (threefry numbers element i of the flattened array the same way either way),
but XLA:CPU compiles a draw of rank 2 or more several times slower than a flat one: about
2 s against 0.3 s for a (3, 3, 16, 16) draw here, once per call site in a jitted program
and once per shape eagerly. Every random draw in funcnet goes through these.
"""
import math

import jax
import jax.numpy as jnp

__all__ = ["normal", "uniform", "bernoulli", "randint"]


def _flat(shape):
    shape = tuple(int(d) for d in shape)
    return shape, (math.prod(shape),)


def normal(key, shape, dtype=jnp.float32):
    shape, flat = _flat(shape)
    return jax.random.normal(key, flat, dtype).reshape(shape)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
    shape, flat = _flat(shape)
    return jax.random.uniform(key, flat, dtype, minval, maxval).reshape(shape)


def bernoulli(key, p, shape):
    shape, flat = _flat(shape)
    return jax.random.bernoulli(key, p, flat).reshape(shape)


def randint(key, shape, minval, maxval, dtype=jnp.int32):
    shape, flat = _flat(shape)
    return jax.random.randint(key, flat, minval, maxval, dtype).reshape(shape)
