"""Element-wise activations and the softmax pair. Each is a Layer value, not a function."""
import jax
import jax.numpy as jnp

from ..core import Layer


def _no_params(key, input_shape, dtype=None):
    return {}, {}


def _same_shape(shape):
    return tuple(shape)


def _elementwise(name, f, grad_from_cache, cache_of, doc):
    """A parameter-free layer y = f(x) with dx = dy · f'(x), f' computed from the cache."""

    def forward(params, state, x, *, train=False, key=None):
        y = f(x)
        return y, state, cache_of(x, y)

    def backward(params, cache, dy):
        return {}, dy * grad_from_cache(cache)

    backward.__doc__ = doc
    return Layer(_no_params, forward, backward, name, _same_shape)


relu = _elementwise(
    "relu", lambda x: jnp.maximum(x, 0), lambda c: (c["x"] > 0).astype(c["x"].dtype),
    lambda x, y: {"x": x},
    "relu(x) = max(0, x);  dx = dy · [x > 0]  (the subgradient 0 is taken at x = 0).")

sigmoid = _elementwise(
    "sigmoid", jax.nn.sigmoid, lambda c: c["y"] * (1 - c["y"]), lambda x, y: {"y": y},
    "σ(x) = 1 / (1 + e⁻ˣ);  dx = dy · σ(x)(1 − σ(x)).  (σ is not tanh: tanh = 2σ(2x) − 1.)")

tanh = _elementwise(
    "tanh", jnp.tanh, lambda c: 1 - c["y"] ** 2, lambda x, y: {"y": y},
    "tanh(x);  dx = dy · (1 − tanh²(x)).")

sign = _elementwise(
    "sign", jnp.sign, lambda c: jnp.zeros_like(c["x"]), lambda x, y: {"x": x},
    "sign(x) ∈ {−1, 0, 1};  dx = 0: the derivative is zero almost everywhere (and undefined "
    "at 0), so nothing below a sign layer can be trained through it.")

identity = _elementwise(
    "identity", lambda x: x, lambda c: 1, lambda x, y: {}, "identity;  dx = dy.")


def _softmax_forward(params, state, x, *, train=False, key=None):
    y = jax.nn.softmax(x, axis=-1)
    return y, state, {"y": y}


def _softmax_backward(params, cache, dy):
    """s = softmax(z) over the last axis. Its Jacobian is diag(s) − s sᵀ (not s − s²,
    which is only the diagonal), so  dz = s ⊙ (dy − ⟨dy, s⟩)."""
    s = cache["y"]
    return {}, s * (dy - jnp.sum(dy * s, axis=-1, keepdims=True))


softmax = Layer(_no_params, _softmax_forward, _softmax_backward, "softmax", _same_shape)


def _log_softmax_forward(params, state, x, *, train=False, key=None):
    y = jax.nn.log_softmax(x, axis=-1)
    return y, state, {"s": jnp.exp(y)}


def _log_softmax_backward(params, cache, dy):
    """y = z − logΣ exp z; its Jacobian is I − 1 sᵀ, so  dz = dy − s · Σ dy."""
    return {}, dy - cache["s"] * jnp.sum(dy, axis=-1, keepdims=True)


log_softmax = Layer(_no_params, _log_softmax_forward, _log_softmax_backward, "log_softmax",
                    _same_shape)
