"""Transposed 2-D convolution ("deconvolution"): the adjoint of `conv2d`, NHWC / HWIO.

Every input pixel scatters a copy of the kernel, scaled by its value, into the output at
stride s, and the padding p is cropped off the result:

    y_full[n, h·s + i, w·s + j, o] += x[n, h, w, c] · W[i, j, c, o],    y = y_full cropped by p

so the output is (H − 1)·s + kh − (p_top + p_bottom) high. This is exactly
`torch.nn.ConvTranspose2d(c_in, out_channels, k, stride=s, padding=p)` with torch's weight
= W.transpose(2, 3, 0, 1). "VALID" is p = 0; "SAME" gives an output of H·s (the adjoint of a
"SAME" conv2d of stride s on an input H·s high: it crops max(k − s, 0), the extra row at the
bottom, and pads zeros at the bottom when k < s).
"""
from .._validate import as_int, check, positive_pair
from ..core import Layer
from ..initializers import _resolve, lecun_normal, zeros
from ..ops import correlate, pad_amounts, rot180, total
from .conv import kernel_params

__all__ = ["conv_transpose2d"]


def _crops(padding, kernel, strides):
    """((top, bottom), (left, right)) cropped off y_full (negative: zeros added)."""
    if isinstance(padding, str) and padding.upper() == "SAME":
        out = []
        for k, s in zip(kernel, strides):
            top = max(k - s, 0) // 2
            out.append((top, k - s - top))
        return tuple(out)
    return pad_amounts(padding, (1, 1), kernel, strides, "conv_transpose2d")


def conv_transpose2d(out_channels: int, kernel_size, stride=1, padding="VALID",
                     w_init=lecun_normal, b_init=zeros) -> Layer:
    """Transposed convolution with params {"w": (kh, kw, c_in, out_channels), "b": (out_channels,)}.

    `padding`: "VALID" (p = 0, output (H − 1)·s + k), "SAME" (output H·s), an int p (cropped
    from both sides, as torch's `padding`) or ((top, bottom), (left, right)). Weights start
    N(0, 1/fan_in) (lecun_normal, the notes' "Xavier"), biases at zero.

    Backward, with δ = dy padded back by the crop:

        dx = the stride-s valid cross-correlation of δ with W (what this layer is the adjoint of)
        dW[i, j, c, o] = Σ_{n,h,w} x[n, h, w, c] · δ[n, h·s+i, w·s+j, o]
        db = Σ_{n,h,w} dy

    Returns the Layer. Raises a LayerError for an invalid option (at construction), and for
    an input that is not NHWC, a padding that crops the whole output, or a channel count that
    differs from w's (at `init` or in `forward`).
    """
    out_channels = as_int(out_channels, "out_channels", "conv_transpose2d")
    kernel = positive_pair(kernel_size, "kernel_size", "conv_transpose2d")
    strides = positive_pair(stride, "stride", "conv_transpose2d")
    crops = _crops(padding, kernel, strides)  # also validates the spec
    w_init = _resolve(w_init, "conv_transpose2d", "w_init")
    b_init = _resolve(b_init, "conv_transpose2d", "b_init")

    def output_shape(shape):
        check(len(shape) == 4, "conv_transpose2d expects NHWC input (batch, height, width, "
              f"channels), got shape {shape}")
        out = [(n - 1) * s + k - sum(c) for n, k, s, c in zip(shape[1:3], kernel, strides, crops)]
        check(min(out) >= 1, f"conv_transpose2d: padding {padding!r} crops the whole output "
              f"(input shape {shape}, kernel {kernel}, stride {strides})")
        return (shape[0], out[0], out[1], out_channels)

    def init(key, input_shape, dtype=None):
        return kernel_params(key, input_shape, dtype, "conv_transpose2d", output_shape, kernel,
                             out_channels, w_init, b_init)

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        c_in = params["w"].shape[2]
        check(x.shape[3] == c_in, f"conv_transpose2d expects {c_in} input channels (w is "
              f"{tuple(params['w'].shape)}), got input of shape {tuple(x.shape)}")
        # The scatter, written as a gather: x dilated by s, padded by k − 1 − crop, correlated
        # with the kernel turned by 180 degrees.
        pads = tuple((k - 1 - a, k - 1 - b) for k, (a, b) in zip(kernel, crops))
        y = correlate(x, rot180(params["w"]), padding=pads, lhs_dilation=strides)
        return y + params["b"], state, {"x": x}

    def backward(params, cache, dy):
        """With δ = dy padded back by the crop (δ = y_full's gradient):
          dx = conv2d(δ, W) of stride s, valid: dx[h, w, c] = Σ_{i,j,o} δ[h·s+i, w·s+j, o] W[i, j, c, o]
               (the plain strided cross-correlation this layer is the adjoint of, W's
               in/out channels swapped)
          dW[i, j, c, o] = Σ_{n,h,w} x[n, h, w, c] · δ[n, h·s+i, w·s+j, o]
               (δ correlated with x dilated by s, the batch contracted)
          db = Σ_{n,h,w} dy.
        bfloat16 / float16 sums accumulate in float32 (ops.correlate, ops.total)."""
        x, w = cache["x"], params["w"]
        dx = correlate(dy, w, stride=strides, padding=crops, dims=("NHWC", "HWOI", "NHWC"))
        # Contract over the batch: the batch plays the channel, dy's channels the batch.
        dw = correlate(dy, x, padding=crops, rhs_dilation=strides, dims=("CHWN", "IHWO", "HWNC"))
        return {"w": dw.transpose(0, 1, 3, 2), "b": total(dy, (0, 1, 2))}, dx

    return Layer(init, forward, backward, "conv_transpose2d", output_shape)
