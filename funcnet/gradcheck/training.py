"""The check a training run makes before it trains: a model's three-way gradient check on a
few examples, with the inputs nudged off kinks and ties, sampled when the model is big."""
from __future__ import annotations

import jax
import numpy as np

from .. import losses
from ..backprop import jitted
from .model import check_gradients

__all__ = ["check_training_gradients", "nudge_off_kinks", "choose_samples"]


def nudge_off_kinks(params, x, seed=0, *, bias_scale=0.1, input_scale=0.01):
    """(params, x) with N(0, bias_scale²) added to biases and batch-norm shifts ("b",
    "beta") and N(0, input_scale²) to the inputs, so no ReLU input sits exactly on its kink
    and no max-pool window holds a tie (images have many equal background pixels)."""
    rng = np.random.default_rng(seed)

    def nudge(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        if name not in ("b", "beta"):
            return leaf
        return np.asarray(leaf, np.float64) + bias_scale * rng.standard_normal(np.shape(leaf))

    params = jax.tree_util.tree_map_with_path(nudge, params)
    return params, np.asarray(x, np.float64) + input_scale * rng.standard_normal(np.shape(x))


def choose_samples(params, x, samples="auto", *, per_leaf=256):
    """None (every coordinate differenced) when no leaf of params or x has more than
    `per_leaf` elements, else `per_leaf`: leaves up to that size are still differenced
    element by element, bigger ones at that many random coordinates (cs231n's sparse
    check). The manual/autodiff comparison always covers every element."""
    if samples != "auto":
        return samples
    biggest = max([int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params)] + [np.size(x)])
    return None if biggest <= per_leaf else per_leaf


def check_training_gradients(model, params, state, x, labels, *, seed=0, samples="auto",
                             loss=losses.softmax_cross_entropy, raise_on_failure=False):
    """check_gradients (float64) of `loss` on the examples (x, labels) in training mode
    (dropout masks fixed, batch norm on the batch), after nudge_off_kinks, with the model's
    forward and backward jit-compiled. Every element of every leaf is compared manual vs
    autodiff; numerically, samples="auto" differences every coordinate of leaves up to 256
    elements and checks bigger ones along 4 random directions, all in one compiled program
    (compiling dominated the time); an int or None is check_gradients' `samples`."""
    params, x = nudge_off_kinks(params, x, seed)
    return check_gradients(jitted(model), params, state, x, labels, loss, train=True,
                           key=jax.random.PRNGKey(seed + 1), samples=samples, project_above=256,
                           sample_key=jax.random.PRNGKey(seed + 2), chunk=1 << 20,
                           raise_on_failure=raise_on_failure)
