"""Fully-connected (affine) layer: y = x W + b, with x of shape (batch, features)."""

from .. import _random
from .._validate import as_int, check, float_dtype, nonempty_shape
from ..core import Layer
from ..initializers import _resolve, lecun_normal, zeros
from ..ops import matmul, total

__all__ = ["dense"]


def dense(out: int, w_init=lecun_normal, b_init=zeros) -> Layer:
    """Affine layer y = x W + b, with params {"w": (fan_in, out), "b": (out,)}.

    `w_init` is an initializer or a number (the std of Gaussian weights, cs231n's
    weight_scale); lecun_normal, N(0, 1/fan_in), by default (the notes' "Xavier"). Biases
    start at zero.

    Backward (the notes' δ rule in row form):

        dW = xᵀ δ,   db = Σ_batch δ,   dx = δ Wᵀ

    Returns the Layer. Raises a LayerError when `out` is not a positive int or an initializer
    is not one (at construction), and for an input that is not (batch, features) — the message
    says to add `flatten` — or whose feature count differs from w's (at `init` or in `forward`).
    """
    out = as_int(out, "out", "dense")
    w_init, b_init = _resolve(w_init, "dense", "w_init"), _resolve(b_init, "dense", "b_init")

    def output_shape(shape):
        hint = "; add flatten before dense" if len(shape) > 2 else ""
        check(len(shape) == 2, f"dense: expects rank-2 input (batch, features), got shape {shape}{hint}")
        return (shape[0], out)

    def init(key, input_shape, dtype=None):
        input_shape = nonempty_shape(input_shape, "dense")
        output_shape(input_shape)
        kw, kb = _random.split(key)
        dtype = float_dtype(dtype)
        return {"w": w_init(kw, (input_shape[1], out), dtype), "b": b_init(kb, (out,), dtype)}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        fan_in = params["w"].shape[0]
        check(x.shape[1] == fan_in, f"dense: expects {fan_in} input features (w is "
              f"{tuple(params['w'].shape)}), got input of shape {tuple(x.shape)}")
        return x @ params["w"] + params["b"], state, {"x": x}

    def backward(params, cache, dy):
        """Row form of the notes' δ rule, for z = x W + b:
        dW = xᵀ δ,  db = Σ_batch δ,  dx = δ Wᵀ
        (the notes' column form dW = δ aᵀ is the transpose of this). bfloat16 / float16
        sums accumulate in float32 (ops.matmul, ops.total)."""
        x = cache["x"]
        return {"w": matmul(x.T, dy), "b": total(dy, 0)}, matmul(dy, params["w"].T)

    return Layer(init, forward, backward, "dense", output_shape)
