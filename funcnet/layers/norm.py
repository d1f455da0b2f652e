"""Batch normalization (Ioffe & Szegedy 2015) over every axis but the last (features, or
channels of NHWC conv maps)."""
import jax.numpy as jnp

from .._validate import as_float, check, float_dtype, nonempty_shape
from ..core import Layer
from ..ops import narrow, normalize_backward, widen

__all__ = ["batch_norm"]


def batch_norm(momentum=0.9, eps=1e-5) -> Layer:
    """params {"gamma": 1, "beta": 0}, state {"mean": 0, "var": 1}, each of shape (features,).

    Training: x̂ = (x − μ_B) / √(σ²_B + ε) with the batch mean and biased variance, y = γ x̂ + β,
    and running = momentum · running + (1 − momentum) · batch. Evaluation: the running
    statistics stand in for the batch's. The statistics are two-pass (the mean, then the
    mean square about it: E[x²] − E[x]² cancels catastrophically when |μ| ≫ σ), in float32
    for bfloat16 / float16 input; the cache keeps x with μ and 1/σ (float32 then), and the
    backward recomputes x̂ from them.

    Backward, with dx̂ = δ ⊙ γ and means over the m examples (every axis but the last):

        dβ = Σ δ,   dγ = Σ δ ⊙ x̂
        training:   dx = (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)) / √(σ²_B + ε)
        evaluation: dx = dx̂ / √(σ²_run + ε)

    Returns the Layer. Raises a LayerError for a momentum outside [0, 1] or a negative eps (at
    construction), and for an input without a batch axis or with a different feature count
    (at `init` or in `forward`).
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
        wide = widen(x)
        if train:
            mean, var = wide.mean(axes), wide.var(axes)  # jnp.var: two-pass
            new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mean,
                         "var": momentum * state["var"] + (1 - momentum) * var}
            new_state = narrow(new_state, {k: jnp.result_type(state[k], x) for k in new_state})
        else:
            (mean, var), new_state = widen(state["mean"], state["var"]), state
        inv_std = 1.0 / jnp.sqrt(var + eps)
        x_hat = (wide - mean) * inv_std
        # y in the dtype the narrow arithmetic would have given
        stats = jnp.result_type(x) if train else jnp.result_type(x, state["mean"], state["var"])
        y = narrow(params["gamma"] * x_hat + params["beta"],
                   jnp.result_type(stats, params["gamma"], params["beta"]))
        cache = {"x": x, "mean": mean, "inv_std": inv_std}
        if train:
            cache["batch"] = jnp.ones((), x.dtype)  # marks the training-mode formula
        return y, new_state, cache

    def backward(params, cache, dy):
        """dβ = Σ δ,  dγ = Σ δ ⊙ x̂,  and with dx̂ = δ ⊙ γ over the m examples (every axis
        but the last):
          training:   dx = (1/√(σ²_B+ε)) (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))
                      (the full formula through μ_B and σ²_B: ops.normalize_backward)
          evaluation: dx = dx̂ / √(σ²_run + ε)   (the statistics are constants).
        bfloat16 / float16 arrays are computed in float32 and cast back."""
        out = jnp.result_type(dy, params["gamma"], cache["x"])
        inv_std, gamma, wide = cache["inv_std"], widen(params["gamma"]), widen(dy)
        x_hat = (widen(cache["x"]) - cache["mean"]) * inv_std  # the forward's x̂, recomputed
        axes = tuple(range(dy.ndim - 1))
        dparams = narrow({"gamma": jnp.sum(wide * x_hat, axes), "beta": jnp.sum(wide, axes)},
                         params)
        dx_hat = wide * gamma
        if "batch" not in cache:
            return dparams, narrow(dx_hat * inv_std, out)
        return dparams, narrow(normalize_backward(dx_hat, x_hat, inv_std, axes), out)

    return Layer(init, forward, backward, "batch_norm", output_shape)
