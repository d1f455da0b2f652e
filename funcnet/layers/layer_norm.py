"""Layer normalization (Ba, Kiros & Hinton 2016): each example normalized over its last axis."""
import jax.numpy as jnp

from .._validate import as_float, check, float_dtype
from ..core import POINTWISE, Layer
from ..ops import normalize_backward

__all__ = ["layer_norm"]


def layer_norm(eps=1e-5) -> Layer:
    """params {"gamma": 1, "beta": 0} of shape (features,), no state.

    x̂ = (x − μ) / √(σ² + ε) with μ, σ² the mean and biased variance over the last axis (of
    each example and position), y = γ x̂ + β. The same in training and evaluation.
    """
    eps = as_float(eps, "eps", "layer_norm", low=0.0, low_open=True)

    def output_shape(shape):
        check(len(shape) >= 2, f"layer_norm expects input (batch, ..., features), got shape {shape}")
        return tuple(shape)

    def init(key, input_shape, dtype=None):
        output_shape(tuple(input_shape))
        f, dtype = input_shape[-1], float_dtype(dtype)
        return {"gamma": jnp.ones((f,), dtype), "beta": jnp.zeros((f,), dtype)}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        f = params["gamma"].shape[0]
        check(x.shape[-1] == f, f"layer_norm has {f} features, got input of shape {tuple(x.shape)}")
        mean = x.mean(-1, keepdims=True)
        inv_std = 1.0 / jnp.sqrt(x.var(-1, keepdims=True) + eps)
        x_hat = (x - mean) * inv_std
        return params["gamma"] * x_hat + params["beta"], state, {"x_hat": x_hat, "inv_std": inv_std}

    def backward(params, cache, dy):
        """dβ = Σ δ,  dγ = Σ δ ⊙ x̂  (over every axis but the last), and with dx̂ = δ ⊙ γ and
        the means over the D features of each row (the full formula through μ and σ²,
        ops.normalize_backward):
          dx = (1/√(σ² + ε)) (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))."""
        x_hat, inv_std = cache["x_hat"], cache["inv_std"]
        axes = tuple(range(dy.ndim - 1))
        dparams = {"gamma": jnp.sum(dy * x_hat, axes), "beta": jnp.sum(dy, axes)}
        return dparams, normalize_backward(dy * params["gamma"], x_hat, inv_std, -1)

    return Layer(init, forward, backward, "layer_norm", output_shape, decode=POINTWISE)
