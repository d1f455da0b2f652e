"""flatten: (batch, ...) -> (batch, features), the notes' rasterization (光栅化)."""
import math

from .._validate import check, ints_token, token_ints
from ..core import Layer

__all__ = ["flatten"]


def _output_shape(shape):
    check(len(shape) >= 2, f"flatten: expects input with a batch axis, got shape {shape}")
    return (shape[0], math.prod(shape[1:]))


def _init(key, input_shape, dtype=None):
    _output_shape(tuple(input_shape))
    return {}, {}


def _forward(params, state, x, *, train=False, key=None):
    _output_shape(tuple(x.shape))
    # The cache keeps only the input's shape (but its batch), as a token.
    return x.reshape(x.shape[0], -1), state, {"like": ints_token(x.shape[1:])}


def _backward(params, cache, dy):
    """Rasterization moves values without changing them: δ is reshaped back to the
    feature maps' shape."""
    return {}, dy.reshape((dy.shape[0],) + token_ints(cache["like"]))


flatten = Layer(_init, _forward, _backward, "flatten", _output_shape)
"""(batch, ...) → (batch, features), the notes' rasterization; backward reshapes dy back to
the input's shape. A Layer value (no parameters); a LayerError at `init` for an input
without a batch axis (rank < 2). Put it before `dense`, which takes rank-2 input."""
