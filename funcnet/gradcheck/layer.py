"""check_layer: the whole battery for a user's own fn.Layer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..core import Layer, infer_output_shape
from ..errors import FuncnetError
from .model import check_gradients
from .report import GradientReport, _to64

__all__ = ["check_layer"]


def check_layer(layer: Layer, input_shape, *, key=None, modes=(False, True), rtol=1e-6,
                samples=None, raise_on_failure=False) -> GradientReport:
    """Check a Layer's contract, in float64 (scoped), each property by name:
    `init` (runs, creates float64 params), `output_shape` (agrees with what apply
    returns), then per mode (`train=False`, `train=True`): `pure` (two calls equal),
    `jit` (jit equals eager), `vmap` (vmapped over a stack of two inputs equals two
    calls), and the three-way gradient check of `backward` vs autodiff vs finite
    differences for params and input (check_gradients; rows prefixed by the mode).
    `report.properties` maps each property to pass/fail, `report.notes` say why one
    failed; never raises on a failure unless `raise_on_failure`.

    Returns a GradientReport whose `properties` hold each property's verdict.
    Raises GradientCheckError only with `raise_on_failure=True`; a `layer` that is not a
    Layer is a FuncnetError.
    """
    if not isinstance(layer, Layer):
        raise FuncnetError(f"check_layer: expected an fn.Layer, got {type(layer).__name__}")
    shape = tuple(int(d) for d in input_shape)
    key = jax.random.PRNGKey(0) if key is None else key
    report = GradientReport([], 0.0, {"rtol": rtol}, title="check_layer")
    with jax.enable_x64(True):
        made = _property(report, "init", lambda: _init(layer, key, shape))
        if made is None:
            return report.finish(raise_on_failure)
        params, state = made
        x = _random.normal(jax.random.fold_in(key, 1), shape, jnp.float64)
        _property(report, "output_shape", lambda: _output_shape(layer, params, state, x, shape))
        for train in modes:
            _mode(report, layer, params, state, x, bool(train), jax.random.fold_in(key, 2),
                  rtol, samples)
    return report.finish(raise_on_failure)


def _property(report, name, thunk):
    """Record whether thunk() holds (returns a value and raises nothing); the reason if not."""
    try:
        value = thunk()
    except Exception as e:  # noqa: BLE001 -- a user's layer may raise anything
        report.properties[name] = False
        first = (str(e).strip().splitlines() or [""])[0]
        report.notes.append(f"{name}: {type(e).__name__}: {first}")
        return None
    report.properties[name] = True
    return value


def _init(layer, key, shape):
    try:
        params, state = layer.init(key, shape, dtype=jnp.float64)
    except TypeError:  # a user's init without the dtype argument
        params, state = layer.init(key, shape)
    return _to64(params), _to64(state)


def _output_shape(layer, params, state, x, shape):
    declared = infer_output_shape(layer, shape, params, state)
    actual = tuple(layer.apply(params, state, x)[0].shape)
    if declared != actual:
        raise AssertionError(f"output_shape says {declared} for input {shape}, apply returns {actual}")
    return True


def _same(a, b, what):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        if np.shape(u) != np.shape(v) or not np.allclose(u, v, rtol=1e-10, atol=1e-12, equal_nan=True):
            worst = np.max(np.abs(np.asarray(u) - np.asarray(v))) if np.shape(u) == np.shape(v) else None
            raise AssertionError(f"{what} (max |difference| {worst})")
    return True


def _mode(report, layer, params, state, x, train, key, rtol, samples):
    """The per-mode properties and gradient rows for train=`train`."""
    tag = "train" if train else "eval"
    run = lambda p, s, xx: layer.apply(p, s, xx, train=train, key=key)  # noqa: E731
    first = _property(report, f"apply runs ({tag})", lambda: run(params, state, x))
    if first is None:
        return
    _property(report, f"pure ({tag})", lambda: _same(
        first, run(params, state, x), "two calls with the same arguments differ"))
    _property(report, f"jit ({tag})", lambda: _same(
        first, jax.jit(run)(params, state, x), "jax.jit(apply) differs from apply"))
    x2 = jnp.stack([x, x[::-1] * 0.5 + 0.1])
    _property(report, f"vmap ({tag})", lambda: _same(
        jax.vmap(lambda xx: run(params, state, xx)[0])(x2),
        jnp.stack([run(params, state, x2[0])[0], run(params, state, x2[1])[0]]),
        "jax.vmap(apply) over a stack of inputs differs from apply on each"))
    grads = _property(report, f"backward runs ({tag})", lambda: check_gradients(
        layer, params, state, x, train=train, key=key, rtol=rtol, samples=samples))
    if grads is not None:
        for row in grads.rows:
            row.path = f"[{tag}] {row.path}"
        report.rows.extend(grads.rows)
        report.loss = grads.loss
        report.tolerances.update(grads.tolerances)
