"""Losses, each with its hand-derived gradient as `loss.grad(pred, target)`.

Every loss returns a scalar. Cross-entropies average over the examples; mse, mae and rmse
average over all elements (as torch.nn.functional.mse_loss does).

bfloat16 / float16 predictions are computed in float32 (the softmax, its row sums, the
means) and the loss and gradient cast back to the predictions' dtype, one rounding each;
float32 and float64 are computed as they are.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ._validate import dtype_of
from .core import FuncnetError
from .ops import narrow, widen

__all__ = ["softmax_cross_entropy", "binary_cross_entropy", "mse", "mae", "rmse", "l2", "accuracy",
           "check_labels"]


def _with_grad(grad, task=None):
    """Attach the hand-derived gradient to a loss as `loss.grad`, and the task it serves
    ("classification", "binary", "regression"; it picks fit's metrics) as `loss.task`."""

    def attach(loss):
        loss.grad = grad
        if task is not None:
            loss.task = task
        return loss

    return attach


def _concrete(x):
    """x as a NumPy array when its values are known (not traced), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_labels(logits_shape, labels, where="softmax_cross_entropy"):
    """Integer labels of shape logits.shape[:-1] (one per position: (batch,) for logits
    (batch, classes), (batch, time) for (batch, time, classes)) in [0, classes); the values
    are checked when known (not traced). The one check of class labels: the losses call
    it, and so do `fit` and `evaluate` on a model's output shape before compiling."""
    labels_shape, logits_shape = tuple(jnp.shape(labels)), tuple(logits_shape)
    if len(logits_shape) < 2:
        raise FuncnetError(f"{where}: expected logits (batch, ..., classes) with a classes axis, "
                           f"got logits {logits_shape} and labels {labels_shape}")
    if labels_shape != logits_shape[:-1]:
        rest = logits_shape[1:-1]
        shape = f"(batch,) + {rest}" if rest else "(batch,)"
        raise FuncnetError(f"{where}: labels must have shape {shape}, the logits' shape without "
                           f"the classes; got logits {logits_shape} and labels {labels_shape}")
    dtype = dtype_of(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise FuncnetError(f"{where}: labels must be integer class indices, got dtype {dtype}")
    values, classes = _concrete(labels), logits_shape[-1]
    if values is not None and values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= classes:
            bad = lo if lo < 0 else hi
            raise FuncnetError(f"{where}: label {bad} is out of range for {classes} classes "
                               f"(labels must lie in [0, {classes - 1}])")


def _softmax_ce_grad(logits, labels):
    """∂L/∂z = (softmax(z) − onehot(y)) / N, N the number of positions (examples, or
    examples × time steps for sequence logits)."""
    n = math.prod(logits.shape[:-1])
    wide = widen(logits)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=wide.dtype)
    return narrow((jax.nn.softmax(wide, axis=-1) - onehot) / n, logits.dtype)


@_with_grad(_softmax_ce_grad, "classification")
def softmax_cross_entropy(logits, labels):
    """L = −(1/N) Σ_n log softmax(z_n)[y_n], with integer labels y, over every position n
    (logits (..., classes), labels (...))."""
    check_labels(jnp.shape(logits), labels)
    logp = jax.nn.log_softmax(widen(logits), axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[..., None], axis=-1))
    return narrow(loss, jnp.result_type(logits))


def _check_same_shape(pred, target, where):
    if jnp.shape(pred) != jnp.shape(target):
        raise FuncnetError(f"{where}: prediction and target must have the same shape, got "
                           f"{tuple(jnp.shape(pred))} and {tuple(jnp.shape(target))}")


def _bce_grad(logits, labels):
    """∂L/∂z = (σ(z) − y) / N, with N the number of examples (the leading axis)."""
    out = jnp.result_type(logits, labels)
    logits, labels = widen(logits, labels)
    return narrow((jax.nn.sigmoid(logits) - labels) / logits.shape[0], out)


@_with_grad(_bce_grad, "binary")
def binary_cross_entropy(logits, labels):
    """L = (1/N) Σ_n Σ [softplus(z) − y z], the cross-entropy of σ(z) against y ∈ [0, 1],
    written to stay finite for |z| in the thousands (log σ(z) = −softplus(−z))."""
    _check_same_shape(logits, labels, "binary_cross_entropy")
    out = jnp.result_type(logits, labels)
    logits, labels = widen(logits, labels)
    per = jnp.logaddexp(0.0, logits) - labels * logits
    return narrow(jnp.sum(per) / logits.shape[0], out)


def _mse_grad(pred, target):
    """∂L/∂ŷ = 2 (ŷ − y) / n over the n elements."""
    out = jnp.result_type(pred, target)
    pred, target = widen(pred, target)
    return narrow(2.0 * (pred - target) / pred.size, out)


@_with_grad(_mse_grad, "regression")
def mse(pred, target):
    """Mean squared error (1/n) Σ (ŷ − y)² over all n elements."""
    _check_same_shape(pred, target, "mse")
    out = jnp.result_type(pred, target)
    pred, target = widen(pred, target)
    return narrow(jnp.mean((pred - target) ** 2), out)


def _mae_grad(pred, target):
    """∂L/∂ŷ = sign(ŷ − y) / n (the subgradient 0 at ŷ = y)."""
    out = jnp.result_type(pred, target)
    pred, target = widen(pred, target)
    return narrow(jnp.sign(pred - target) / pred.size, out)


@_with_grad(_mae_grad, "regression")
def mae(pred, target):
    """Mean absolute error (1/n) Σ |ŷ − y|."""
    _check_same_shape(pred, target, "mae")
    out = jnp.result_type(pred, target)
    pred, target = widen(pred, target)
    return narrow(jnp.mean(jnp.abs(pred - target)), out)


def _rmse_grad(pred, target):
    """∂L/∂ŷ = (ŷ − y) / (n · RMSE)."""
    out = jnp.result_type(pred, target)
    pred, target = widen(pred, target)
    r = jnp.sqrt(jnp.mean((pred - target) ** 2))
    return narrow((pred - target) / (pred.size * r), out)


@_with_grad(_rmse_grad, "regression")
def rmse(pred, target):
    """Root mean squared error √((1/n) Σ (ŷ − y)²)."""
    _check_same_shape(pred, target, "rmse")
    out = jnp.result_type(pred, target)
    pred, target = widen(pred, target)
    return narrow(jnp.sqrt(jnp.mean((pred - target) ** 2)), out)


def _is_weight(path) -> bool:
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) == "w"


def _l2_grad(params, strength):
    """∂/∂w (½ λ Σ w²) = λ w for every leaf named w; zero for biases, γ and β."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: strength * x if _is_weight(p) else jnp.zeros_like(x), params)


@_with_grad(_l2_grad)
def l2(params, strength):
    """½ λ Σ w² over every leaf named "w" (biases, γ and β are not penalized).
    (The penalty is quadratic; λ Σ w, as one note writes, is not a regularizer.)"""
    leaves = [x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if _is_weight(p)]
    # Squares summed in float32 for narrow leaves (the float32 zero makes the result float32
    # then, as it always was).
    return 0.5 * strength * sum((jnp.sum(widen(x) ** 2) for x in leaves), jnp.zeros(()))


def accuracy(logits, labels):
    """Fraction of positions (examples, or examples × time steps) whose arg-max logit is
    the label.

    Returns a scalar array (jit-compatible: nothing is checked; `fn.train.evaluate` checks
    the labels' range first).
    """
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
