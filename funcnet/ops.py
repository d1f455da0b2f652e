"""The textbook helpers the backward formulas are written with.

Images are NHWC and kernels HWIO (kh, kw, c_in, c_out); every function also takes a plain
2-D matrix (and a 2-D kernel), as in the notes, and then returns a 2-D matrix.

- correlate(x, w, mode): cross-correlation, what every framework calls "convolution".
- convolve(x, w, mode): true convolution = correlate(x, rot180(w)).
  "valid": output (H-kh+1, W-kw+1); "full": output (H+kh-1, W+kw-1) (zero padding kh-1).
- rot180(w): the kernel turned half a circle (flip of both spatial axes).
- dilate(x, s): s-1 zeros between neighbours, how a strided layer's δ is spread back.
- windows / scatter_windows: the cells of every pooling window, and their transpose.
- downsample(x, window, kind, edge) and upsample(dy, window): the notes' pooling pair,
  with both edge modes ("ignore" the ragged edge, or "pad" it with zeros).
- normalize_backward(dx_hat, x_hat, inv_std, axes): dx of x̂ = (x − μ)/σ through μ and σ,
  batch norm's and layer norm's shared step.
- is_narrow, widen / narrow, total, matmul, einsum: how every backward keeps float32
  accumulation under bfloat16 and float16 (below).
Everything is vectorized jnp and jit-able; loops run over window cells, never pixels.

Precision. Given bfloat16 or float16 arrays, a backward computes its sums (dW, db, dγ, dβ
over batch and time, normalization statistics, softmax row sums, recurrent carries) in
float32 and casts the result back to the input's dtype: one rounding at the end, where
sums kept in 8 or 11 bits lose a digit every few terms. Products of two narrow operands
(matmul, einsum, correlate) keep narrow operands and accumulate in float32
(`preferred_element_type`), as tensor cores do; elementwise work and reductions run on
widened copies. float32 and float64 arrays pass through untouched (no cast at all), so
their numbers are exactly what they were.
"""
from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _cpu_conv, _validate
from .errors import LayerError

__all__ = ["correlate", "convolve", "rot180", "dilate", "pad_amounts", "out_size", "windows",
           "scatter_windows", "downsample", "upsample", "normalize_backward", "is_narrow",
           "widen", "narrow", "total", "matmul", "einsum"]

_DIMS = ("NHWC", "HWIO", "NHWC")


def is_narrow(dtype) -> bool:
    """True for floating dtypes narrower than float32 (bfloat16, float16): those whose
    sums a backward accumulates in float32."""
    dtype = jnp.dtype(dtype)
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 4


def _widen1(a):
    if a is None or not is_narrow(jnp.result_type(a)):
        return a  # float32, float64, ints: the very same array, no cast
    return jnp.asarray(a).astype(jnp.float32)


def widen(*arrays):
    """Each bfloat16 / float16 array as float32; anything else (float32, float64, ints,
    None) as it is. One array in, one out; several in, a tuple out."""
    out = tuple(_widen1(a) for a in arrays)
    return out[0] if len(out) == 1 else out


def narrow(tree, like):
    """`tree` with each floating leaf cast back to `like` where that is bfloat16 / float16:
    `like` a dtype, or a tree of arrays matching `tree` leaf by leaf (gradients cast back
    to their parameters' dtypes). Where `like` is float32 or float64 nothing is cast, so a
    wide computation keeps exactly the dtypes it always had; None leaves stay None."""
    if isinstance(like, (str, type, np.dtype)):
        return jax.tree_util.tree_map(lambda a: _cast(a, jnp.dtype(like)), tree)
    return jax.tree_util.tree_map(lambda a, b: _cast(a, jnp.result_type(b)), tree, like)


def _cast(a, dtype):
    if a is None or not is_narrow(dtype) or not jnp.issubdtype(a.dtype, jnp.floating) \
            or a.dtype == dtype:
        return a
    return a.astype(dtype)


def total(a, axis=None):
    """Σ a over `axis`, accumulated in float32 for bfloat16 / float16 a and returned in a's
    dtype; exactly a.sum(axis) otherwise."""
    return narrow(widen(a).sum(axis), a.dtype)


def _accumulator(*operands):
    """float32 when the operands' common dtype is narrow, else None (XLA's default)."""
    return jnp.float32 if is_narrow(jnp.result_type(*operands)) else None


def matmul(a, b):
    """a @ b, accumulated in float32 when the operands are bfloat16 / float16 (the result
    cast back to their dtype); exactly a @ b otherwise."""
    acc = _accumulator(a, b)
    if acc is None:
        return a @ b
    return jnp.matmul(a, b, preferred_element_type=acc).astype(jnp.result_type(a, b))


def einsum(spec, a, b):
    """jnp.einsum(spec, a, b), accumulated in float32 when the operands are bfloat16 /
    float16 (the result cast back to their dtype); exactly jnp.einsum otherwise."""
    acc = _accumulator(a, b)
    if acc is None:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=acc).astype(jnp.result_type(a, b))


def _as_4d(x, w=None):
    """Lift a 2-D matrix (and 2-D kernel) to NHWC / HWIO; remember to drop it again."""
    if x.ndim == 2:
        x = x[None, :, :, None]
        w = None if w is None else w[:, :, None, None]
        return x, w, lambda y: y[0, :, :, 0]
    if x.ndim != 4:
        raise LayerError(f"ops: expected a 2-D matrix or an NHWC batch, got shape {x.shape}")
    return x, w, lambda y: y


def _pair(v):
    """An int (NumPy ints too) as (v, v); a pair as a tuple."""
    try:
        n = operator.index(v)
    except TypeError:
        return tuple(v)
    return (n, n)


def rot180(w):
    """Rotate a kernel by 180 degrees: flip both spatial axes (the first two)."""
    return w[::-1, ::-1]


def dilate(x, stride):
    """Insert stride-1 zeros between neighbouring pixels of an NHWC batch (or a matrix)."""
    sh, sw = _pair(stride)
    if (sh, sw) == (1, 1):
        return x
    x4, _, back = _as_4d(x)
    n, h, w, c = x4.shape
    out = jnp.zeros((n, (h - 1) * sh + 1, (w - 1) * sw + 1, c), x4.dtype)
    return back(out.at[:, ::sh, ::sw, :].set(x4))


def pad_amounts(padding, in_hw, window, stride, layer="layer"):
    """((top, bottom), (left, right)) for "VALID", "SAME", an int or explicit pairs.

    "SAME" pads so that the output is ceil(in / stride), the extra row at the bottom (as
    TensorFlow and XLA do).
    """
    padding = _validate.padding_spec(padding, layer)
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        out = []
        for n, k, s in zip(in_hw, window, stride):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    return padding


def out_size(n, k, s):
    """Number of windows of size k and stride s over n cells, ragged edge ignored."""
    return (n - k) // s + 1


def correlate(x, w, mode="valid", *, stride=1, padding=None, rhs_dilation=1, lhs_dilation=1,
              dims=_DIMS):
    """Cross-correlation y[h, w] = Σ_ij x[h·s + i, w·s + j] · w[i, j] (summed over c_in).

    `mode` "valid" or "full" sets the padding ("full" = kh-1, kw-1 on every side) unless
    explicit `padding` pairs are given (negative padding crops). `lhs_dilation` dilates x
    (s−1 zeros between entries, as `dilate`), `rhs_dilation` the kernel. `dims` names the
    axes of x, w and y (lax's dimension numbers), so the backward formulas can transpose
    their operands (swap a kernel's in/out channels, let the batch play the channels)
    without copying them. bfloat16 / float16 operands are summed in float32 (XLA's
    convolution; `_cpu_conv`'s CPU forms are XLA:CPU's, which widens them itself).
    """
    x4, w4, back = _as_4d(x, w)
    kh, kw = w4.shape[:2]
    if padding is None:
        if mode == "valid":
            padding = ((0, 0), (0, 0))
        elif mode == "full":
            padding = ((kh - 1, kh - 1), (kw - 1, kw - 1))
        else:
            raise LayerError(f"ops.correlate: mode must be 'valid' or 'full', got {mode!r}")
    stride, lhs_dilation, rhs_dilation = _pair(stride), _pair(lhs_dilation), _pair(rhs_dilation)
    if not isinstance(padding, str):  # lax's own "SAME" / "VALID" pass through to XLA
        padding = tuple(_pair(p) for p in padding)
    w4 = w4.astype(x4.dtype)
    acc = _accumulator(x4)  # float32 sums for bfloat16 / float16 operands

    def xla(x4, w4):
        y = lax.conv_general_dilated(x4, w4, stride, padding, lhs_dilation=lhs_dilation,
                                     rhs_dilation=rhs_dilation, dimension_numbers=dims,
                                     preferred_element_type=acc)
        return y if acc is None else y.astype(x4.dtype)

    # On a CPU, the same sums arranged as XLA:CPU runs them faster; elsewhere xla (_cpu_conv)
    return back(_cpu_conv.per_platform(xla, x4, w4, stride, padding, lhs_dilation, rhs_dilation,
                                       dims))


def convolve(x, w, mode="valid"):
    """True 2-D convolution: correlate with the kernel rotated by 180 degrees."""
    return correlate(x, rot180(w), mode)


def windows(x, window, stride, pads=((0, 0), (0, 0)), pad_value=0.0):
    """Every pooling window's cells: (N, H, W, C) -> (N, Ho, Wo, C, ph·pw), row-major cells.

    Built from ph·pw strided slices of the padded input; the ragged edge is ignored.
    """
    (ph, pw), (sh, sw) = window, stride
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
    ho, wo = out_size(xp.shape[1], ph, sh), out_size(xp.shape[2], pw, sw)
    if (ph, pw) == (sh, sw):  # non-overlapping: a reshape, no gather (same cells, same order)
        n, c = xp.shape[0], xp.shape[3]
        blocks = xp[:, :ho * ph, :wo * pw, :].reshape(n, ho, ph, wo, pw, c)
        return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, ph * pw)
    cells = [xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
             for i in range(ph) for j in range(pw)]
    return jnp.stack(cells, axis=-1)


def scatter_windows(cells, window, stride, in_hw, pads=((0, 0), (0, 0))):
    """The transpose of `windows`: add each window cell's value back where it came from,
    then crop the padding. (N, Ho, Wo, C, ph·pw) -> (N, H, W, C)."""
    (ph, pw), (sh, sw) = window, stride
    n, ho, wo, c, _ = cells.shape
    hp, wp = in_hw[0] + sum(pads[0]), in_hw[1] + sum(pads[1])
    if (ph, pw) == (sh, sw):  # non-overlapping: every cell lands in its own place
        blocks = cells.reshape(n, ho, wo, c, ph, pw).transpose(0, 1, 4, 2, 5, 3)
        out = jnp.pad(blocks.reshape(n, ho * ph, wo * pw, c),
                      ((0, 0), (0, hp - ho * ph), (0, wp - wo * pw), (0, 0)))
        return out[:, pads[0][0]:pads[0][0] + in_hw[0], pads[1][0]:pads[1][0] + in_hw[1], :]
    wide = widen(cells)  # overlapping windows add up: in float32 for narrow cells
    out = jnp.zeros((n, hp, wp, c), wide.dtype)
    for k in range(ph * pw):
        i, j = divmod(k, pw)
        out = out.at[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :].add(wide[..., k])
    out = narrow(out, cells.dtype)
    return out[:, pads[0][0]:pads[0][0] + in_hw[0], pads[1][0]:pads[1][0] + in_hw[1], :]


def _edge_pads(in_hw, window, edge):
    if edge == "ignore":
        return ((0, 0), (0, 0))
    if edge == "pad":
        return tuple((0, -n % p) for n, p in zip(in_hw, window))
    raise LayerError(f"ops: edge must be 'ignore' or 'pad', got {edge!r}")


def downsample(x, window=(2, 2), kind="max", edge="ignore"):
    """Non-overlapping pooling: the max or mean of each window.

    edge "ignore" drops a ragged last row/column; "pad" fills the edge with zeros up to a
    multiple of the window and keeps it (the notes' two edge modes).
    """
    x4, _, back = _as_4d(x)
    window = _pair(window)
    cells = windows(x4, window, window, _edge_pads(x4.shape[1:3], window, edge))
    if kind == "max":
        return back(cells.max(-1))
    if kind == "mean":
        return back(cells.mean(-1))
    raise LayerError(f"ops.downsample: kind must be 'max' or 'mean', got {kind!r}")


def upsample(dy, window=(2, 2), shape=None):
    """Copy every value of dy to each cell of its window (the Kronecker product with a
    block of ones), then crop or zero-pad to `shape` (H, W) if given."""
    d4, _, back = _as_4d(dy)
    ph, pw = _pair(window)
    up = jnp.repeat(jnp.repeat(d4, ph, axis=1), pw, axis=2)
    if shape is not None:
        h, w = shape
        up = up[:, :h, :w, :]
        up = jnp.pad(up, ((0, 0), (0, h - up.shape[1]), (0, w - up.shape[2]), (0, 0)))
    return back(up)


def normalize_backward(dx_hat, x_hat, inv_std, axes):
    """dx for x̂ = (x − μ) / σ, σ = √(var + ε), with μ and the biased variance var taken
    over `axes` (batch norm: every axis but the last; layer norm: the last), given
    dx̂ = ∂L/∂x̂ and inv_std = 1/σ (broadcastable to x):

        dx = (1/σ) (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))      (means over `axes`)

    the full formula through μ and σ² (Ioffe & Szegedy 2015, section 3): the middle term
    is the path through μ, the last the path through σ² (∂σ²/∂x = 2(x − μ)/m).
    bfloat16 / float16 arguments are computed in float32, dx returned in dx̂'s dtype."""
    def mean(a):
        return jnp.mean(a, axis=axes, keepdims=True)

    dtype = dx_hat.dtype
    dx_hat, x_hat, inv_std = widen(dx_hat, x_hat, inv_std)
    return narrow(inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)), dtype)
