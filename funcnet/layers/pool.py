"""Pooling (the notes' downsampling): max, mean, Gaussian-weighted and learned.

Every pool reads the ph·pw cells of each window (`ops.windows`) and its backward sends
δ back to them (`ops.scatter_windows`, the transpose), so overlapping windows, strides and
padding are all handled by the same two helpers. The stride defaults to the window
(non-overlapping, as in the notes, cs231n and PyTorch). Padding "VALID" ignores the
ragged edge; "SAME" pads it and keeps it (the notes' two edge modes). Max pooling pads
with −∞ (a pad never wins); mean pooling pads with 0 and always divides by the window area.
Sums over cells (and overlapping windows' contributions, in ops.scatter_windows) of
bfloat16 / float16 arrays accumulate in float32.
"""
import jax.numpy as jnp
import numpy as np

from .._validate import (as_float, check, float_dtype, ints_token, nonempty_shape, padding_spec,
                         positive_pair, token_ints)
from ..core import Layer
from ..initializers import _resolve
from ..ops import matmul, narrow, out_size, pad_amounts, scatter_windows, widen, windows

__all__ = ["max_pool", "avg_pool", "gaussian_pool", "learned_pool", "gaussian_kernel"]


def _pool(name, window, stride, padding, cells_forward, cells_backward, init_params=None, *,
          pad_value=0.0):
    """Build a pool layer from what it does with the cells of each window.

    cells_forward(params, cells) -> (y, extra cache) and
    cells_backward(params, cache, dy) -> (dparams, d_cells) work on (N, Ho, Wo, C, ph·pw);
    padding cells hold `pad_value`.
    """
    window = positive_pair(window, "window", name)
    strides = window if stride is None else positive_pair(stride, "stride", name)
    padding_spec(padding, name)

    def pads_for(shape):
        return pad_amounts(padding, shape[1:3], window, strides, name)

    def output_shape(shape):
        check(len(shape) == 4, f"{name}: expects NHWC input (batch, height, width, channels), "
              f"got shape {shape}")
        pads = pads_for(shape)
        # A window made of padding alone would pool nothing (−∞ for max): pads stay under it.
        check(all(p < k for side, k in zip(pads, window) for p in side),
              f"{name}: padding {padding!r} must be smaller than the window {window} on every side")
        hp, wp = shape[1] + sum(pads[0]), shape[2] + sum(pads[1])
        check(hp >= window[0] and wp >= window[1],
              f"{name}: window {window} is larger than its input: height x width {(hp, wp)} after "
              f"padding {padding!r} (input shape {shape})")
        return (shape[0], out_size(hp, window[0], strides[0]), out_size(wp, window[1], strides[1]),
                shape[3])

    def init(key, input_shape, dtype=None):
        input_shape = nonempty_shape(input_shape, name)
        output_shape(input_shape)
        params = {} if init_params is None else init_params(key, input_shape, float_dtype(dtype))
        return params, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        if "w" in params:
            check(params["w"].shape[-1] == x.shape[3], f"{name}: has weights for "
                  f"{params['w'].shape[-1]} channels, got input of shape {tuple(x.shape)}")
        cells = windows(x, window, strides, pads_for(x.shape), pad_value)
        y, cache = cells_forward(params, cells)
        return y, state, dict(cache, like=ints_token(x.shape[1:]))  # the shape, but its batch

    def backward(params, cache, dy):
        dparams, d_cells = cells_backward(params, cache, dy)
        shape = (dy.shape[0],) + token_ints(cache["like"])
        return dparams, scatter_windows(d_cells, window, strides, shape[1:3], pads_for(shape))

    return Layer(init, forward, backward, name, output_shape)


def max_pool(window, stride=None, padding="VALID") -> Layer:
    """y = max of each window.

    Backward: δ goes to the arg-max cell of its window only; the other cells get 0
    (copying δ to every cell, as one of the notes says, is wrong). Overlapping windows add
    up.

    Returns the Layer. `stride` defaults to `window` (non-overlapping windows). Raises a
    LayerError for a window or stride that is not a positive int or pair, or an invalid
    padding (at construction), and for an input that is not NHWC or smaller than one window
    (at `init` or in `forward`).
    """
    win = positive_pair(window, "window", "max_pool")

    def cells_forward(params, cells):
        idx = jnp.argmax(cells, axis=-1)  # first maximum in row-major order: ties are deterministic
        # The arg-max cell picked by a select, not a gather: autodiff of a select is a select
        # (the same first-arg-max rule as the backward), where a gather's is a slow scatter.
        hit = idx[..., None] == jnp.arange(cells.shape[-1])
        return jnp.sum(jnp.where(hit, cells, 0), axis=-1), {"idx": idx}

    def cells_backward(params, cache, dy):
        """δ goes to the arg-max cell of its window only; the other cells get 0. (Copying δ
        to all cells, as one of the notes says, is wrong: `check_gradients` shows it.)
        Overlapping windows add up their contributions."""
        hit = cache["idx"][..., None] == jnp.arange(win[0] * win[1])
        return {}, jnp.where(hit, dy[..., None], 0)

    # Padding with −∞: a pad never wins a window.
    return _pool("max_pool", window, stride, padding, cells_forward, cells_backward,
                 pad_value=-jnp.inf)


def avg_pool(window, stride=None, padding="VALID") -> Layer:
    """y = mean of each window (zero padding counts: the divisor is always the area).

    Backward: every cell of a window receives δ / (ph·pw) (upsampling).

    Returns the Layer. `stride` defaults to `window` (non-overlapping windows). Raises a
    LayerError for a window or stride that is not a positive int or pair, or an invalid
    padding (at construction), and for an input that is not NHWC or smaller than one window
    (at `init` or in `forward`).
    """
    win = positive_pair(window, "window", "avg_pool")
    area = win[0] * win[1]

    def cells_forward(params, cells):
        return cells.mean(-1), {}

    def cells_backward(params, cache, dy):
        """Upsample: each cell of a window receives δ / (ph·pw)."""
        return {}, jnp.broadcast_to(dy[..., None] / area, dy.shape + (area,))

    return _pool("avg_pool", window, stride, padding, cells_forward, cells_backward)


def gaussian_kernel(window, sigma):
    """Weights ∝ exp(−r² / 2σ²) around the window's centre, normalized to sum to 1."""
    # NumPy float64, so a float64 model (gradient checks) gets float64 weights, not
    # float32 ones computed at construction time and cast up.
    ph, pw = window
    i = np.arange(ph) - (ph - 1) / 2
    j = np.arange(pw) - (pw - 1) / 2
    g = np.exp(-(i[:, None] ** 2 + j[None, :] ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def gaussian_pool(window, sigma=1.0, stride=None, padding="VALID") -> Layer:
    """The notes' Gaussian pooling: a fixed Gaussian-weighted average of each window
    (Gaussian blur, then downsampling).

    Backward: each cell (i, j) of a window receives δ · g[i, j], g the normalized weights
    ∝ exp(−r² / 2σ²). A `sigma` that is not a positive number is a LayerError too.

    Returns the Layer. `stride` defaults to `window` (non-overlapping windows). Raises a
    LayerError for a window or stride that is not a positive int or pair, or an invalid
    padding (at construction), and for an input that is not NHWC or smaller than one window
    (at `init` or in `forward`).
    """
    sigma = as_float(sigma, "sigma", "gaussian_pool", low=0.0, low_open=True,
                     words="a positive number")
    win = positive_pair(window, "window", "gaussian_pool")
    g = gaussian_kernel(win, sigma).reshape(-1)

    def cells_forward(params, cells):
        return matmul(cells, g.astype(cells.dtype)), {}

    def cells_backward(params, cache, dy):
        """Each cell (i, j) of a window receives δ · g[i, j]."""
        return {}, dy[..., None] * g.astype(dy.dtype)

    return _pool("gaussian_pool", window, stride, padding, cells_forward, cells_backward)


def learned_pool(window, stride=None, padding="VALID", w_init=None) -> Layer:
    """The notes' trainable pooling: y = Σ_cells w[i, j, c] · x_cell, one weight per window
    cell and channel, params {"w": (ph, pw, C)}; starts as mean pooling (w = 1/area).

    Backward: dw[i, j, c] = Σ_{n,h,w} δ · x_cell(i, j), and each cell receives δ · w[i, j, c].

    Returns the Layer. `stride` defaults to `window` (non-overlapping windows). Raises a
    LayerError for a window or stride that is not a positive int or pair, or an invalid
    padding (at construction), and for an input that is not NHWC or smaller than one window
    (at `init` or in `forward`).
    """
    win = positive_pair(window, "window", "learned_pool")
    area = win[0] * win[1]
    w_init = (lambda k, s, d: jnp.full(s, 1.0 / area, d)) if w_init is None \
        else _resolve(w_init, "learned_pool", "w_init")

    def init_params(key, input_shape, dtype):
        return {"w": w_init(key, win + (input_shape[3],), dtype)}

    def cells_forward(params, cells):
        w = params["w"].reshape(area, -1).T  # (C, ph·pw)
        y = jnp.sum(widen(cells) * widen(w), axis=-1)
        return narrow(y, jnp.result_type(cells, w)), {"cells": cells}

    def cells_backward(params, cache, dy):
        """dw[i, j, c] = Σ_{n,h,w} δ · x_cell(i, j);  each cell receives δ · w[i, j, c]."""
        w = params["w"].reshape(area, -1).T
        dw = jnp.sum(widen(cache["cells"]) * widen(dy)[..., None], axis=(0, 1, 2))  # (C, ph·pw)
        dw = narrow(dw.T.reshape(params["w"].shape), jnp.result_type(cache["cells"], dy))
        return {"w": dw}, dy[..., None] * w

    return _pool("learned_pool", window, stride, padding, cells_forward, cells_backward,
                 init_params)
