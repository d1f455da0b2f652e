"""Batch normalization (Ioffe & Szegedy 2015) over every axis but the last (features, or
channels of NHWC conv maps)."""
import jax.numpy as jnp

from .._validate import as_float, check, float_dtype, nonempty_shape
from ..core import Layer
from ..ops import normalize_backward

__all__ = ["batch_norm"]


def batch_norm(momentum=0.9, eps=1e-5) -> Layer:
    """params {"gamma": 1, "beta": 0}, state {"mean": 0, "var": 1}, each of shape (features,).

    Training: x̂ = (x − μ_B) / √(σ²_B + ε) with the batch mean and biased variance, y = γ x̂ + β,
    and running = momentum · running + (1 − momentum) · batch. Evaluation: the running
    statistics stand in for the batch's.
    """
    # momentum in two steps, so the message says which went wrong: not a number >= 0, or
    # above 1.
    as_float(momentum, "momentum", "batch_norm", low=0.0)
    momentum = as_float(momentum, "momentum", "batch_norm", low=0.0, high=1.0)
    eps = as_float(eps, "eps", "batch_norm", low=0.0)

    def output_shape(shape):
        check(len(shape) >= 2, f"batch_norm: expects input (batch, ..., features), got shape {shape}")
        return tuple(shape)

    def init(key, input_shape, dtype=None):
        input_shape = nonempty_shape(input_shape, "batch_norm")
        output_shape(input_shape)
        f, dtype = input_shape[-1], float_dtype(dtype)
        params = {"gamma": jnp.ones((f,), dtype), "beta": jnp.zeros((f,), dtype)}
        return params, {"mean": jnp.zeros((f,), dtype), "var": jnp.ones((f,), dtype)}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        f = params["gamma"].shape[0]
        check(x.shape[-1] == f, f"batch_norm: has {f} features, got input of shape {tuple(x.shape)}")
        axes = tuple(range(x.ndim - 1))
        if train:
            mean, var = x.mean(axes), x.var(axes)
            new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                         "var": momentum * state["var"] + (1 - momentum) * var}
        else:
            mean, var, new_state = state["mean"], state["var"], state
        inv_std = 1.0 / jnp.sqrt(var + eps)
        x_hat = (x - mean) * inv_std
        cache = {"x_hat": x_hat, "inv_std": inv_std}
        if train:
            cache["batch"] = jnp.ones((), x.dtype)  # marks the training-mode formula
        return params["gamma"] * x_hat + params["beta"], new_state, cache

    def backward(params, cache, dy):
        """dβ = Σ δ,  dγ = Σ δ ⊙ x̂,  and with dx̂ = δ ⊙ γ over the m examples (every axis
        but the last):
          training:   dx = (1/√(σ²_B+ε)) (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))
                      (the full formula through μ_B and σ²_B: ops.normalize_backward)
          evaluation: dx = dx̂ / √(σ²_run + ε)   (the statistics are constants)."""
        x_hat, inv_std = cache["x_hat"], cache["inv_std"]
        axes = tuple(range(dy.ndim - 1))
        dparams = {"gamma": jnp.sum(dy * x_hat, axes), "beta": jnp.sum(dy, axes)}
        dx_hat = dy * params["gamma"]
        if "batch" not in cache:
            return dparams, dx_hat * inv_std
        return dparams, normalize_backward(dx_hat, x_hat, inv_std, axes)

    return Layer(init, forward, backward, "batch_norm", output_shape)
