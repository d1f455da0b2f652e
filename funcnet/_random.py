"""Random draws with the values of `jax.random`'s, drawn flat and reshaped.

Bit for bit the same arrays as jax.random.normal / uniform / bernoulli / randint with the
shape given (threefry numbers element i of the flattened array the same way either way),
but XLA:CPU compiles a draw of rank 2 or more several times slower than a flat one: about
2 s against 0.3 s for a (3, 3, 16, 16) draw here, once per call site in a jitted program
and once per shape eagerly. Every random draw in funcnet (layers, initializers, the gradient
checks) goes through these.

Eager draws (a concrete key: `model.init(key, shape)` called outside jit) go further: they
draw a power-of-two number of elements and keep the first n. With JAX's (default)
partitionable threefry, element i depends only on the key and i, so the values are still
the same bit for bit; but one compiled draw now serves every size up to its bucket, where
each new shape used to cost a compile (~0.25 s on XLA:CPU, the largest part of an eager
init). Inside jit nothing changes: the program draws exactly n.
"""
import math

import jax
import jax.numpy as jnp

__all__ = ["normal", "uniform", "bernoulli", "randint"]


_SMALLEST, _LARGEST = 64, 1 << 22  # buckets; above 4M elements the compile is not the cost


def _bucket(key, n: int) -> int:
    """How many elements to draw for n: n itself inside jit, under another PRNG (whose
    element i may depend on the count), or when large; else n rounded up to a power of two."""
    if (isinstance(key, jax.core.Tracer) or n > _LARGEST
            or not jax.config.jax_threefry_partitionable
            or str(jax.random.key_impl(key)) != "threefry2x32"):
        return n
    return max(_SMALLEST, 1 << (n - 1).bit_length())


def _draw(draw, key, shape, scale=None):
    """draw(key, (count,)) for the flat count (times `scale`), cut to prod(shape), reshaped."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    m = _bucket(key, n)
    out = draw(key, (m,))
    if scale is not None:  # before the cut: one compiled multiply per bucket, same values
        out = scale * out
    if m != n:
        out = jax.lax.slice(out, (0,), (n,))
    return out.reshape(shape)


def normal(key, shape, dtype=jnp.float32, scale=None):
    """jax.random.normal's values (times `scale`, a Python float, when given)."""
    return _draw(lambda k, s: jax.random.normal(k, s, dtype), key, shape, scale)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
    return _draw(lambda k, s: jax.random.uniform(k, s, dtype, minval, maxval), key, shape)


def bernoulli(key, p, shape):
    return _draw(lambda k, s: jax.random.bernoulli(k, p, s), key, shape)


def randint(key, shape, minval, maxval, dtype=jnp.int32):
    return _draw(lambda k, s: jax.random.randint(k, s, minval, maxval, dtype), key, shape)
