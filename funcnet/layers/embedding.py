"""Embedding: a lookup table of learned vectors, one row per token id.

    y[n, ..., :] = W[x[n, ...], :]      x integer ids in [0, vocab_size)

Under jit the ids cannot be checked, and XLA clamps an id outside the table to the nearest
row (0 or vocab_size − 1): the layer's `check_input` hook (`check_indices`) checks them, and
`fit` and `evaluate` run it on the data before training, naming the offending value.
"""
import numpy as np
import jax.numpy as jnp

from .._validate import as_int, check, float_dtype, int_token, token_int
from ..core import POINTWISE, Layer, LayerError
from ..initializers import gaussian, _resolve
from ..ops import narrow, widen

__all__ = ["embedding", "check_indices"]


def embedding(vocab_size: int, dim: int, w_init=gaussian(1.0)) -> Layer:
    """params {"w": (vocab_size, dim)} (N(0, 1) by default, as torch.nn.Embedding);
    input (batch, ...) of integer ids -> (batch, ..., dim). Float input holding whole
    numbers is accepted (fit stores inputs as float32) and rounded to the nearest id.

    Backward: dW[v] = Σ_{positions p with x_p = v} dy_p (a scatter-add; unused rows get 0).
    The ids are piecewise constant: dx is None for integer ids, zeros for float ones.

    Returns the Layer. Raises a LayerError for a vocab_size or dim that is not a positive int
    (at construction); `fit` and `evaluate` raise one for an id outside [0, vocab_size) or not
    a whole number (its `check_input`), which `jit` alone would clamp silently.
    """
    vocab_size = as_int(vocab_size, "vocab_size", "embedding")
    dim = as_int(dim, "dim", "embedding")
    w_init = _resolve(w_init, "embedding", "w_init")

    def output_shape(shape):
        check(len(shape) >= 1, f"embedding expects ids of shape (batch, ...), got shape {shape}")
        return tuple(shape) + (dim,)

    def init(key, input_shape, dtype=None):
        output_shape(tuple(input_shape))
        return {"w": w_init(key, (vocab_size, dim), float_dtype(dtype))}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        x, rows = jnp.asarray(x), params["w"].shape[0]
        cache = {"rows": int_token(rows)}  # the table's size
        if jnp.issubdtype(x.dtype, jnp.floating):
            cache["float_ids"] = jnp.zeros((0,), x.dtype)  # dx is zeros of this dtype
            x = jnp.round(x)
        ids = jnp.clip(x.astype(jnp.int32), 0, rows - 1)  # what XLA would do anyway
        cache["ids"] = ids
        return params["w"][ids], state, cache

    def backward(params, cache, dy):
        """dW[v] = Σ_{positions p with x_p = v} dy_p: a scatter-add of dy into the rows that
        were used (a row used twice gets both contributions; unused rows get 0).
        The ids are piecewise constant: there is no gradient to the input. dx is None for
        integer ids and zeros for float ids (so fn.check_gradients can be given float ids,
        which its finite differences leave on the same row, as rounding does).
        A bfloat16 / float16 dy is added up in float32, dW cast back to dy's dtype."""
        ids, rows = cache["ids"], token_int(cache["rows"])
        wide = widen(dy)
        dw = jnp.zeros((rows, dy.shape[-1]), wide.dtype).at[ids.reshape(-1)].add(
            wide.reshape(-1, dy.shape[-1]))
        dw = narrow(dw, dy.dtype)
        dx = jnp.zeros(ids.shape, cache["float_ids"].dtype) if "float_ids" in cache else None
        return {"w": dw}, dx

    return Layer(init, forward, backward, "embedding", output_shape, check_input=check_indices,
                 decode=POINTWISE)


def check_indices(params, x):
    """The embedding's input check (its `check_input` hook, run by `fit` and `evaluate` on
    the concrete data): a LayerError naming the first id outside [0, vocab_size) or not a
    whole number."""
    if not (isinstance(params, dict) and "w" in params):
        return
    vocab = int(np.shape(params["w"])[0])
    x = np.asarray(x)
    bad = (x < 0) | (x >= vocab) | (x != np.floor(x))
    if bad.any():
        value = x[bad].flat[0]
        value = int(value) if value == np.floor(value) else float(value)
        raise LayerError(f"input id {value} is outside [0, {vocab}) (vocab_size {vocab}); ids "
                         f"must be whole numbers in [0, {vocab - 1}]")
