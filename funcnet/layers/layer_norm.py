"""Layer normalization (Ba, Kiros & Hinton 2016): each example normalized over its last axis."""
import jax.numpy as jnp

from .._validate import as_float, check, float_dtype
from ..core import POINTWISE, Layer
from ..ops import narrow, normalize_backward, widen

__all__ = ["layer_norm"]


def layer_norm(eps=1e-5) -> Layer:
    """params {"gamma": 1, "beta": 0} of shape (features,), no state.

    x̂ = (x − μ) / √(σ² + ε) with μ, σ² the mean and biased variance over the last axis (of
    each example and position), y = γ x̂ + β. The same in training and evaluation.
    The statistics are two-pass (the mean, then the mean square about it: E[x²] − E[x]²
    cancels catastrophically when |μ| ≫ σ), in float32 for bfloat16 / float16 input; the
    cache keeps x with μ and 1/σ (float32 then), and the backward recomputes x̂ from them.

    Backward, with dx̂ = δ ⊙ γ and means over the D features of each row:

        dβ = Σ δ,   dγ = Σ δ ⊙ x̂,   dx = (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)) / √(σ² + ε)

    Returns the Layer. Raises a LayerError for an eps that is not positive (at construction),
    and for an input without a batch axis or with a different feature count (at `init` or in
    `forward`).
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
        out = jnp.result_type(x, params["gamma"], params["beta"])
        wide = widen(x)
        mean = wide.mean(-1, keepdims=True)
        inv_std = 1.0 / jnp.sqrt(wide.var(-1, keepdims=True) + eps)  # jnp.var: two-pass
        x_hat = (wide - mean) * inv_std
        y = params["gamma"] * x_hat + params["beta"]
        return narrow(y, out), state, {"x": x, "mean": mean, "inv_std": inv_std}

    def backward(params, cache, dy):
        """dβ = Σ δ,  dγ = Σ δ ⊙ x̂  (over every axis but the last), and with dx̂ = δ ⊙ γ and
        the means over the D features of each row (the full formula through μ and σ²,
        ops.normalize_backward):
          dx = (1/√(σ² + ε)) (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)).
        bfloat16 / float16 arrays are computed in float32 and cast back."""
        out = jnp.result_type(dy, params["gamma"])
        inv_std, gamma, wide = cache["inv_std"], widen(params["gamma"]), widen(dy)
        x_hat = (widen(cache["x"]) - cache["mean"]) * inv_std  # the forward's x̂, recomputed
        axes = tuple(range(dy.ndim - 1))
        dparams = {"gamma": jnp.sum(wide * x_hat, axes), "beta": jnp.sum(wide, axes)}
        dx = normalize_backward(wide * gamma, x_hat, inv_std, -1)
        return narrow(dparams, params), narrow(dx, out)

    return Layer(init, forward, backward, "layer_norm", output_shape, decode=POINTWISE)
