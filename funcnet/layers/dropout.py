"""Inverted dropout (Srivastava et al. 2014; cs231n, Ng)."""

from .. import _random
from .._validate import as_float
from ..core import POINTWISE, Layer, LayerError

__all__ = ["dropout"]


def dropout(rate: float) -> Layer:
    """Drop each unit with probability `rate` in training and scale the kept ones by
    1 / (1 − rate), so evaluation is the identity. Needs a `key` only when train=True. The
    mask is `_random.keep_mask(key, 1 − rate, x.shape)`: unit i kept where
    jax.random.bits(key)[i] < round((1 − rate)·2³²).

    Backward: dx = δ ⊙ mask / (1 − rate), the forward's mask (the identity in evaluation).

    Returns the Layer. Raises a LayerError for a rate outside [0, 1) (at construction) and for
    a call with train=True and no key.
    """
    rate = as_float(rate, "rate (the probability of dropping)", "dropout", low=0.0, high=1.0,
                    high_open=True)

    def init(key, input_shape, dtype=None):
        return {}, {}

    def forward(params, state, x, *, train=False, key=None):
        if not train or rate == 0:
            return x, state, {}
        if key is None:
            raise LayerError("dropout needs a PRNG key in training: pass key=... to apply/forward")
        # 32-bit draws: kept with probability 1 − rate to within 2⁻³³, so scaling by
        # 1 / (1 − rate) keeps the mean to far below float32's resolution
        keep = _random.keep_mask(key, 1.0 - rate, x.shape)
        mask = keep.astype(x.dtype) / (1.0 - rate)
        return x * mask, state, {"mask": mask}

    def backward(params, cache, dy):
        """dx = δ ⊙ mask / (1 − rate): the same mask as the forward pass (identity in
        evaluation)."""
        return {}, dy * cache["mask"] if "mask" in cache else dy

    return Layer(init, forward, backward, "dropout", lambda shape: tuple(shape), decode=POINTWISE)
