"""Element-wise activations and the softmax pair.

Options-free activations are Layer values (`relu`, `gelu`, ...); those with an option are
functions (`elu(alpha)`, `leaky_relu(negative_slope)`). Each element-wise activation is a
pair written side by side: `f(x) -> (y, cache)` and `f'(cache)`, the derivative, whose
docstring gives the formula; the layer's backward is dx = dy · f'(x).

bfloat16 / float16 backwards (and the softmax pair's forwards) compute in float32 and
round once, to the input's dtype (ops.widen / ops.narrow); float32 and float64 are
computed as they are.
"""
import math

import jax
import jax.numpy as jnp

from .._validate import as_float
from ..core import POINTWISE, Layer
from ..ops import narrow, widen

__all__ = ["relu", "sigmoid", "tanh", "sign", "identity", "gelu", "gelu_tanh", "softplus",
           "elu", "leaky_relu", "softmax", "log_softmax"]


def _no_params(key, input_shape, dtype=None):
    return {}, {}


def _same_shape(shape):
    return tuple(shape)


def _elementwise(name, f, derivative):
    """The parameter-free layer y = f(x), dx = dy · f'(x), from the pair
    f(x) -> (y, cache) and derivative(cache) -> f'(x)."""

    def forward(params, state, x, *, train=False, key=None):
        y, cache = f(x)
        return y, state, cache

    def backward(params, cache, dy):
        out = jnp.result_type(dy, *cache.values())
        wide = {k: widen(v) for k, v in cache.items()}
        return {}, narrow(widen(dy) * derivative(wide), out)

    backward.__doc__ = f"{f.__doc__}\n{derivative.__doc__}"
    return Layer(_no_params, forward, backward, name, _same_shape, decode=POINTWISE)


def _relu(x):
    """relu(x) = max(0, x)."""
    # jax.nn.relu, not jnp.maximum(x, 0): autodiff of maximum splits a tie (x = 0) into
    # halves, 0.5, where the formula below takes 0; jax.nn.relu's derivative is [x > 0] too,
    # and it is one select in a backward pass, where maximum's costs two selects and a divide.
    return jax.nn.relu(x), {"x": x}


def _relu_derivative(cache):
    """relu'(x) = [x > 0]  (the subgradient 0 is taken at x = 0)."""
    return (cache["x"] > 0).astype(cache["x"].dtype)


def _sigmoid(x):
    """σ(x) = 1 / (1 + e⁻ˣ)."""
    y = jax.nn.sigmoid(x)
    return y, {"y": y}


def _sigmoid_derivative(cache):
    """σ'(x) = σ(x)(1 − σ(x)).  (σ is not tanh: tanh = 2σ(2x) − 1.)"""
    return cache["y"] * (1 - cache["y"])


def _tanh(x):
    """tanh(x)."""
    y = jnp.tanh(x)
    return y, {"y": y}


def _tanh_derivative(cache):
    """tanh'(x) = 1 − tanh²(x)."""
    return 1 - cache["y"] ** 2


def _sign(x):
    """sign(x) ∈ {−1, 0, 1}."""
    return jnp.sign(x), {"x": x}


def _sign_derivative(cache):
    """sign'(x) = 0: zero almost everywhere (undefined at 0), so nothing below a sign layer
    can be trained through it."""
    return jnp.zeros_like(cache["x"])


def _identity(x):
    """identity(x) = x."""
    return x, {}


def _identity_derivative(cache):
    """identity'(x) = 1."""
    return 1


relu = _elementwise("relu", _relu, _relu_derivative)
"""relu(x) = max(0, x), element-wise; backward dx = dy · [x > 0] (the subgradient 0
at x = 0).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
sigmoid = _elementwise("sigmoid", _sigmoid, _sigmoid_derivative)
"""σ(x) = 1 / (1 + e⁻ˣ), element-wise; backward dx = dy · σ(x)(1 − σ(x)).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
tanh = _elementwise("tanh", _tanh, _tanh_derivative)
"""tanh(x), element-wise; backward dx = dy · (1 − tanh²(x)).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
sign = _elementwise("sign", _sign, _sign_derivative)
"""sign(x) ∈ {−1, 0, 1}, element-wise; backward dx = 0 (zero almost everywhere), so
nothing below it trains through it.
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
identity = _elementwise("identity", _identity, _identity_derivative)
"""identity(x) = x; backward dx = dy.
A Layer value: no options, no parameters, any input shape, output of the input's shape."""


def _gelu(x):
    """gelu(x) = x Φ(x) = ½ x (1 + erf(x / √2))  (exact; Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1 + jax.scipy.special.erf(x / math.sqrt(2))), {"x": x}


def _gelu_derivative(cache):
    """gelu'(x) = Φ(x) + x φ(x) = ½ (1 + erf(x / √2)) + x e^(−x²/2) / √(2π)."""
    x = cache["x"]
    return (0.5 * (1 + jax.scipy.special.erf(x / math.sqrt(2)))
            + x * jnp.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


_C = math.sqrt(2 / math.pi)


def _gelu_tanh(x):
    """gelu_tanh(x) = ½ x (1 + tanh u),  u = √(2/π) (x + 0.044715 x³)  (the tanh approximation)."""
    t = jnp.tanh(_C * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1 + t), {"x": x, "t": t}


def _gelu_tanh_derivative(cache):
    """gelu_tanh'(x) = ½ (1 + t) + ½ x (1 − t²) √(2/π) (1 + 3 · 0.044715 x²),  t = tanh u."""
    x, t = cache["x"], cache["t"]
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * 0.044715 * x * x)


def _softplus(x):
    """softplus(x) = log(1 + eˣ)  (computed as logaddexp(0, x): no overflow)."""
    return jnp.logaddexp(0, x), {"x": x}


def _softplus_derivative(cache):
    """softplus'(x) = eˣ / (1 + eˣ) = σ(x)."""
    return jax.nn.sigmoid(cache["x"])


gelu = _elementwise("gelu", _gelu, _gelu_derivative)
"""gelu(x) = x Φ(x) = ½ x (1 + erf(x / √2)) (exact; Hendrycks & Gimpel 2016); backward
dx = dy · (Φ(x) + x φ(x)).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
gelu_tanh = _elementwise("gelu_tanh", _gelu_tanh, _gelu_tanh_derivative)
"""gelu_tanh(x) = ½ x (1 + tanh u), u = √(2/π)(x + 0.044715 x³): GPT-2's tanh
approximation of gelu; backward
dx = dy · (½ (1 + t) + ½ x (1 − t²) √(2/π)(1 + 3 · 0.044715 x²)), t = tanh u.
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
softplus = _elementwise("softplus", _softplus, _softplus_derivative)
"""softplus(x) = log(1 + eˣ) (as logaddexp(0, x): no overflow), element-wise; backward
dx = dy · σ(x).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""


def elu(alpha=1.0) -> Layer:
    """elu(x) = x for x > 0, α (eˣ − 1) otherwise (Clevert et al. 2015); α > 0.

    Backward: dx = dy · (1 if x > 0 else α eˣ = y + α).

    Returns the Layer. Raises a LayerError for an alpha that is not a positive finite number.
    """
    as_float(alpha, "alpha", "elu")  # a finite number first, then its sign: two messages
    alpha = as_float(alpha, "alpha", "elu", low=0.0, low_open=True, words="> 0")

    def f(x):
        """elu(x) = x if x > 0 else α (eˣ − 1)."""
        y = jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0)))  # no overflow in the unused branch
        return y, {"x": x, "y": y}

    def derivative(cache):
        """elu'(x) = 1 if x > 0 else α eˣ = y + α  (α is taken at x = 0)."""
        return jnp.where(cache["x"] > 0, 1.0, cache["y"] + alpha).astype(cache["x"].dtype)

    return _elementwise("elu", f, derivative)


def leaky_relu(negative_slope=0.01) -> Layer:
    """leaky_relu(x) = x for x > 0, negative_slope · x otherwise. Any finite slope is
    allowed, a negative one too (then the layer is not monotonic).

    Backward: dx = dy · (1 if x > 0 else negative_slope).

    Returns the Layer. Raises a LayerError for a slope that is not a finite number.
    """
    slope = as_float(negative_slope, "negative_slope", "leaky_relu")

    def f(x):
        """leaky_relu(x) = x if x > 0 else a x."""
        return jnp.where(x > 0, x, slope * x), {"x": x}

    def derivative(cache):
        """leaky_relu'(x) = 1 if x > 0 else a  (a is taken at x = 0)."""
        return jnp.where(cache["x"] > 0, 1.0, slope).astype(cache["x"].dtype)

    return _elementwise("leaky_relu", f, derivative)


def _softmax_forward(params, state, x, *, train=False, key=None):
    y = narrow(jax.nn.softmax(widen(x), axis=-1), x.dtype)
    return y, state, {"y": y}


def _softmax_backward(params, cache, dy):
    """s = softmax(z) over the last axis. Its Jacobian is diag(s) − s sᵀ (not s − s²,
    which is only the diagonal), so  dz = s ⊙ (dy − ⟨dy, s⟩)."""
    out = jnp.result_type(dy, cache["y"])
    s, dy = widen(cache["y"], dy)
    return {}, narrow(s * (dy - jnp.sum(dy * s, axis=-1, keepdims=True)), out)


softmax = Layer(_no_params, _softmax_forward, _softmax_backward, "softmax", _same_shape,
                decode=POINTWISE)
"""s = softmax(z) over the last axis; backward dz = s ⊙ (dy − ⟨dy, s⟩), from the
Jacobian diag(s) − s sᵀ (not s − s², which is only its diagonal).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""


def _log_softmax_forward(params, state, x, *, train=False, key=None):
    y = jax.nn.log_softmax(widen(x), axis=-1)
    return narrow(y, x.dtype), state, {"s": narrow(jnp.exp(y), x.dtype)}


def _log_softmax_backward(params, cache, dy):
    """y = z − logΣ exp z; its Jacobian is I − 1 sᵀ, so  dz = dy − s · Σ dy."""
    out = jnp.result_type(dy, cache["s"])
    s, dy = widen(cache["s"], dy)
    return {}, narrow(dy - s * jnp.sum(dy, axis=-1, keepdims=True), out)


log_softmax = Layer(_no_params, _log_softmax_forward, _log_softmax_backward, "log_softmax",
                    _same_shape, decode=POINTWISE)
"""y = z − log Σ exp z over the last axis; backward dz = dy − s Σ dy, s = softmax(z).
A Layer value: no options, no parameters, any input shape, output of the input's shape."""
