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

__all__ = ["Layer", "serial", "summary", "param_paths", "leaf_paths", "infer_output_shape",
           "check_model_input", "child_trees", "is_branching", "is_sequence", "is_container",
           "FuncnetError", "LayerError", "KINDS", "NONE", "SERIAL", "PARALLEL", "RESIDUAL", "EACH_STEP",
           "POINTWISE", "Decode"]


# How a container combines its children: `Layer.combine`. Every walker (param paths,
# summary, input checks, localisation of a wrong backward) follows this field; `name` is for
# display only, so a user's layer called "parallel" is a leaf and a user's combinator built
# with combine=SERIAL is walked like serial.
NONE = "none"            # a leaf: no children the tools look into
SERIAL = "serial"        # children run in sequence; params/state/cache are tuples, one entry
                         # per child; the key is split once per child (as `serial` splits it)
PARALLEL = "parallel"    # child i runs on entry i of a tuple input; tuples as for SERIAL
RESIDUAL = "residual"    # walked as SERIAL (its children are fanout(2), parallel(block,
                         # shortcut), fanin_sum), shown as the block's layers and the shortcut
EACH_STEP = "each_step"  # one child on (batch·time, ...): time folded into the batch; params
                         # and state are the child's own; the same key
KINDS = (NONE, SERIAL, PARALLEL, RESIDUAL, EACH_STEP)

# How a leaf runs during generation, one step (or one chunk of steps) at a time:
# `Layer.decode`, read by funcnet.generate. POINTWISE: the layer treats every time step alone
# (embedding, layer_norm, an activation, dropout in evaluation), so it runs on the slice
# (batch, steps, ...) as it is; a `Decode`: the layer mixes time steps and carries what later
# steps need (a cache). None: no rule; generate refuses the model, naming the layer.
POINTWISE = "pointwise"


class Decode(NamedTuple):
    """A time-mixing layer's decode rule (`Layer.decode`).

    `init(params, x, length) -> carry`: fixed-size buffers for `length` positions, from the
    layer's input `x` for the first chunk (its batch size and dtype).
    `step(params, carry, x, t) -> (y, carry)`: the layer's output for x, the steps at positions
    t … t + x.shape[1] − 1 (t may be a tracer), seeing every earlier position through the
    carry; equal to the matching rows of `forward` over the whole prefix.
    """

    init: Callable
    step: Callable


class Layer(NamedTuple):
    """A layer: pure `init`, `forward` and hand-derived `backward` functions.

    `name` is the layer's display name ("dense", "conv2d", ...), used in error messages,
    parameter paths and summaries. `output_shape` maps an input shape to the output shape
    (None means "infer it by tracing `forward`"). `layers` holds the children of a
    container and `combine` says how it combines them (one of `KINDS`: SERIAL, PARALLEL,
    RESIDUAL, EACH_STEP; NONE for a leaf). Shapes of tuple inputs are tuples of shapes.

    `check_input(params, x)`, when given, checks a concrete model input before training or
    evaluation and raises a LayerError (e.g. an embedding's ids, which jit cannot check):
    `fit` and `evaluate` call it, through `check_model_input`, on the layers that first see
    the input.

    `shared` lists the (use, owner, transpose) parameter paths of a model built by
    `fn.share`: its params hold None at each use, filled from the owner by its forward.

    `decode` says how a leaf runs one time step when a model generates a sequence
    (`fn.models.generate`): POINTWISE (apply the layer to the (batch, 1, ...) slice), a
    `Decode(init, step)` for a layer that mixes time steps (causal self-attention keeps a
    key/value cache), or None, no rule (generate names the layer and refuses). Containers
    need none: generate walks them by `combine`.

    Caches hold arrays only: a cache passes through jit, vmap and custom_vjp residuals,
    where a Python int would become a tracer, so an integer a backward needs (a count, a
    size) travels as the shape of an empty array. Old positional constructions
    `Layer(init, forward, backward, name, output_shape)` keep working.
    """

    init: Callable
    forward: Callable
    backward: Callable
    name: str = "layer"
    output_shape: Optional[Callable] = None
    layers: Tuple[Layer, ...] = ()
    combine: str = NONE
    check_input: Optional[Callable] = None
    shared: Tuple[Tuple[str, str, bool], ...] = ()
    decode: object = None  # None, POINTWISE or a Decode: hashable, as Layers are cache keys

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
    (PARALLEL), False for one whose children run in sequence (SERIAL, RESIDUAL)."""
    return layer.combine == PARALLEL and bool(layer.layers)


def is_sequence(layer: Layer) -> bool:
    """True for a container whose children run in sequence (SERIAL or RESIDUAL)."""
    return layer.combine in (SERIAL, RESIDUAL) and bool(layer.layers)


def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence. The result is itself a Layer.

    Its params, state and cache are tuples with one entry per layer ({} where a layer has
    none). The key is split once per layer in `init` and, in training, in `forward`.
    `backward` runs the layers' backwards in reverse order (the chain rule).

    Returns the Layer. Raises a LayerError at construction for an argument that is not a
    Layer (a layer factory not called, `dense` for `dense(10)`, is named as such), and at
    `init` or in `forward` for any child's error, its message prefixed with the child's index
    and kind (`layer 3 (dense): ...`).
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

    return Layer(init, forward, backward, "serial", output_shape, layers, SERIAL)


def _check_tuple(tree, n, what):
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"a {type(tree).__name__} of length {len(tree)}" if isinstance(tree, (tuple, list)) \
            else type(tree).__name__
        raise LayerError(f"serial of {n} layers expects {what} as a tuple of {n} entries, got {got}")


def child_trees(layer: Layer, tree) -> list:
    """A container's params (or state, or cache) split per child: the tuple's entries, or
    the whole tree for EACH_STEP (its one child owns it)."""
    return [tree] if layer.combine == EACH_STEP else list(tree)


def is_container(layer: Layer) -> bool:
    return layer.combine != NONE and bool(layer.layers)


def param_paths(model: Layer, params) -> list:
    """(path, leaf) pairs naming each parameter leaf, e.g. ("3:conv2d/w", array)."""
    return [(path, leaf) for path, _, leaf in leaf_paths(model, params)]


def leaf_paths(model: Layer, params, *, keep_none=False) -> list:
    """(path, key path, leaf) per parameter leaf, in `jax.tree_util` leaf order: the path as
    `param_paths` writes it, the key path as `tree_flatten_with_path` does. `keep_none`
    lists None entries (a shared parameter's other uses, see `fn.share`) as leaves too."""
    out = []
    is_leaf = (lambda v: v is None) if keep_none else None

    def walk(layer, p, prefix, kp):
        if is_container(layer):
            for i, (child, cp) in enumerate(zip(layer.layers, child_trees(layer, p))):
                if layer.combine == EACH_STEP:
                    walk(child, cp, prefix, kp)
                else:
                    walk(child, cp, f"{prefix}{i}:{child.name}/", kp + (jax.tree_util.SequenceKey(i),))
            return
        for path, leaf in jax.tree_util.tree_flatten_with_path(p, is_leaf=is_leaf)[0]:
            out.append((prefix + "/".join(_key_str(k) for k in path), kp + tuple(path), leaf))

    root = model.combine in (SERIAL, PARALLEL, RESIDUAL) and model.layers
    walk(model, params, "" if root else f"{model.name}/", ())
    return out


def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def summary(model: Layer, input_shape, dtype=None) -> str:
    """A text table of each layer's kind, output shape and parameter count, with the total.

    Returns the table as a string (`print` it). Shapes come from `jax.eval_shape`, so nothing
    is computed; a model that cannot take `input_shape` raises its LayerError, naming the
    layer.
    """
    input_shape = as_shape(input_shape)
    params, _ = jax.eval_shape(lambda k: model.init(k, input_shape, dtype),
                               jax.random.PRNGKey(0))
    rows = []

    def walk(layer, p, shape, prefix):
        if is_sequence(layer) or is_branching(layer):  # EACH_STEP: one row, unfolded shapes
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


def check_model_input(model: Layer, params, x, where: str):
    """Run the `check_input` hook of every layer that sees the model's input `x` as it is
    (the first child of a sequence, each branch of a parallel on its entry, recursively),
    raising its LayerError as "{where}: {path}: {message}". Layers without a hook pass."""

    def visit(layer, p, x, path):
        if layer.check_input is not None:
            try:
                layer.check_input(p, x)
            except LayerError as e:
                raise LayerError(f"{where}: {' > '.join(path) or layer.name}: {e.message}") from None
        if is_sequence(layer):
            visit(layer.layers[0], p[0], x, path + (_label(0, layer.layers[0]),))
        elif is_branching(layer) and isinstance(x, (tuple, list)):
            for i, (child, cp, xi) in enumerate(zip(layer.layers, p, x)):
                visit(child, cp, xi, path + (f"branch {i} ({child.name})",))

    visit(model, params, x, ())
