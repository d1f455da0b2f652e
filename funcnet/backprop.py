"""The manual reverse pass, and models whose jax.grad runs on the hand formulas."""
import jax
import jax.numpy as jnp
import numpy as np

from .core import Layer

__all__ = ["backprop", "with_manual_grads", "jitted"]


def backprop(model: Layer, params, state, x, dy, *, train=False, key=None):
    """Gradients by the hand-derived formulas: `model.forward`, then `model.backward`.

    Returns (dparams, dx) for the upstream gradient dy = ∂L/∂y. A model whose `backward`
    was replaced (`model._replace(backward=...)`) is run as replaced.

    Raises what `model.forward` and `model.backward` raise: a LayerError naming the layer for
    an input it cannot take.
    """
    _, _, cache = model.forward(params, state, x, train=train, key=key)
    return model.backward(params, cache, dy)


def with_manual_grads(model: Layer) -> Layer:
    """The same model, but `jax.grad` (and jax.vjp) of its forward/apply uses the
    hand-derived `backward`, through `jax.custom_vjp`, so any jit-compiled training step can
    run on the formulas. State and cache outputs carry no gradient; the state and the key
    are arguments of the custom rule (zero cotangents), not closed over, so the model also
    differentiates from outside a `jax.jit` (`jax.grad(jax.jit(loss))`).

    Returns the wrapped Layer (same params, state and outputs, same name); its errors are the
    model's own, raised when it runs.
    """

    def forward(params, state, x, *, train=False, key=None):
        @jax.custom_vjp
        def run(params, x, state, key):
            return model.forward(params, state, x, train=train, key=key)

        def run_fwd(params, x, state, key):
            out = model.forward(params, state, x, train=train, key=key)
            return out, (params, out[2], state, key)

        def run_bwd(residuals, cotangents):
            params, cache, state, key = residuals
            dparams, dx = model.backward(params, cache, cotangents[0])
            return dparams, dx, _zero_cotangent(state), _zero_cotangent(key)

        run.defvjp(run_fwd, run_bwd)
        return run(params, x, state, key)

    return model._replace(forward=forward)


def _zero_cotangent(tree):
    """Zeros shaped like `tree`: float0 for integer and key arrays, as JAX requires."""
    def zero(a):
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return jnp.zeros_like(a)
        return np.zeros(np.shape(a), jax.dtypes.float0)
    return jax.tree_util.tree_map(zero, tree)


def jitted(model: Layer) -> Layer:
    """The same model with `forward` and `backward` jit-compiled: the formulas are unchanged,
    but eager calls (a gradient check's) become a few compiled programs instead of hundreds
    of one-op ones."""
    return model._replace(forward=jax.jit(model.forward, static_argnames=("train",)),
                          backward=jax.jit(model.backward))
