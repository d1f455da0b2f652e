"""What several test files share: fixed random numbers and the padding spec written out
independently of funcnet (the tests' own reference, not the library's)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

# Standard normal numbers from one fixed jax.random draw: slicing this pool avoids
# compiling the random generator again for every shape hypothesis draws.
POOL = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (1 << 14,)), np.float64)


def normal(seed, shape):
    size = math.prod(shape)
    start = seed % (POOL.size - size)
    return POOL[start:start + size].reshape(shape)


def pool_init(seed, scale=1.0):
    """An initializer that fills any shape from the pool (the layer still picks the shape):
    where the values do not matter, this spares compiling the random generator per shape."""
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(scale * normal(seed, shape), dtype)


def resolve_pads(padding, in_hw, window, stride):
    """The padding spec as ((top, bottom), (left, right)), written out independently.
    "SAME": output ceil(n / s), the odd extra row/column at the bottom/right (TensorFlow)."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        out = []
        for n, k, s in zip(in_hw, window, stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) for p in padding)


# hypothesis strategies for a window / kernel / stride given as an int or a pair
pair = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))
int_or_pair = lambda lo, hi: st.one_of(st.integers(lo, hi), pair(lo, hi))
as_pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
