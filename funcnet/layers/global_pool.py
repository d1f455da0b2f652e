"""Global average pooling: each channel's mean over the whole image, NHWC -> (N, C)."""
import jax.numpy as jnp

from .._validate import check, ints_token, token_ints
from ..core import Layer

__all__ = ["global_avg_pool"]


def _no_params(key, input_shape, dtype=None):
    output_shape(tuple(input_shape))
    return {}, {}


def output_shape(shape):
    check(len(shape) == 4, f"global_avg_pool expects NHWC input (batch, height, width, channels), "
          f"got shape {shape}")
    return (shape[0], shape[3])


def _forward(params, state, x, *, train=False, key=None):
    output_shape(tuple(x.shape))
    # The cache keeps only H and W, as a token.
    return x.mean((1, 2)), state, {"hw": ints_token(x.shape[1:3])}


def _backward(params, cache, dy):
    """y[n, c] = (1 / HW) Σ_{h,w} x[n, h, w, c], so  dx[n, h, w, c] = dy[n, c] / (H·W)
    at every position (mean pooling's upsample, with one window the size of the image)."""
    h, w = token_ints(cache["hw"])
    return {}, jnp.broadcast_to(dy[:, None, None, :] / (h * w), (dy.shape[0], h, w, dy.shape[1]))


global_avg_pool = Layer(_no_params, _forward, _backward, "global_avg_pool", output_shape)
"""Global average pooling, NHWC (N, H, W, C) → (N, C): y[n, c] = (1/HW) Σ_{h,w} x[n, h, w, c];
backward dx = dy / (H·W) at every position. A Layer value (no parameters); a LayerError at
`init` or call for an input that is not rank 4."""
