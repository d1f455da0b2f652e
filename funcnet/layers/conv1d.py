"""1-D convolution (cross-correlation, like conv2d): NWC input, WIO kernel.

    y[n, t, o] = b[o] + Σ_{i, c} xp[n, t·s + i, c] · W[i, c, o]

It is conv2d on a height-1 image, (N, W, C) -> (N, 1, W, C) with the kernel (1, k, c_in, out),
so its forward and backward formulas are conv2d's along the one spatial axis.
"""
from .._validate import _is_int, as_int, check, padding_spec
from ..core import Layer, LayerError
from ..initializers import lecun_normal, zeros
from ..ops import out_size, pad_amounts
from .conv import conv2d

__all__ = ["conv1d"]


def _pads_1d(padding):
    """A 1-D padding spec as conv2d's: "VALID", "SAME", an int (NumPy ints too), or
    (left, right); the height, 1, is never padded."""
    if isinstance(padding, str):
        return padding
    if _is_int(padding):
        padding = (padding, padding)
    try:
        left, right = padding
    except (TypeError, ValueError):
        left = right = None
    return padding_spec(((0, 0), (left, right)), "conv1d")  # ints, not negative


def conv1d(out_channels: int, kernel_size: int, stride: int = 1, padding="VALID",
           w_init=lecun_normal, b_init=zeros) -> Layer:
    """Convolution over the middle axis of (batch, width, channels), params
    {"w": (kernel_size, c_in, out_channels), "b": (out_channels,)}. `padding`: "VALID",
    "SAME" (output ceil(width / stride)), an int, or (left, right). Weights start
    N(0, 1/fan_in) (lecun_normal, the notes' "Xavier"), biases at zero.

    Backward: conv2d's formulas on one axis, δ = dy dilated by the stride:

        dx = δ ⋆full rot180(W) (padding cropped),  dW = xp ⋆valid δ,  db = Σ_{n,t} δ

    Returns the Layer. Raises a LayerError for an invalid option (at construction), and for
    an input that is not (batch, width, channels), a kernel wider than the padded input, or a
    channel count that differs from w's (at `init` or in `forward`).
    """
    k = as_int(kernel_size, "kernel_size", "conv1d")
    s = as_int(stride, "stride", "conv1d")
    out_channels = as_int(out_channels, "out_channels", "conv1d")
    try:
        inner = conv2d(out_channels, (1, k), (1, s), _pads_1d(padding), w_init, b_init)
    except LayerError as e:  # conv2d's messages name conv2d: say conv1d, with the 1-D spec
        raise type(e)(f"conv1d: padding must be 'VALID', 'SAME', an int or (left, right), "
                      f"got {padding!r}") from None

    def output_shape(shape):
        check(len(shape) == 3, f"conv1d expects NWC input (batch, width, channels), got shape {shape}")
        left, right = pad_amounts(_pads_1d(padding), (1, shape[1]), (1, k), (1, s), "conv1d")[1]
        width = shape[1] + left + right
        check(width >= k, f"conv1d kernel {k} is larger than its input: width {width} after "
              f"padding {padding!r} (input shape {shape})")
        return (shape[0], out_size(width, k, s), out_channels)

    def init(key, input_shape, dtype=None):
        output_shape(tuple(input_shape))
        n, w, c = input_shape
        params, state = inner.init(key, (n, 1, w, c), dtype)
        return {"w": params["w"][0], "b": params["b"]}, state

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        c_in = params["w"].shape[1]
        check(x.shape[2] == c_in, f"conv1d expects {c_in} input channels (w is "
              f"{tuple(params['w'].shape)}), got input of shape {tuple(x.shape)}")
        y, state, cache = inner.forward({"w": params["w"][None], "b": params["b"]}, state,
                                        x[:, None], train=train, key=key)
        return y[:, 0], state, cache

    def backward(params, cache, dy):
        """conv2d's formulas on one axis, with δ = dy dilated by the stride:
          dx = δ ⋆full rot180(W) (padding cropped),  dW = xp ⋆valid δ,  db = Σ_{n,t} δ."""
        dparams, dx = inner.backward({"w": params["w"][None], "b": params["b"]}, cache, dy[:, None])
        return {"w": dparams["w"][0], "b": dparams["b"]}, dx[:, 0]

    return Layer(init, forward, backward, "conv1d", output_shape)
