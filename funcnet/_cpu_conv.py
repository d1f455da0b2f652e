"""The same correlations as XLA's convolution, arranged so XLA:CPU runs them faster.

XLA:CPU's convolution is one im2col-style matrix product, efficient when the operand's
channels and the output's channels are both wide. Two shapes of a small CNN are not:

- one input channel (a grayscale image's first layer): `rows_as_channels` stacks the
  kernel's kh row shifts of the input as kh channels, then runs a 1 x kw convolution;
- 2-6 channels in (LeNet's second layer), or out (its input gradient, dx): `space_to_depth`
  folds every 2x2 block of pixels into channels (4x as many), so the product is 4x wider on
  both sides, and runs a convolution over blocks.

Both are plain lax operations: autodiff, jvp, vmap and second derivatives go through them.
`cpu_form` picks one (or none) for a `correlate` call; `per_platform`, the only way
`ops.correlate` reaches them, runs it only in a program compiled for a CPU, so a GPU or
TPU keeps XLA's own convolution. Measurements, and the cases where they lose:
benchmarks/investigations/why-are-few-channel-convolutions-slow-on-xla-cpu.md
(`python -m benchmarks.conv_forms`).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from ._xla_env import ynn_fusions_off

__all__ = ["per_platform", "cpu_form", "rows_as_channels", "space_to_depth"]

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
NHWC_HWOI = ("NHWC", "HWOI", "NHWC")  # conv2d's dx: the kernel's in/out channels swapped
# Below ~1k input pixels (N·H·W) XLA's convolution takes microseconds: a rewrite would only
# add compile time (it doubled an eager call's).
MIN_PIXELS = 1024
MAX_FEW_CHANNELS = 6


def _pad(x, padding):
    """Zero-pad (or, negative, crop) an NHWC array's height and width."""
    return lax.pad(x, jnp.zeros((), x.dtype),
                   ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in padding) + ((0, 0, 0),))


def rows_as_channels(x, w, stride, padding):
    """y = x ⋆ w with the kernel's rows as channels: the kh row shifts of the padded x
    stacked as kh·c_in channels (channel i·c_in + c = row shift i, strided, channel c), then a
    1 x kw correlation with the (1, kw, kh·c_in, c_out) kernel. `cpu_form` uses it for one
    input channel only (with more it was slower: benchmarks/conv_forms.py)."""
    (sh, sw), (kh, kw, c, o) = stride, w.shape
    xp = _pad(x, padding)
    ho = (xp.shape[1] - kh) // sh + 1
    rows = jnp.concatenate([xp[:, i:i + (ho - 1) * sh + 1:sh] for i in range(kh)], axis=3)
    wr = jnp.transpose(w, (1, 0, 2, 3)).reshape(1, kw, kh * c, o)
    return lax.conv_general_dilated(rows, wr, (1, sw), ((0, 0), (0, 0)), dimension_numbers=NHWC_HWIO)


def _block_kernel(w):
    """The (kbh, kbw, 4·c_in, 4·c_out) kernel of the block correlation: entry
    [p, p', (q, q', c), (r, r', o)] = w[2p + q − r, 2p' + q' − r', c, o], zero outside w.
    Output pixel (2H + r, 2W + r') reads input pixel (2(H + p) + q, 2(W + p') + q')."""
    kh, kw, c, o = w.shape
    kbh, kbw = kh // 2 + 1, kw // 2 + 1  # blocks spanned by r + i, 0 <= r + i <= kh
    qr = np.arange(2)[:, None] - np.arange(2)[None, :]  # q − r
    i = 2 * np.arange(kbh)[:, None, None] + qr  # (kbh, q, r)
    j = 2 * np.arange(kbw)[:, None, None] + qr  # (kbw, q', r')
    i, j = np.broadcast_arrays(i[:, None, :, None, :, None], j[None, :, None, :, None, :])
    inside = (i >= 0) & (i < kh) & (j >= 0) & (j < kw)  # (kbh, kbw, q, q', r, r')
    g = w[np.clip(i, 0, kh - 1), np.clip(j, 0, kw - 1)]  # (kbh, kbw, q, q', r, r', c, o)
    g = jnp.where(inside[..., None, None], g, jnp.zeros((), w.dtype))
    return g.transpose(0, 1, 2, 3, 6, 4, 5, 7).reshape(kbh, kbw, 4 * c, 4 * o)


def space_to_depth(x, w, padding):
    """y = x ⋆ w (stride 1) over 2x2 blocks: the padded x as (N, H/2, W/2, 4·c_in) blocks,
    correlated with `_block_kernel(w)` into (N, Ho/2, Wo/2, 4·c_out) blocks, unfolded back
    to pixels (an odd output side is computed one pixel longer and cropped)."""
    xp = _pad(x, padding)
    n, hp, wp, c = xp.shape
    kh, kw, _, o = w.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    hb, wb = -(-ho // 2) + kh // 2, -(-wo // 2) + kw // 2  # input blocks the output reads
    xp = _pad(xp, ((0, 2 * hb - hp), (0, 2 * wb - wp)))
    blocks = xp.reshape(n, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hb, wb, 4 * c)
    y = lax.conv_general_dilated(blocks, _block_kernel(w), (1, 1), "VALID", dimension_numbers=NHWC_HWIO)
    hob, wob = y.shape[1:3]
    y = y.reshape(n, hob, wob, 2, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hob, 2 * wob, o)
    return y[:, :ho, :wo]


def per_platform(xla, x, w, stride, padding, lhs_dilation, rhs_dilation, dims):
    """y = xla(x, w), XLA's own convolution, in a program compiled for a GPU or TPU (or any
    platform but the CPU); in one compiled for a CPU, the faster arrangement of the same
    sums where one applies (`cpu_form`).

    The platform is the one the program is lowered for, chosen by `lax.platform_dependent`
    (both branches are traced; only the chosen one reaches the compiler), rather than
    `jax.default_backend()` read at trace time: a program jitted onto a GPU host's CPU
    device, or exported for another platform, gets its own platform's form. (Called eagerly,
    outside jit, the choice follows the default backend.)
    """
    form = cpu_form(x, w, stride, padding, lhs_dilation, rhs_dilation, dims)
    if form is None:
        return xla(x, w)
    return lax.platform_dependent(x, w, cpu=form, default=xla)


def cpu_form(x, w, stride, padding, lhs_dilation, rhs_dilation, dims):
    """The faster XLA:CPU arrangement of this `correlate` call, as a function (x, w) -> y
    taking the kernel as given in `dims`; None where XLA's convolution is kept. Any
    platform would run it as given: `per_platform` keeps it to programs compiled for a CPU."""
    if (isinstance(padding, str) or lhs_dilation != (1, 1) or rhs_dilation != (1, 1)
            or math.prod(x.shape[:3]) < MIN_PIXELS):
        return None
    kh, kw = w.shape[:2]
    if kh * kw == 1:
        return None
    if dims == NHWC_HWIO and x.shape[3] == 1:
        return lambda x, w: rows_as_channels(x, w, stride, padding)
    # Few channels on the kernel's third axis: the input's (HWIO: a forward convolution) or
    # the output's (HWOI: conv2d's dx). Measured faster only with YNNPACK's fusions off
    # (funcnet's flag); under XLA's defaults the results were mixed, so they keep XLA's.
    if (stride == (1, 1) and dims in (NHWC_HWIO, NHWC_HWOI)
            and 2 <= w.shape[2] <= MAX_FEW_CHANNELS and ynn_fusions_off()):
        if dims == NHWC_HWOI:
            return lambda x, w: space_to_depth(x, jnp.swapaxes(w, 2, 3), padding)
        return lambda x, w: space_to_depth(x, w, padding)
    return None
