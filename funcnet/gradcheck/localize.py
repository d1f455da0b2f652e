"""Which layer is wrong: each layer's backward against autodiff of that layer alone, at the
inputs it sees inside the model, from the output backwards."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..core import (EACH_STEP, PARALLEL, RESIDUAL, Layer, child_trees, is_branching,
                    is_container)
from ..sharing import fill_shared
from .report import _excess

__all__ = ["localize"]


def _child_labels(layer: Layer) -> list:
    """Per child of a container: (the path segments it adds, its own children's labels or
    None for the default). A RESIDUAL is shown as its block's layers and its shortcut: its
    parallel and the block's serial add no segment."""
    kids = layer.layers
    if layer.combine == RESIDUAL and len(kids) == 3 and is_branching(kids[1]) \
            and len(kids[1].layers) == 2:
        inner = [((), None), ((f"shortcut ({kids[1].layers[1].name})",), None)]
        return [((f"layer 0 ({kids[0].name})",), None), ((), inner),
                ((f"layer 2 ({kids[2].name})",), None)]
    if layer.combine == EACH_STEP:
        return [((f"each step ({kids[0].name})",), None)]
    word = "branch" if layer.combine == PARALLEL else "layer"
    return [((f"{word} {i} ({child.name})",), None) for i, child in enumerate(kids)]


def _calls(layer: Layer, params, state, x, train, key, path=(), labels=None):
    """([(path, layer, params, state, input, key, is_leaf)] for every layer inside `layer`,
    leaves in forward order and each container after its children; the output). Inputs come
    from re-running the forward by the containers' kinds, keys split as they split them, so
    dropout masks match the model's."""
    if not is_container(layer):
        y = layer.apply(params, state, x, train=train, key=key)[0]
        return [(path, layer, params, state, x, key, True)], y
    labels = labels or _child_labels(layer)
    filled = fill_shared(layer, params)  # the children see every use of a shared parameter
    ps, ss, n = child_trees(layer, filled), child_trees(layer, state), len(layer.layers)
    if layer.combine == EACH_STEP:
        b, t = x.shape[:2]
        found, y = _calls(layer.layers[0], ps[0], ss[0], x.reshape((b * t,) + x.shape[2:]), train,
                          key, path + labels[0][0], labels[0][1])
        y = y.reshape((b, t) + y.shape[1:])
    else:
        keys = [None] * n if key is None else _random.split(key, max(n, 1))
        found, outs, y = [], [], x
        for i, child in enumerate(layer.layers):
            more, out = _calls(child, ps[i], ss[i], x[i] if is_branching(layer) else y, train,
                               keys[i], path + labels[i][0], labels[i][1])
            found += more
            outs.append(out)
            y = out
        y = tuple(outs) if is_branching(layer) else y
    return found + [(path, layer, params, state, x, key, False)], y


def _cotangent(y, seed):
    """A random upstream gradient shaped like y (an array or a tuple of arrays)."""
    leaves, treedef = jax.tree_util.tree_flatten(y)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(treedef, [
        _random.normal(k, np.shape(leaf), jnp.asarray(leaf).dtype) for k, leaf in zip(keys, leaves)])


def _named(prefix, manual, auto):
    """[(what, manual leaf, autodiff leaf)], or one entry naming a structure mismatch."""
    flat_a = jax.tree_util.tree_flatten_with_path(auto)[0]
    flat_m = jax.tree_util.tree_leaves(manual)
    if len(flat_m) != len(flat_a):
        return [(prefix, None, f"{len(flat_m)} gradient arrays", f"{len(flat_a)}")]
    return [((prefix + " " + jax.tree_util.keystr(path)).strip(), m, a)
            for (path, a), m in zip(flat_a, flat_m)]


def _disagreement(layer, params, state, x, train, key, seed, rtol):
    """(what, index, manual, autodiff) of the worst element where layer.backward and
    jax.vjp of layer.apply differ, or None. Integer inputs (ids) are constants."""
    y, _, cache = layer.forward(params, state, x, train=train, key=key)
    dy = _cotangent(y, seed)
    man_p, man_x = layer.backward(params, cache, dy)
    diff_x = all(jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact) for a in jax.tree_util.tree_leaves(x))
    run = lambda p, xx: layer.apply(p, state, xx, train=train, key=key)[0]  # noqa: E731
    if diff_x:
        auto_p, auto_x = jax.vjp(run, params, x)[1](dy)
        named = _named("input", man_x, auto_x)
    else:
        auto_p, named = jax.vjp(lambda p: run(p, x), params)[1](dy)[0], []
    for what, m, a in named + _named("parameter", man_p, auto_p):
        if m is None:
            return what, None, a, "another structure"
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
    """The innermost layer whose backward disagrees with autodiff of that layer alone at the
    inputs it sees inside the model, as a sentence with its path ("layer 1 (residual) >
    layer 1 (my_tanh): backward disagrees with autodiff at input element (0, 3): manual
    0.25, autodiff 1"). Leaves are tried from the output backwards, through serial, parallel,
    residual and each-step containers; when every leaf agrees, the innermost container whose
    backward disagrees is named (the fault is in how it composes its children). None when
    everything agrees."""
    found, _ = _calls(model, params, state, x, train, key)
    leaves = [c for c in reversed(found) if c[-1]]
    containers = [c for c in found if not c[-1]]  # children before their parents
    for path, layer, p, s, xin, k, leaf in leaves + containers:
        bad = _disagreement(layer, p, s, xin, train, k, seed, rtol)
        if bad is None:
            continue
        label = " > ".join(path) or layer.name
        what, at, m, a = bad
        tail = "" if leaf else " (every layer inside agrees: the fault is in how it combines them)"
        if at is None:
            return f"{label}: backward gives the {what} a gradient of {m}, autodiff {a}{tail}"
        return (f"{label}: backward disagrees with autodiff at {what} element {at}: "
                f"manual {m:.6g}, autodiff {a:.6g}{tail}")
    return None
