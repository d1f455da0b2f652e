"""Which layer is wrong: each layer's backward against autodiff of that layer alone, at the
inputs it sees inside the model, from the output backwards."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..core import Layer
from .report import _excess

__all__ = ["localize"]


def _leaf_layers(layer: Layer, params, state, x, train, key, label):
    """([(label, layer, params, state, input, key)] for each layer inside nested serials,
    in forward order; the output). Inputs come from re-running the forward layer by layer,
    keys split as serial splits them, so dropout masks match the model's."""
    if layer.name == "serial" and layer.layers:
        n = len(layer.layers)
        keys = [None] * n if key is None else jax.random.split(key, max(n, 1))
        found = []
        for i, sub in enumerate(layer.layers):
            inner = f"layer {i} ({sub.name})"
            more, x = _leaf_layers(sub, params[i], state[i], x, train, keys[i],
                                   f"{label} > {inner}" if label else inner)
            found += more
        return found, x
    y = layer.apply(params, state, x, train=train, key=key)[0]
    return [(label or layer.name, layer, params, state, x, key)], y


def _disagreement(layer, params, state, x, train, key, seed, rtol):
    """(what, index, manual, autodiff) of the worst element where layer.backward and
    jax.vjp of layer.apply differ, or None."""
    y, _, cache = layer.forward(params, state, x, train=train, key=key)
    dy = _random.normal(jax.random.PRNGKey(seed), np.shape(y), jnp.asarray(y).dtype)
    man_p, man_x = layer.backward(params, cache, dy)
    _, vjp = jax.vjp(lambda p, xx: layer.apply(p, state, xx, train=train, key=key)[0], params, x)
    auto_p, auto_x = vjp(dy)
    named = [("input", man_x, auto_x)]
    flat_m = jax.tree_util.tree_flatten_with_path(man_p)[0]
    for (path, m), a in zip(flat_m, jax.tree_util.tree_leaves(auto_p)):
        named.append((f"parameter {jax.tree_util.keystr(path)}", m, a))
    for what, m, a in named:
        m, a = np.asarray(m, np.float64), np.asarray(a, np.float64)
        if m.shape != a.shape:
            return what, None, f"shape {m.shape}", f"shape {a.shape}"
        floor = 1e-9 * max(1.0, float(np.max(np.abs(a), initial=0.0)))
        excess = _excess(m, a, rtol, floor)
        if excess.size and excess.max() > 0:
            at = np.unravel_index(int(np.argmax(excess)), m.shape)
            return what, tuple(int(i) for i in at), float(m[at]), float(a[at])
    return None


def localize(model: Layer, params, state, x, *, train=False, key=None, seed=0,
             rtol=1e-7) -> Optional[str]:
    """The first layer, from the output backwards, whose backward disagrees with autodiff
    of that layer alone at its cached inputs, as a sentence ("layer 4 (max_pool): backward
    disagrees with autodiff at input element (0, 3, 2, 1): manual 0.25, autodiff 1"); None
    when every layer agrees (then the fault is in how they are composed)."""
    found, _ = _leaf_layers(model, params, state, x, train, key, "")
    for label, layer, p, s, xin, k in reversed(found):
        bad = _disagreement(layer, p, s, xin, train, k, seed, rtol)
        if bad is not None:
            what, at, m, a = bad
            if at is None:
                return f"{label}: backward gives the {what} a gradient of {m}, autodiff {a}"
            return (f"{label}: backward disagrees with autodiff at {what} element {at}: "
                    f"manual {m:.6g}, autodiff {a:.6g}")
    return None
