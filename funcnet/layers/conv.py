"""2-D convolution layer (cross-correlation, as in every framework): NHWC input, HWIO kernel.

    y[n, h, w, o] = b[o] + Σ_{i, j, c} xp[n, h·s + i, w·s + j, c] · W[i, j, c, o]

where xp is the input zero-padded by `padding`. The notes write the same layer as a true
convolution with the kernel rotated by 180 degrees; the two are the same function.
"""

from .. import _random
from .._validate import as_int, check, float_dtype, nonempty_shape, padding_spec, positive_pair
from ..core import Layer
from ..initializers import _resolve, lecun_normal, zeros
from ..ops import correlate, out_size, pad_amounts, rot180, total

__all__ = ["conv2d"]


def kernel_params(key, input_shape, dtype, name, output_shape, kernel, out_channels, w_init,
                  b_init):
    """The (params, state) of an NHWC convolution-like layer (conv2d, conv_transpose2d):
    {"w": (kh, kw, c_in, c_out), "b": (c_out,)}, after checking input_shape with the layer's
    own output_shape."""
    input_shape = nonempty_shape(input_shape, name)
    output_shape(input_shape)
    kw, kb = _random.split(key)
    dtype = float_dtype(dtype)
    w = w_init(kw, tuple(kernel) + (input_shape[3], out_channels), dtype)
    return {"w": w, "b": b_init(kb, (out_channels,), dtype)}, {}


def conv2d(out_channels: int, kernel_size, stride=1, padding="VALID", w_init=lecun_normal,
           b_init=zeros) -> Layer:
    """Convolution with params {"w": (kh, kw, c_in, out_channels), "b": (out_channels,)}.

    `padding`: "VALID", "SAME" (output ceil(in / stride)), an int, or
    ((top, bottom), (left, right)). Weights start N(0, 1/fan_in), fan_in = kh·kw·c_in
    (lecun_normal, the notes' "Xavier"), biases at zero.

    Backward, with δ = dy dilated back to stride 1:

        dx = δ ⋆full rot180(W)   (padding cropped)
        dW = xp ⋆valid δ         (the padded input correlated with δ)
        db = Σ_{n,h,w} δ

    Returns the Layer. Raises a LayerError for an invalid `out_channels`, `kernel_size`,
    `stride` or `padding` (at construction), and for an input that is not NHWC, a kernel larger
    than the padded input, or a channel count that differs from w's (at `init` or in
    `forward`).
    """
    out_channels = as_int(out_channels, "out_channels", "conv2d")
    kernel = positive_pair(kernel_size, "kernel_size", "conv2d")
    strides = positive_pair(stride, "stride", "conv2d")
    padding_spec(padding, "conv2d")
    w_init, b_init = _resolve(w_init, "conv2d", "w_init"), _resolve(b_init, "conv2d", "b_init")

    def pads_for(shape):
        return pad_amounts(padding, shape[1:3], kernel, strides, "conv2d")

    def output_shape(shape):
        check(len(shape) == 4, "conv2d: expects NHWC input (batch, height, width, channels), "
              f"got shape {shape}")
        pads = pads_for(shape)
        hp, wp = shape[1] + sum(pads[0]), shape[2] + sum(pads[1])
        check(hp >= kernel[0] and wp >= kernel[1],
              f"conv2d: kernel {kernel} is larger than its input: height x width {(hp, wp)} after "
              f"padding {padding!r} (input shape {shape})")
        return (shape[0], out_size(hp, kernel[0], strides[0]), out_size(wp, kernel[1], strides[1]),
                out_channels)

    def init(key, input_shape, dtype=None):
        return kernel_params(key, input_shape, dtype, "conv2d", output_shape, kernel,
                             out_channels, w_init, b_init)

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        c_in = params["w"].shape[2]
        check(x.shape[3] == c_in, f"conv2d: expects {c_in} input channels (w is "
              f"{tuple(params['w'].shape)}), got input of shape {tuple(x.shape)}")
        y = correlate(x, params["w"], stride=strides, padding=pads_for(x.shape))
        return y + params["b"], state, {"x": x}

    def backward(params, cache, dy):
        """With δ = dy spread back to stride 1 by dilation (s−1 zeros between entries):
          dx = δ ⋆full rot180(W)   (W's in/out channels swapped; = the notes' full
                                    convolution of δ with the kernel), padding cropped off
          dW = xp ⋆valid δ         (the padded input correlated with δ, summed over batch)
          db = Σ_{n,h,w} δ
        Rows/columns that no window reached (ragged edge) get zero gradient. bfloat16 /
        float16 sums accumulate in float32 (ops.correlate, ops.total)."""
        x, w = cache["x"], params["w"]
        (pt, pb), (pl, pr) = pads = pads_for(x.shape)
        h, wd = x.shape[1:3]
        kh, kw = kernel
        # Dilation, the channel swap and the crop of the padding are expressed in the
        # convolution's own arguments (lhs_dilation, dimension numbers, negative padding),
        # so XLA reads the operands in place instead of copying them first.
        rh = h + pt + pb - ((dy.shape[1] - 1) * strides[0] + kh)  # ragged edge
        rw = wd + pl + pr - ((dy.shape[2] - 1) * strides[1] + kw)
        full_cropped = ((kh - 1 - pt, kh - 1 + rh - pb), (kw - 1 - pl, kw - 1 + rw - pr))
        dx = correlate(dy, rot180(w), padding=full_cropped, lhs_dilation=strides,
                       dims=("NHWC", "HWOI", "NHWC"))
        # Contract over the batch: the batch plays the channel, the channels the batch.
        dw = correlate(x, dy, padding=pads, rhs_dilation=strides,
                       dims=("CHWN", "IHWO", "HWNC"))[:kh, :kw]
        return {"w": dw, "b": total(dy, (0, 1, 2))}, dx

    return Layer(init, forward, backward, "conv2d", output_shape)
