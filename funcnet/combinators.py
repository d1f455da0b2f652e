"""Branches: layers whose input or output is a tuple of arrays, beside `core.serial`.

    fanout(n)            x -> (x, ..., x)                 backward: Σ of the n gradients
    parallel(*layers)    (x_1..x_n) -> (f_1(x_1)..f_n(x_n))  backward: each branch's own
    fanin_sum            (x_1..x_n) -> x_1 + ... + x_n    backward: dy to every branch
    fanin_concat(axis)   (x_1..x_n) -> concat(x_i, axis)  backward: dy split back
    residual(*layers)    x -> serial(*layers)(x) + x  (= fanout, parallel, fanin_sum)
    time_distributed(f)  (B, T, ...) -> f applied to every step, time folded into the batch

A tuple input has a tuple of shapes, one per array, through `init`, `output_shape`,
`summary` and the errors. The backward of fanout is the multivariate chain rule: a value
used twice receives both contributions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _random
from ._validate import as_int, check, int_token, token_int
from .core import (EACH_STEP, PARALLEL, POINTWISE, RESIDUAL, Layer, LayerError, infer_output_shape,
                   is_shape, serial)
from .ops import narrow, widen

__all__ = ["fanout", "parallel", "fanin_sum", "fanin_concat", "residual", "time_distributed"]


def _no_params(key, input_shape, dtype=None):
    return {}, {}


def _add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def _tuple_shapes(shape, name, n=None):
    """Check that `shape` is a tuple of shapes (of `n` entries when given)."""
    check(not is_shape(shape) and len(shape) > 0,
          f"{name} expects a tuple of arrays (e.g. after fanout or parallel), got one array of "
          f"shape {shape}")
    check(n is None or len(shape) == n,
          f"{name} of {n} branches expects a tuple of {n} arrays, got {len(shape)}: shapes {shape}")
    return shape


def fanout(n: int) -> Layer:
    """x -> (x, ..., x), n copies. backward: dx = Σ_i dy_i (each copy's contribution).

    Returns the Layer; a LayerError when `n` is not a positive int.
    """
    n = as_int(n, "n", "fanout")

    def forward(params, state, x, *, train=False, key=None):
        return (x,) * n, state, {}

    def backward(params, cache, dy):
        """dx = dy_1 + ... + dy_n: the multivariate chain rule for a value used n times
        (bfloat16 / float16 gradients are added up in float32, then cast back)."""
        dx = jax.tree_util.tree_map(widen, dy[0])
        for d in dy[1:]:
            dx = _add(dx, jax.tree_util.tree_map(widen, d))
        return {}, narrow(dx, dy[0])

    return Layer(_no_params, forward, backward, "fanout", lambda shape: (shape,) * n,
                 decode=POINTWISE)


def parallel(*layers: Layer) -> Layer:
    """(x_1, ..., x_n) -> (layer_1(x_1), ..., layer_n(x_n)); params, state and cache are
    tuples with one entry per branch. backward: each branch's backward on its own dy_i.

    Returns the Layer. Raises a LayerError at construction for a branch that is not a Layer
    or for no branch at all, and at `init` or in `forward` for an input that is not a tuple of
    n entries or a branch's own error (prefixed with `branch i`).
    """
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. dense(10)?)" if callable(layer) else ""
            raise LayerError(f"parallel: branch {i} is not a Layer but {layer!r}{hint}")
    check(len(layers) > 0, "parallel: give at least one branch")
    layers, n = tuple(layers), len(layers)

    def each(fn, *args):
        """Run fn(i, layer, *entries_i) per branch, naming the branch in any LayerError."""
        out = []
        for i, layer in enumerate(layers):
            try:
                out.append(fn(i, layer, *(a[i] for a in args)))
            except LayerError as e:
                raise e.inside(f"branch {i} ({layer.name})") from None
        return tuple(out)

    def output_shape(shape):
        return each(lambda i, l, s: infer_output_shape(l, s), _tuple_shapes(shape, "parallel", n))

    def init(key, input_shape, dtype=None):
        shapes = _tuple_shapes(input_shape, "parallel", n)
        keys = _random.split(key, n)
        out = each(lambda i, l, k, s: l.init(k, s) if dtype is None else l.init(k, s, dtype),
                   keys, shapes)
        return tuple(p for p, _ in out), tuple(s for _, s in out)

    def forward(params, state, x, *, train=False, key=None):
        check(isinstance(x, (tuple, list)) and len(x) == n,
              f"parallel of {n} branches expects a tuple of {n} arrays, got "
              f"{len(x) if isinstance(x, (tuple, list)) else 'one array'}")
        keys = [None] * n if key is None else _random.split(key, n)
        out = each(lambda i, l, p, s, xi, k: l.forward(p, s, xi, train=train, key=k),
                   params, state, x, keys)
        return tuple(o[0] for o in out), tuple(o[1] for o in out), tuple(o[2] for o in out)

    def backward(params, cache, dy):
        """Block-diagonal: branch i's backward gets dy_i and gives (dparams_i, dx_i)."""
        out = [layers[i].backward(params[i], cache[i], dy[i]) for i in range(n)]
        return tuple(d for d, _ in out), tuple(dx for _, dx in out)

    return Layer(init, forward, backward, "parallel", output_shape, layers, PARALLEL)


def _fanin_sum(hint=""):
    def output_shape(shape):
        _tuple_shapes(shape, "fanin_sum")
        for i, s in enumerate(shape[1:], 1):
            check(tuple(s) == tuple(shape[0]),
                  f"fanin_sum needs branches of one shape, got {shape[0]} (branch 0) and {s} "
                  f"(branch {i}){hint}")
        return shape[0]

    def init(key, input_shape, dtype=None):
        output_shape(input_shape)
        return {}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(tuple(a.shape) for a in x))
        y = x[0]
        for a in x[1:]:
            y = y + a
        return y, state, {"n": int_token(len(x))}

    def backward(params, cache, dy):
        """y = Σ_i x_i, so ∂y/∂x_i = I:  dx_i = dy for every branch."""
        return {}, (dy,) * token_int(cache["n"])

    return Layer(init, forward, backward, "fanin_sum", output_shape, decode=POINTWISE)


fanin_sum = _fanin_sum()
"""Sums a tuple of branch outputs of one shape: y = Σ_i x_i; backward dx_i = dy for every
branch. A Layer value (no parameters), used after `fanout` / `parallel`; a LayerError at
`init` when the input is not a tuple or the branches' shapes differ."""


def fanin_concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of arrays along `axis` (negative counts from the end; the other
    axes must agree). backward: dy split back into the pieces' sizes along `axis`.

    Returns the Layer. Raises a LayerError when the input is not a tuple or the pieces
    disagree on an axis other than `axis` (at `init` or in `forward`).
    """
    axis = as_int(axis, "axis", "fanin_concat", minimum=-(2 ** 31))

    def output_shape(shape):
        shape = _tuple_shapes(shape, "fanin_concat")
        rank = len(shape[0])
        check(-rank <= axis < rank, f"fanin_concat: axis {axis} does not exist for inputs of "
              f"rank {rank} (shapes {shape}); use an axis in [{-rank}, {rank - 1}]")
        a = axis % rank
        for i, s in enumerate(shape):
            check(len(s) == rank and all(s[j] == shape[0][j] for j in range(rank) if j != a),
                  f"fanin_concat(axis={axis}) needs shapes that agree except on axis {a}, got "
                  f"{shape[0]} (branch 0) and {s} (branch {i})")
        return shape[0][:a] + (sum(s[a] for s in shape),) + shape[0][a + 1:]

    def init(key, input_shape, dtype=None):
        output_shape(input_shape)
        return {}, {}

    def forward(params, state, x, *, train=False, key=None):
        shapes = tuple(tuple(t.shape) for t in x)
        output_shape(shapes)
        a = axis % len(shapes[0])
        # The sizes travel as the shapes of empty arrays: a cache holds arrays only.
        return jnp.concatenate(x, axis=a), state, {"sizes": tuple(int_token(s[a]) for s in shapes)}

    def backward(params, cache, dy):
        """dx_i = dy[..., o_i : o_i + n_i, ...] along the axis (o_i = Σ_{j<i} n_j)."""
        a = axis % dy.ndim
        cuts, start = [], 0
        for marker in cache["sizes"][:-1]:
            start += token_int(marker)
            cuts.append(start)
        return {}, tuple(jnp.split(dy, cuts, axis=a))

    return Layer(init, forward, backward, "fanin_concat", output_shape)


def residual(*layers: Layer, shortcut: Layer = None) -> Layer:
    """y = serial(*layers)(x) + x, or + shortcut(x) (e.g. a 1x1 conv2d projection when the
    channel count changes). Built as serial(fanout(2), parallel(block, shortcut or identity),
    fanin_sum), marked RESIDUAL (walked as that serial, shown as the block and the shortcut),
    so its params are ({}, (block, shortcut), {}) and its backward is theirs:
    dx = dblock/dx · dy + dshortcut/dx · dy.

    Returns the Layer. Raises a LayerError when a block member or the shortcut is not a
    Layer, or when the block's output shape differs from the shortcut's (at `init`: give a
    `shortcut` that projects).
    """
    from .layers.activation import identity

    block = serial(*layers)
    if shortcut is not None and not isinstance(shortcut, Layer):
        raise LayerError(f"residual: shortcut must be a Layer (e.g. conv2d(c, 1)), got {shortcut!r}")
    hint = ("; give residual a shortcut that maps the input to the block's output shape "
            "(e.g. shortcut=conv2d(channels, 1, stride))")
    model = serial(fanout(2), parallel(block, identity if shortcut is None else shortcut),
                   _fanin_sum(hint))
    return model._replace(name="residual", combine=RESIDUAL)


def time_distributed(layer: Layer) -> Layer:
    """Apply a per-example `layer` to every step of a (batch, time, ...) input: time is
    folded into the batch, (B, T, ...) -> (B·T, ...) -> layer -> (B, T, ...). Params and
    state are the wrapped layer's (an EACH_STEP container of that one layer). backward: the
    layer's backward on dy folded the same way.

    Returns the Layer. Raises a LayerError when `layer` is not a Layer, or the input has no
    time axis (rank < 3), or the wrapped layer's own error (at `init` or in `forward`).
    """
    if not isinstance(layer, Layer):
        raise LayerError(f"time_distributed: expects a Layer, got {layer!r}")
    where = f"each step ({layer.name})"

    def inner(shape):
        check(is_shape(shape) and len(shape) >= 3, f"time_distributed expects input (batch, time, "
              f"...) of rank >= 3, got shape {shape}")
        return (shape[0] * shape[1],) + tuple(shape[2:])

    def output_shape(shape):
        folded = inner(shape)
        try:
            out = infer_output_shape(layer, folded)
        except LayerError as e:
            raise e.inside(where) from None
        return (shape[0], shape[1]) + tuple(out[1:])

    def init(key, input_shape, dtype=None):
        s = inner(tuple(input_shape))
        try:
            return layer.init(key, s) if dtype is None else layer.init(key, s, dtype)
        except LayerError as e:
            raise e.inside(where) from None

    def forward(params, state, x, *, train=False, key=None):
        inner(tuple(x.shape))
        b, t = x.shape[:2]
        try:
            y, new_state, cache = layer.forward(params, state, x.reshape((b * t,) + x.shape[2:]),
                                                train=train, key=key)
        except LayerError as e:
            raise e.inside(where) from None
        return y.reshape((b, t) + y.shape[1:]), new_state, cache

    def backward(params, cache, dy):
        """The wrapped layer's backward on dy reshaped (B, T, ...) -> (B·T, ...), and dx back."""
        b, t = dy.shape[:2]
        dparams, dx = layer.backward(params, cache, dy.reshape((b * t,) + dy.shape[2:]))
        return dparams, None if dx is None else dx.reshape((b, t) + dx.shape[1:])

    return Layer(init, forward, backward, "time_distributed", output_shape, (layer,), EACH_STEP)

