"""check_gradients: a model's hand-derived backward vs jax.grad vs finite differences."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _random
from ..core import FuncnetError, Layer, param_paths
from . import _precision, _probe, kernels, recheck
from .fused import fused_check, step
from .kernels import PROJECT_ABOVE
from .localize import localize
from .numerical import coordinate_differences
from .report import Comparison, GradientReport, combined_row, leaf_row
from .settings import Settings, samples_option

__all__ = ["check_gradients"]


class _Problem(NamedTuple):
    """What check_gradients differentiates besides the point (params, x): the model run
    with `key` (its dropout masks: the model's key, not the checker's) in mode `train`,
    and loss(y, labels) (None: Σ y ⊙ g). `seed` is the user's, for the localisation."""

    model: Layer
    state: object
    labels: object
    loss: object
    train: bool
    key: object
    seed: int


def check_gradients(model: Layer, params, state, x, labels=None, loss=None, *, train=False,
                    key=None, eps=1e-5, rtol=1e-6, manual_rtol=1e-8, atol=None,
                    samples: int | str | None = "auto", directions: int = 4,
                    sample_key=None, seed=0, chunk: int = 256, avoid_kinks=False,
                    project_above: int = PROJECT_ABOVE, raise_on_failure=False) -> GradientReport:
    """Compare the hand-derived gradients (`model.backward`), `jax.grad` and centred
    finite differences of loss(model(x), labels), for every parameter leaf and the input.

    Runs in float64 whatever the caller's setting (params, state and x are cast; the
    setting is restored after); where float64 is unavailable, in float32 with widened
    tolerances, and the report says so. With `loss=None` the objective is Σ y ⊙ g for a
    fixed, random, non-uniform upstream gradient g. An element passes when
    |a − b| <= tol · (|a| + |b|) + atol, with tol = `manual_rtol` for manual/autodiff and
    `rtol` for autodiff/numerical; atol (default 1e-6 · max(1, |loss|)) is the
    finite-difference noise floor, so gradients that are zero in truth pass.

    Manual vs autodiff is always element by element. Numerically: samples="auto" differences
    every coordinate of leaves up to `project_above` (2048) elements and checks bigger ones
    along `directions`
    random unit directions v (⟨autodiff, v⟩ vs (L(x + εv) − L(x − εv)) / 2ε: the projected
    check, as torch's fast mode; rows say "projected (k directions)"); `samples=k` differences
    k random coordinates per leaf instead; None every coordinate. `chunk` is
    numerical_grad's. Integer x (token ids) is a constant: no input row. The "auto" check is
    one compiled program and steps eps / 100 in float64 (fewer ReLU crossings in big nets).

    Randomness: `key` is the model's (dropout masks), as in `model.apply`. The checker's
    own draws come from one key, jax.random.PRNGKey(`seed`), one stream each
    (jax.random.fold_in): the upstream gradient g, the sampled coordinates, the random
    directions, the re-draws of avoid_kinks; `seed` also seeds the localisation of a
    failure. `sample_key`, when given, replaces the streams of the sampled coordinates and
    the random directions (only those).

    Elements at a kink (one-sided differences disagree) are counted, not failed;
    `avoid_kinks=True` instead re-draws params and float inputs with small noise (up to 3
    times) until none is at a kink; whole-number inputs (an embedding's ids) stay as they are.

    Returns a GradientReport (`.ok`, `.verdict`, one row per leaf; `print` it for the table).
    Never raises on a failed check unless `raise_on_failure=True` (then GradientCheckError,
    whose message is the report); bad input is a FuncnetError (a LayerError when the model
    rejects the input or the labels, naming the layer). When it fails, the notes name the first
    layer, from the output back, whose `backward` disagrees with autodiff of that layer alone.
    """
    with jax.enable_x64(True):
        settings = Settings(eps, rtol, atol, manual_rtol,
                            samples_option(samples, "check_gradients"), directions, project_above,
                            chunk, key=jax.random.PRNGKey(seed), sample_key=sample_key).within()
        dtype = settings.precision.dtype
        params, state, x = (_precision.cast(t, dtype) for t in (params, state, x))
        labels = None if labels is None else _precision.cast(labels, dtype)
        problem = _Problem(model, state, labels, loss, train, key, seed)
        for attempt in range(4 if avoid_kinks else 1):
            report = _check(problem, params, x, settings)
            if not report.kinks:
                break
            params, x = _redraw(params, x, kernels.stream(settings.key, kernels.REDRAW + attempt))
    return report.finish(raise_on_failure)


def _redraw(params, x, key):
    """params and x plus N(0, 1e-3²) noise (avoid_kinks). x is left alone when it holds ids:
    an integer dtype, or floats that are all whole numbers (embedding inputs)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves) + 1)
    moved = [leaf + _random.normal(k, leaf.shape, leaf.dtype, 1e-3)
             if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf for k, leaf in zip(keys, leaves)]
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact) and not bool(jnp.all(x == jnp.round(x))):
        x = x + _random.normal(keys[-1], x.shape, x.dtype, 1e-3)
    return jax.tree_util.tree_unflatten(treedef, moved), x


def _loss_parts(problem, params, x, settings):
    """(loss_fn(y, labels), dloss(y, labels)): the given loss, or Σ y ⊙ g."""
    if problem.loss is not None:
        return problem.loss, getattr(problem.loss, "grad", None) or jax.grad(problem.loss)
    y0 = jax.eval_shape(lambda: problem.model.apply(params, problem.state, x,
                                                    train=problem.train, key=problem.key)[0])
    g = kernels.normal(kernels.stream(settings.key, kernels.COTANGENTS), y0.shape,
                       settings.precision.dtype)
    return (lambda y, t: jnp.sum(y * g)), (lambda y, t: g)


def _functions(problem, params, x, settings):
    """(objective(point) -> the loss, exact(point) -> (loss, autodiff, manual), point):
    point = (params, x), or (params,) when x holds integer ids (a constant)."""
    model, state, labels, train, key = (problem.model, problem.state, problem.labels,
                                        problem.train, problem.key)
    diff_x = jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    loss_fn, dloss = _loss_parts(problem, params, x, settings)
    input_of = lambda point: point[1] if diff_x else x  # noqa: E731

    def objective(point):
        return loss_fn(model.apply(point[0], state, input_of(point), train=train, key=key)[0],
                       labels)

    def exact(point):
        value, auto = jax.value_and_grad(objective)(point)
        y, _, cache = model.forward(point[0], state, input_of(point), train=train, key=key)
        man_p, man_x = model.backward(point[0], cache, dloss(y, labels))
        return value, auto, (man_p, man_x) if diff_x else (man_p,)

    return objective, exact, (params, x) if diff_x else (params,)


class _Numerics(NamedTuple):
    """The exact gradients (value, auto, man as point-shaped trees) and, per leaf, the
    (centred, forward, backward) differences (None where not differenced); for projected
    leaves j, vs[j] its directions and along[j] the triple along them; eps the step taken."""

    value: float
    auto: object
    man: object
    coords: list
    vs: dict
    along: dict
    eps: float
    unsampled: list


def _numerics(objective, exact, point, settings):
    """The exact gradients and the differences: samples="auto" as one compiled program
    (fused.py), else numerical_grad's kernel (every or `samples` coordinates)."""
    leaves, treedef = jax.tree_util.tree_flatten(point)
    if settings.samples == "auto":
        big = [j for j, leaf in enumerate(leaves) if leaf.size > settings.project_above]
        rng = kernels.key_rng(settings.sampling_key(kernels.DIRECTIONS))
        vs = {j: kernels.random_directions(rng, leaves[j], settings.directions) for j in big}
        last = len(leaves) - 1 if len(point) == 2 else -1  # the input: batched, not a kernel
        kernels_ = [j for j, leaf in enumerate(leaves) if leaf.ndim >= 3 and j != last]
        value, auto, man, coords, along = fused_check(objective, exact, point, big, vs,
                                                      settings.eps, one_by_one=kernels_)
        triples = [coords.get(j) for j in range(len(leaves))]
        return _Numerics(float(value), auto, man, triples, vs, along, step(settings.eps, leaves),
                         [None] * len(leaves))
    value, auto, man = jax.jit(exact)(point)  # compiled: much faster than op by op
    samples = settings.samples
    picked = kernels.sample_coordinates(leaves, samples, None if samples is None else
                                        settings.sampling_key(kernels.COORDINATES))
    triples = coordinate_differences(objective, leaves, treedef, picked, settings.eps,
                                     chunk=settings.chunk)
    unsampled = [np.ones(leaf.shape, bool) for leaf in leaves]
    for mask, p in zip(unsampled, picked):
        mask.flat[p] = False
    return _Numerics(float(value), auto, man, triples, {}, {}, settings.eps, unsampled)


def _check(problem, params, x, settings):
    """One pass of check_gradients at (params, x): the report."""
    objective, exact, point = _functions(problem, params, x, settings)
    got = _numerics(objective, exact, point, settings)
    man, auto = got.man, got.auto
    if jax.tree_util.tree_structure(man[0]) != jax.tree_util.tree_structure(auto[0]):
        raise FuncnetError(f"check_gradients: the model's backward returned parameter gradients "
                           f"of structure {jax.tree_util.tree_structure(man[0])}, but the "
                           f"params have {jax.tree_util.tree_structure(auto[0])}")
    diff_x = len(point) == 2
    paths = [path for path, _ in param_paths(problem.model, man[0])] + (["input"] if diff_x else [])
    m_leaves, a_leaves = jax.tree_util.tree_leaves(man), jax.tree_util.tree_leaves(auto)
    for path, m, a in zip(paths, m_leaves, a_leaves):
        if np.shape(m) != np.shape(a):
            raise FuncnetError(f"check_gradients: backward gave {path} a gradient of shape "
                               f"{np.shape(m)}, expected {np.shape(a)}")
    floor = settings.floor(abs(got.value))
    # manual/autodiff: round-off only
    floors = (floor * 1e-3 * (1 if settings.precision.f64 else 10), floor)
    rtols = (settings.manual_rtol, settings.rtol)
    again = _Again(objective, point, got.eps)
    rows = [_row(path, m, a, got, j, rtols, floors, settings.directions, again)
            for j, (path, m, a) in enumerate(zip(paths, m_leaves, a_leaves))]
    notes = settings.precision.note(floor, got.eps, settings.rtol)
    if not diff_x:
        notes.append(f"input: constant ({jnp.asarray(x).dtype} ids), not differentiated")
    if not all(r.ok for r in rows):
        manual_ok = all(not np.any(kernels.excess(m, a, rtols[0], floors[0]) > 0)
                        for m, a in zip(m_leaves, a_leaves))
        notes.append(_blame(problem, params, x, manual_ok))
    return GradientReport(rows, got.value, {"rtol": settings.rtol, "manual_rtol": settings.manual_rtol,
                                            "atol": floor, "eps": got.eps}, notes)


def _row(path, m, a, got, j, rtols, floors, directions, again):
    """Leaf j's row: manual vs autodiff element by element and autodiff vs the differences,
    coordinate by coordinate or (a projected leaf) along its random directions; elements at
    a kink, among the failing ones, excused; a few failing ones differenced again at ε/2
    (their error bars: recheck.judge)."""
    triple = got.coords[j]
    num, kinks, unsure = np.full(np.shape(a), np.nan), np.zeros(np.shape(a), bool), None
    if triple is not None:
        manual_fails = kernels.excess(m, a, rtols[0], floors[0]) > 0
        num, kinks, unsure = recheck.judge(
            a, triple[0], triple[1], triple[2], rtols[1], floors[1], got.eps,
            lambda mask: again.fine(j, np.flatnonzero(mask)), scale=abs(got.value),
            also=manual_fails, kink_limit=kernels.KINK_LIMIT)
    named = [("manual", m), ("autodiff", a), ("numerical", num)]
    if j not in got.along:
        return leaf_row(path, named, [Comparison(0, 1, rtols[0], floors[0]), Comparison(
            1, 2, rtols[1], floors[1], skip=got.unsampled[j], unreliable=unsure)], kinks)
    full = leaf_row(path, named[:2], [(0, 1, rtols[0], floors[0])], kinks)
    vs = np.asarray(got.vs[j], np.float64)
    dots = np.tensordot(vs, np.asarray(a, np.float64), axes=np.ndim(a))
    num_v, fw, bw = got.along[j]
    proj = recheck.projected_row("", np.shape(a), dots, num_v, kernels.kink_mask(fw, bw, floors[1]),
                                 vs, recheck.Probe(again.along(j), np.asarray(a), "autodiff"),
                                 rtols[1], floors[1], got.eps, abs(got.value))
    return combined_row(f"{path} projected ({directions} directions)", np.shape(a), full, proj)


class _Again:
    """The objective differenced again, only where a comparison fails: `fine(j, coords)`,
    the centred differences at half the step of leaf j's flat coordinates (leaf-shaped, NaN
    elsewhere; eager, vmapped over the few coordinates), and `along(j)(u, step)`, the
    centred difference along a direction u of leaf j (one compiled program, built on first
    use)."""

    def __init__(self, objective, point, step):
        self.leaves, self.treedef = jax.tree_util.tree_flatten(point)
        self.objective, self.step, self._compiled = objective, step, None

    def _value(self, leaves):
        return self.objective(jax.tree_util.tree_unflatten(self.treedef, leaves))

    def fine(self, j, coords):
        picked = [np.asarray(coords) if i == j else np.zeros(0, int) for i in range(len(self.leaves))]
        diffs, _ = _probe.differences(lambda ls: self._value(ls)[None], self.leaves, picked,
                                      self.step / 2)
        return diffs[j][0][0]

    def along(self, j):
        if self._compiled is None:
            self._compiled = jax.jit(self._value)

        def centred(u, size):
            moved = [list(self.leaves), list(self.leaves)]
            for side, sign in zip(moved, (1.0, -1.0)):
                side[j] = self.leaves[j] + sign * size * jnp.asarray(u, self.leaves[j].dtype)
            return (float(self._compiled(moved[0])) - float(self._compiled(moved[1]))) / (2 * size)
        return centred


def _blame(problem, params, x, manual_ok):
    """The localization note of a failed check (never raises: it only adds information).
    When every layer's and container's backward agrees with autodiff at its own inputs, the
    fault is outside the backwards: in the loss's hand gradient (manual and autodiff
    differ), or in JAX's derivative of the forward (they agree; the differences do not)."""
    try:
        where = localize(problem.model, params, problem.state, x, train=problem.train,
                         key=problem.key, seed=problem.seed)
    except Exception as e:  # noqa: BLE001 -- a layer may not support the per-layer replay
        return f"could not localize the failure ({type(e).__name__}: {e})"
    if where:
        return where
    if not manual_ok:
        return ("every layer's backward agrees with autodiff at its inputs: the manual gradient "
                "differs before the model, in the upstream gradient (the loss's `.grad`)")
    return ("the hand backward agrees with autodiff, but autodiff disagrees with the finite "
            "differences: JAX's derivative of the forward is wrong (a custom_vjp or custom_jvp "
            "rule, a stop_gradient, a non-differentiable op inside a layer's forward); check "
            "such a function with fn.check_vjp")
