"""Shared parameters: one array used in several places of one pure init/apply model.

    tied = fn.share(fn.serial(fn.dense(16), fn.tanh, fn.dense(64)), {"2:dense/w": "0:dense/w.T"})

`uses` maps each *use* (the parameter path, as `fn.core.param_paths` writes it, of a leaf the
model would otherwise own) to its *owner* (another leaf's path; a ".T" suffix means the
owner's transpose). The shared model's params keep the owner's leaf and None where each use
was, so optimizers, checkpoints and tree utilities see the shared array once. stax cannot
express this; Haiku and Flax do it by module identity, funcnet by naming the two places.

    forward:   the model's forward on its params with every use filled from its owner
    backward:  the model's backward on those filled params, then, for each use u of owner W,
               dW += du  (dW += duᵀ for ".T"), and du is dropped:
               dL/dW = Σ over the places W is used of ∂L/∂(that use) -- the multivariate
               chain rule, as `fanout`'s backward sums the gradients of a value used twice.

The shared model is the model with these three functions replaced and `shared` set; its kind
and children stay the model's, so summaries, parameter paths and the localisation of a wrong
backward walk it as before (walkers fill the uses with `fill_shared`).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from .core import Layer, LayerError, leaf_paths

__all__ = ["share", "fill_shared"]


def share(model: Layer, uses: Mapping[str, str]) -> Layer:
    """`model` with each parameter path in `uses` (a key) reading the parameter at its value
    (its owner's path, ".T" for the transpose) instead of owning one: see the module
    docstring. Paths are checked at `init`, against the model's own parameter paths.

    Returns the shared model, a Layer whose params hold None at each use. Raises a
    LayerError for a `model` that is not a Layer, `uses` that are not a non-empty dict of
    path strings, an owner that is itself a use, and (at `init`) for a path the model does not
    have or a use whose shape differs from its owner's (or its transpose's).
    """
    if not isinstance(model, Layer):
        raise LayerError(f"share: expects a Layer, got {model!r}")
    if not isinstance(uses, Mapping) or not uses:
        raise LayerError(f"share: uses must be a non-empty dict {{use path: owner path}}, got {uses!r}")
    ties = []
    for use, owner in uses.items():
        if not (isinstance(use, str) and isinstance(owner, str)):
            raise LayerError(f"share: paths must be strings, got {use!r}: {owner!r}")
        transpose = owner.endswith(".T")
        ties.append((use, owner[:-2] if transpose else owner, transpose))
    targets = {u for u, _, _ in ties}
    for use, owner, _ in ties:
        if owner == use or owner in targets:
            raise LayerError(f"share: the owner of {use!r}, {owner!r}, is itself a use; point "
                             f"every use at the parameter that owns the array")
    ties = tuple(ties)

    def init(key, input_shape, dtype=None):
        params, state = model.init(key, input_shape) if dtype is None else \
            model.init(key, input_shape, dtype)
        where = _locate(model, params, ties)
        for use, owner, transpose in ties:
            want = jnp.shape(_get(params, where[owner]))[::-1 if transpose else 1]
            got = jnp.shape(_get(params, where[use]))
            if tuple(want) != tuple(got):
                raise LayerError(f"share: {use!r} has shape {tuple(got)} but its owner "
                                 f"{owner!r}{'.T' if transpose else ''} gives {tuple(want)}")
        for use, _, _ in ties:
            params = _set(params, where[use], None)
        return params, state

    shared = model._replace(init=init, shared=ties)

    def forward(params, state, x, *, train=False, key=None):
        return model.forward(fill_shared(shared, params), state, x, train=train, key=key)

    def backward(params, cache, dy):
        """The model's backward on the filled params; each use's gradient added into its
        owner's (transposed back for ".T"), the use's entry dropped."""
        dparams, dx = model.backward(fill_shared(shared, params), cache, dy)
        where = _locate(model, dparams, ties)
        for use, owner, transpose in ties:
            d_use = _get(dparams, where[use])
            d_use = jnp.transpose(d_use) if transpose else d_use
            dparams = _set(dparams, where[owner], _get(dparams, where[owner]) + d_use)
            dparams = _set(dparams, where[use], None)
        return dparams, dx

    return shared._replace(forward=forward, backward=backward)


def fill_shared(layer: Layer, params):
    """The params `layer`'s inner model sees: each use (None in `params`) filled with its
    owner's array (transposed for ".T"). Params of a layer with no `shared` pass through."""
    if not layer.shared:
        return params
    where = _locate(layer, params, layer.shared)
    for use, owner, transpose in layer.shared:
        value = _get(params, where[owner])
        params = _set(params, where[use], jnp.transpose(value) if transpose else value)
    return params


def _locate(model, params, ties) -> dict:
    """{path: key path} for every path named in `ties`, or a LayerError listing the model's
    parameter paths."""
    found = {path: kp for path, kp, _ in leaf_paths(model, params, keep_none=True)}
    for use, owner, _ in ties:
        for path in (use, owner):
            if path not in found:
                known = ", ".join(sorted(p for p in found)) or "none"
                raise LayerError(f"share: the model has no parameter {path!r}; its parameters "
                                 f"are: {known}")
    return found


def _get(tree, key_path):
    for k in key_path:
        tree = tree[k.key] if isinstance(k, jax.tree_util.DictKey) else tree[k.idx]
    return tree


def _set(tree, key_path, value):
    """A copy of `tree` with the entry at `key_path` replaced (dicts and tuples/lists)."""
    if not key_path:
        return value
    k, rest = key_path[0], key_path[1:]
    if isinstance(k, jax.tree_util.DictKey):
        return {**tree, k.key: _set(tree[k.key], rest, value)}
    items = list(tree)
    items[k.idx] = _set(items[k.idx], rest, value)
    return type(tree)(items) if isinstance(tree, tuple) else items
