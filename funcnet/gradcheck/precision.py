"""check_precision: does a hand backward keep its accuracy in low precision (bfloat16,
float16)?

For a model (or one layer) and a fixed random upstream gradient g, the gradient of Σ y ⊙ g
with respect to every parameter leaf and the input, three ways:

    hand      model.forward then model.backward, run in `dtype` (params, x and g cast to it)
    autodiff  jax.vjp of model.apply, run in `dtype`: the trusted low-precision baseline
    truth     jax.vjp in float64 (scoped with jax.enable_x64) at the same point: the
              dtype-rounded params, x and g, so rounding the inputs costs neither side

Error of a leaf: max |g − g64| / max |g64| (the worst element against the leaf's scale;
max |g − g64| alone when the truth is zero). A leaf passes when its hand error is at most
`factor` × autodiff's, or under the floor ulps · eps(dtype) (`ulps` ulps of `dtype` at the
leaf's scale). The floor is there because at the rounding of the result itself a ratio
means nothing: both sides are a few roundings off, and XLA may keep some intermediates in
float32 (it is allowed excess precision), differently in the two programs.

Backwards that accumulate their sums in `dtype`, or take a variance as E[x²] − E[x]², lose
far more than autodiff (whose reductions and products XLA accumulates in float32) and
fail; offset inputs (x = 100 + N(0, 1)) are where single-pass variance breaks, so pass
your own `x` to see it.
"""
from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from .._validate import as_float, dtype_of
from ..core import Layer, is_container, param_paths, shape_of
from ..errors import FuncnetError
from . import _precision
from .layer import _init
from .localize import _calls
from .report import GradientReport, GradientRow

__all__ = ["check_precision"]


def check_precision(model: Layer, x, *, dtype=jnp.bfloat16, key=None, factor: float = 3.0,
                    train: bool = True, params=None, state=None, ulps: float = 2.0,
                    raise_on_failure: bool = False) -> GradientReport:
    """The error of `model`'s hand backward run in `dtype` against the float64 truth, beside
    the error of autodiff run in `dtype`, one row per parameter leaf and the input (columns
    "hand <dtype>" and "autodiff <dtype>": max |g − g64| / max |g64|).

    `x`: an input array, or an input shape (then x ~ N(0, 1), drawn from `key`). `params`
    and `state` default to `model.init` (float64, then rounded to `dtype`); dropout masks are
    fixed by `key`; `train` picks the mode (training by default: batch statistics). A leaf
    passes when hand error <= `factor` × autodiff error, or <= `ulps` · eps(dtype) (the
    floor; the notes name the rows that pass by it alone). A failing model is walked by its
    layers' kinds and each layer checked alone at the input it sees: the notes name the
    layers that lose precision, with the leaf. Integer inputs (ids) are constants.

    Returns a GradientReport (columns "hand <dtype>" and "autodiff <dtype>"). Raises a
    FuncnetError for a `model` that is not a Layer or an invalid dtype or factor, and
    GradientCheckError on a failure only with `raise_on_failure=True`.
    """
    if not isinstance(model, Layer):
        raise FuncnetError(f"check_precision: expected an fn.Layer, got {type(model).__name__}")
    dtype = _low_dtype(dtype)
    factor = as_float(factor, "factor", "check_precision", low=1.0, error=FuncnetError)
    ulps = as_float(ulps, "ulps", "check_precision", low=0.0, error=FuncnetError)
    key = jax.random.PRNGKey(0) if key is None else key
    k_init, k_x, k_g, k_run = jax.random.split(key, 4)
    params, state, x = _point(model, x, params, state, k_init, k_x, dtype)
    g = _cotangent(model, params, state, x, train, k_run, k_g, dtype)
    floor = ulps * float(jnp.finfo(dtype).eps)
    found, loss, dtype_notes = _gradients(model, params, state, x, g, train, k_run)
    rows = [_row(path, hand, auto, truth, factor, floor) for path, hand, auto, truth in found]
    name = jnp.dtype(dtype).name
    report = GradientReport(rows, loss, {"factor": factor, "floor": floor, "dtype": name},
                            _notes(rows, factor, floor, ulps, name) + dtype_notes,
                            columns=(f"hand {name}", f"autodiff {name}"),
                            title=f"precision check ({name})")
    if not report.ok and is_container(model):
        report.notes += _blame(model, params, state, x, train, k_run, factor, floor, dtype)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _low_dtype(dtype):
    """`dtype` as a NumPy dtype, refused unless it is a real floating-point type."""
    try:
        out = jnp.dtype(dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise FuncnetError(f"check_precision: dtype must be a floating-point type (jnp.bfloat16, "
                           f"jnp.float16, ...), got {dtype!r}")
    return out


def _is_shape(x) -> bool:
    """True for a shape (a non-empty tuple of ints) or a tuple of shapes (a tuple input)."""
    if not isinstance(x, (tuple, list)) or not x:
        return False
    if all(isinstance(d, (tuple, list)) for d in x):
        return all(_is_shape(d) for d in x)
    try:
        return all(operator.index(d) >= 0 for d in x)
    except TypeError:
        return False


def _draw(shape, key):
    """N(0, 1) float64 arrays of `shape` (a tuple of them for a tuple of shapes)."""
    if all(isinstance(d, (tuple, list)) for d in shape):
        return tuple(_draw(s, k) for s, k in zip(shape, jax.random.split(key, len(shape))))
    return _random.normal(key, tuple(operator.index(d) for d in shape), jnp.float64)


def _point(model, x, params, state, k_init, k_x, dtype):
    """(params, state, x), float leaves rounded to `dtype`: x drawn N(0, 1) when a shape;
    params and state from a float64 init unless given."""
    with jax.enable_x64(True):
        if _is_shape(x):
            x = _draw(x, k_x)
        shape = shape_of(x)
        if params is None or state is None:
            made = _init(model, k_init, shape)
            params = made[0] if params is None else params
            state = made[1] if state is None else state
    return tuple(_precision.cast(t, dtype) for t in (params, state, x))


def _cotangent(model, params, state, x, train, key, k_g, dtype):
    """A fixed N(0, 1) upstream gradient shaped like the output, rounded to `dtype`."""
    y = jax.eval_shape(lambda p, s, xx: model.apply(p, s, xx, train=train, key=key)[0],
                       params, state, x)
    leaves, treedef = jax.tree_util.tree_flatten(y)
    keys = jax.random.split(k_g, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(treedef, [
        _precision.cast(_random.normal(k, leaf.shape, jnp.float32), dtype)
        for k, leaf in zip(keys, leaves)])


def _differentiable(x) -> bool:
    """Float inputs are differentiated; integer ones (ids) are constants."""
    return all(jnp.issubdtype(dtype_of(a), jnp.inexact) for a in jax.tree_util.tree_leaves(x))


@functools.lru_cache(maxsize=256)
def _program(layer: Layer, train: bool, diff_x: bool):
    """One jitted program per layer and mode (and, by jit, per shape and dtype), run under
    x64: (params, state, x, g, key) in the low dtype -> (hand, autodiff) in that dtype,
    then the float64 truth (autodiff at the same point, upcast) and Σ y ⊙ g in float64."""

    def vjp(params, state, x, g, key):
        run = lambda p, xx: layer.apply(p, state, xx, train=train, key=key)[0]  # noqa: E731
        if not diff_x:
            y, pull = jax.vjp(lambda p: run(p, x), params)
            return (pull(g)[0],), y
        y, pull = jax.vjp(run, params, x)
        return pull(g), y

    def program(params, state, x, g, key):
        _, _, cache = layer.forward(params, state, x, train=train, key=key)
        hand = layer.backward(params, cache, g)
        auto = vjp(params, state, x, g, key)[0]
        up = [_upcast(t) for t in (params, state, x, g)]
        exact, y = vjp(*up, key)
        dot = sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(y),
                                                 jax.tree_util.tree_leaves(up[3])))
        return (hand if diff_x else hand[:1]), auto, exact, dot

    return jax.jit(program)


def _upcast(tree):
    """Floating leaves as float64 (inside the program: a convert, no transfer)."""
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _gradients(layer, params, state, x, g, train, key):
    """([(path, hand, autodiff, truth)] per parameter leaf and the input, as float64 NumPy;
    Σ y ⊙ g in float64; notes on hand gradients whose dtype is not the leaf's own)."""
    diff_x = _differentiable(x)
    # Under x64 throughout, so random draws inside the model (dropout masks) are the same
    # bits in the low-precision and the float64 run.
    with jax.enable_x64(True):
        hand, auto, exact, loss = _program(layer, bool(train), diff_x)(params, state, x, g, key)
    if jax.tree_util.tree_structure(hand[0]) != jax.tree_util.tree_structure(auto[0]):
        raise FuncnetError(f"check_precision: {layer.name}'s backward returned parameter "
                           f"gradients of structure {jax.tree_util.tree_structure(hand[0])}, but "
                           f"the params have {jax.tree_util.tree_structure(auto[0])}")
    if diff_x and jax.tree_util.tree_structure(hand[1]) != jax.tree_util.tree_structure(auto[1]):
        raise FuncnetError(f"check_precision: {layer.name}'s backward returned an input gradient "
                           f"of structure {jax.tree_util.tree_structure(hand[1])}, the input is "
                           f"{jax.tree_util.tree_structure(auto[1])}")
    paths = [p for p, _ in param_paths(layer, auto[0])]
    if diff_x:
        paths += ["input" + jax.tree_util.keystr(k)
                  for k, _ in jax.tree_util.tree_flatten_with_path(auto[1])[0]]
    trees = [jax.tree_util.tree_leaves(t) for t in (hand, auto, exact)]
    notes = [f"{path}: the hand gradient is {h.dtype}, the leaf {a.dtype}"
             for path, h, a in zip(paths, trees[0], trees[1]) if h.dtype != a.dtype]
    return [(path,) + tuple(np.asarray(t, np.float64) for t in ts)
            for path, *ts in zip(paths, *trees)], float(loss), notes


def error(g, truth) -> float:
    """max |g − truth| / max |truth| (max |g − truth| when the truth is zero); inf when g is
    not finite where the truth is."""
    g, truth = np.asarray(g, np.float64), np.asarray(truth, np.float64)
    if g.size == 0:
        return 0.0
    if not np.all(np.isfinite(g) | ~np.isfinite(truth)):
        return float("inf")
    scale = float(np.max(np.abs(truth)))
    return float(np.max(np.abs(g - truth))) / (scale if scale > 0 else 1.0)


def passes(hand_error, auto_error, factor, floor) -> bool:
    """The rule: hand <= factor × autodiff, or hand under the floor."""
    return bool(hand_error <= floor or hand_error <= factor * auto_error)


def _row(path, hand, auto, truth, factor, floor) -> GradientRow:
    e_hand, e_auto = error(hand, truth), error(auto, truth)
    diff = np.abs(np.nan_to_num(hand - truth, nan=np.inf))
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)) \
        if diff.size else None
    values = {} if index is None else {
        "hand": float(hand[index]), "autodiff": float(auto[index]), "float64": float(truth[index])}
    return GradientRow(path, np.shape(truth), e_hand, e_auto, float(diff.max(initial=0.0)),
                       passes(e_hand, e_auto, factor, floor), index, values)


def _notes(rows, factor, floor, ulps, name) -> list:
    rule = (f"error = max |g - g64| / max |g64| per leaf (g64: float64 truth); a leaf passes "
            f"when hand <= {factor:g} x autodiff or hand <= {floor:.1e} ({ulps:g} ulps of "
            f"{name})")
    by_floor = [r.path for r in rows if r.ok and r.manual_vs_autodiff > factor * r.autodiff_vs_numerical]
    return [rule] + ([f"under the floor only: {', '.join(by_floor)}"] if by_floor else [])


def _blame(model, params, state, x, train, key, factor, floor, dtype) -> list:
    """The localization notes of a failed check (never raises: they only add information)."""
    try:
        return _localize(model, params, state, x, train, key, factor, floor, dtype)
    except Exception as e:  # noqa: BLE001 -- a layer may not support the per-layer replay
        return [f"could not localize the loss of precision ({type(e).__name__}: {e})"]


def _localize(model, params, state, x, train, key, factor, floor, dtype) -> list:
    """Each leaf layer checked alone, at the input it sees inside the model (the forward
    replayed by the containers' kinds, in float64, then rounded to the model's dtype), with
    its own random upstream gradient: a note per layer that loses precision."""
    name = jnp.dtype(dtype).name
    with jax.enable_x64(True):
        up = [_precision.cast(t, jnp.float64) for t in (params, state, x)]
        found, _ = _calls(model, *up, train, key)
    notes = []
    for i, (path, layer, p, s, xin, k, leaf) in enumerate(found):
        if not leaf:
            continue
        p, s, xin = (_precision.cast(t, dtype) for t in (p, s, xin))
        g = _cotangent(layer, p, s, xin, train, k, jax.random.fold_in(key, i), dtype)
        rows = [_row(*r, factor, floor) for r in _gradients(layer, p, s, xin, g, train, k)[0]]
        bad = [r for r in rows if not r.ok]
        if bad:
            label = " > ".join(path) or layer.name
            what = ", ".join(f"{_tail(r.path, layer)} (hand {r.manual_vs_autodiff:.1e}, "
                             f"autodiff {r.autodiff_vs_numerical:.1e})" for r in bad)
            notes.append(f"{label}: loses precision in {name}: {what}")
    return notes or [f"every layer alone keeps its precision in {name}: the loss is in how "
                     f"they are composed (a container's backward)"]


def _tail(path, layer) -> str:
    """A leaf's path inside its layer ("gamma"), without the layer's own name."""
    prefix = f"{layer.name}/"
    return path[len(prefix):] if path.startswith(prefix) else path
