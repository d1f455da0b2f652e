"""The manual reverse pass, and models whose jax.grad runs on the hand formulas."""
import jax

from .core import Layer

__all__ = ["backprop", "with_manual_grads", "jitted"]


def backprop(model: Layer, params, state, x, dy, *, train=False, key=None):
    """Gradients by the hand-derived formulas: `model.forward`, then `model.backward`.

    Returns (dparams, dx) for the upstream gradient dy = ∂L/∂y. A model whose `backward`
    was replaced (`model._replace(backward=...)`) is run as replaced.
    """
    _, _, cache = model.forward(params, state, x, train=train, key=key)
    return model.backward(params, cache, dy)


def with_manual_grads(model: Layer) -> Layer:
    """The same model, but `jax.grad` (and jax.vjp) of its forward/apply uses the
    hand-derived `backward`, through `jax.custom_vjp`, so any jit-compiled training step can
    run on the formulas. State and cache outputs carry no gradient."""

    def forward(params, state, x, *, train=False, key=None):
        @jax.custom_vjp
        def run(params, x):
            return model.forward(params, state, x, train=train, key=key)

        def run_fwd(params, x):
            out = model.forward(params, state, x, train=train, key=key)
            return out, (params, out[2])

        def run_bwd(residuals, cotangents):
            params, cache = residuals
            return model.backward(params, cache, cotangents[0])

        run.defvjp(run_fwd, run_bwd)
        return run(params, x)

    return model._replace(forward=forward)


def jitted(model: Layer) -> Layer:
    """The same model with `forward` and `backward` jit-compiled: the formulas are unchanged,
    but eager calls (a gradient check's) become a few compiled programs instead of hundreds
    of one-op ones."""
    return model._replace(forward=jax.jit(model.forward, static_argnames=("train",)),
                          backward=jax.jit(model.backward))
