"""The Layer type, serial composition, shape checking and error messages.

A layer is a NamedTuple of pure functions, in the style of stax:

    init(key, input_shape, dtype=None) -> (params, state)
    forward(params, state, x, *, train=False, key=None) -> (y, new_state, cache)
    backward(params, cache, dy) -> (dparams, dx)

`apply` is `forward` without the cache. `output_shape(input_shape)` infers the output
shape from the input shape alone and raises `LayerError` when the input does not fit, so
shape mistakes surface at `init`, naming the layer, instead of inside XLA.
"""
from __future__ import annotations

import operator
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from . import _random
from ._validate import nonempty_shape
from .errors import FuncnetError, LayerError

__all__ = ["Layer", "serial", "summary", "param_paths", "infer_output_shape", "FuncnetError",
           "LayerError"]


class Layer(NamedTuple):
    """A layer: pure `init`, `forward` and hand-derived `backward` functions.

    `name` is the layer's kind ("dense", "conv2d", ...), used in error messages, parameter
    paths and summaries. `output_shape` maps an input shape to the output shape (None means
    "infer it by tracing `forward`"). `layers` holds the children of a container: run in
    sequence for a serial (and `residual`, a renamed serial), side by side on the entries of
    a tuple for a `parallel` (see `is_branching`). Shapes of tuple inputs are tuples of shapes.
    """

    init: Callable
    forward: Callable
    backward: Callable
    name: str = "layer"
    output_shape: Optional[Callable] = None
    layers: Tuple[Layer, ...] = ()

    def apply(self, params, state, x, *, train: bool = False, key=None):
        """`forward` without the cache: returns (y, new_state)."""
        y, new_state, _ = self.forward(params, state, x, train=train, key=key)
        return y, new_state

    def __repr__(self):
        if self.layers:
            return f"{self.name}({', '.join(repr(l) for l in self.layers)})"
        return self.name


# A shape is a tuple of ints; a layer whose input is a tuple of arrays (a branch of
# `parallel`, `fanin_sum`, ...) takes a tuple of shapes, one per array, nested as the arrays are.
def is_shape(shape) -> bool:
    """True for one array's shape (a tuple of ints), False for a tuple of shapes."""
    return all(not isinstance(d, (tuple, list)) for d in shape)


def as_shape(shape):
    """`shape` as a tuple of ints, or a tuple of such tuples for tuple inputs."""
    if is_shape(shape):
        return tuple(_dim(d) for d in shape)
    return tuple(as_shape(s) for s in shape)


def _dim(d):
    """NumPy ints as Python ints (readable in messages); anything else is left for the
    layer's own check to reject (never truncated)."""
    try:
        return operator.index(d)
    except TypeError:
        return d


def shape_of(tree):
    """The shape (or tuple of shapes) of an array or a tuple of arrays."""
    if isinstance(tree, (tuple, list)):
        return tuple(shape_of(t) for t in tree)
    return tuple(tree.shape)


def _abstract(shape, dtype):
    if is_shape(shape):
        return jax.ShapeDtypeStruct(shape, dtype)
    return tuple(_abstract(s, dtype) for s in shape)


def infer_output_shape(layer: Layer, input_shape, params=None, state=None):
    """A layer's output shape: from `output_shape`, else by tracing its forward."""
    input_shape = as_shape(input_shape)
    if layer.output_shape is not None:
        return as_shape(layer.output_shape(input_shape))
    x = _abstract(input_shape, jnp.float32)
    y = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x)[0], params, state, x)
    return shape_of(y)


def _label(i: int, layer: Layer) -> str:
    return f"layer {i} ({layer.name})"


def is_branching(layer: Layer) -> bool:
    """True for a container whose children run side by side on the entries of a tuple
    (`parallel`), False for one whose children run in sequence (`serial`, `residual`)."""
    return layer.name == "parallel" and bool(layer.layers)


def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence. The result is itself a Layer.

    Its params, state and cache are tuples with one entry per layer ({} where a layer has
    none). The key is split once per layer in `init` and, in training, in `forward`.
    `backward` runs the layers' backwards in reverse order (the chain rule).
    """
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. dense(10)?)" if callable(layer) else ""
            raise LayerError(f"serial: argument {i} is not a Layer but {layer!r}{hint}")
    layers = tuple(layers)

    def output_shape(input_shape):
        shape = as_shape(input_shape)
        for i, layer in enumerate(layers):
            try:
                shape = infer_output_shape(layer, shape)
            except LayerError as e:
                raise e.inside(_label(i, layer)) from None
        return shape

    def init(key, input_shape, dtype=None):
        keys = _random.split(key, max(len(layers), 1))
        params, state, shape = [], [], as_shape(input_shape)
        for i, (layer, k) in enumerate(zip(layers, keys)):
            try:
                shape = nonempty_shape(shape, layer.name)
                p, s = layer.init(k, shape) if dtype is None else layer.init(k, shape, dtype)
                shape = infer_output_shape(layer, shape, p, s)
            except LayerError as e:
                raise e.inside(_label(i, layer)) from None
            params.append(p)
            state.append(s)
        return tuple(params), tuple(state)

    def forward(params, state, x, *, train=False, key=None):
        _check_tuple(params, len(layers), "params")
        _check_tuple(state, len(layers), "state")
        keys = [None] * len(layers) if key is None else _random.split(key, max(len(layers), 1))
        new_state, cache = [], []
        for i, layer in enumerate(layers):
            try:
                x, s, c = layer.forward(params[i], state[i], x, train=train, key=keys[i])
            except LayerError as e:
                raise e.inside(_label(i, layer)) from None
            new_state.append(s)
            cache.append(c)
        return x, tuple(new_state), tuple(cache)

    def backward(params, cache, dy):
        dparams = [None] * len(layers)
        for i in reversed(range(len(layers))):
            try:
                dparams[i], dy = layers[i].backward(params[i], cache[i], dy)
            except LayerError as e:
                raise e.inside(_label(i, layers[i])) from None
        return tuple(dparams), dy

    return Layer(init, forward, backward, "serial", output_shape, layers)


def _check_tuple(tree, n, what):
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"a {type(tree).__name__} of length {len(tree)}" if isinstance(tree, (tuple, list)) \
            else type(tree).__name__
        raise LayerError(f"serial of {n} layers expects {what} as a tuple of {n} entries, got {got}")


def param_paths(model: Layer, params) -> list:
    """(path, leaf) pairs naming each parameter leaf, e.g. ("3:conv2d/w", array)."""
    out = []

    def walk(layer, p, prefix):
        if layer.layers:
            for i, (child, cp) in enumerate(zip(layer.layers, p)):
                walk(child, cp, f"{prefix}{i}:{child.name}/")
            return
        for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]:
            out.append((prefix + "/".join(_key_str(k) for k in path), leaf))

    walk(model, params, "" if model.layers else f"{model.name}/")
    return out


def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def summary(model: Layer, input_shape, dtype=None) -> str:
    """A text table of each layer's kind, output shape and parameter count, with the total."""
    input_shape = as_shape(input_shape)
    params, _ = jax.eval_shape(lambda k: model.init(k, input_shape, dtype),
                               jax.random.PRNGKey(0))
    rows = []

    def walk(layer, p, shape, prefix):
        if layer.layers:
            outs = []
            for i, (child, cp) in enumerate(zip(layer.layers, p)):
                label = f"{prefix}.{i}" if prefix else str(i)
                if is_branching(layer):  # each branch reads its own entry of the tuple
                    outs.append(walk(child, cp, shape[i], label))
                else:
                    shape = walk(child, cp, shape, label)
            return tuple(outs) if is_branching(layer) else shape
        out = infer_output_shape(layer, shape, p)
        count = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(p))
        rows.append((prefix or "0", layer.name, str(out), count))
        return out

    walk(model, params, input_shape, "")
    total = sum(r[3] for r in rows)
    head = ("#", "layer", "output shape", "params")
    table = [head] + [(r[0], r[1], r[2], f"{r[3]:,}") for r in rows]
    foot = ("", "total", f"(input {input_shape})", f"{total:,}")
    widths = [max(len(r[j]) for r in table + [foot]) for j in range(4)]

    def line(r):
        return "  ".join(c.rjust(w) if j == 3 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep] + [line(r) for r in table[1:]] + [sep, line(foot)])
