"""Jit-compiled training with optax: TrainState, make_step, evaluate (what a JAX user copies).

    opt = optax.adam(1e-3)
    ts = fn.train.init_train_state(model, opt, x[:64].shape, jax.random.PRNGKey(0))
    step = fn.train.make_step(model, opt, fn.losses.softmax_cross_entropy)
    for b in range(100):
        ts, metrics = step(ts, x[b * 64:(b + 1) * 64], y[b * 64:(b + 1) * 64])
    fn.train.evaluate(model, ts.params, ts.state, x_test, y_test)

One update (`make_step`) is the textbook mini-batch gradient step, with the optimizer as
an optax transformation (Goodfellow et al., Deep Learning, algorithm 8.1):

    g = ∇_θ [ L(f_θ(x_B), y_B) + ½ λ Σ w² ],   (u, s) = opt.update(g, s, θ),   θ ← θ + u

where L averages over the batch B (batch gradient descent when B is the whole training
set). Gradients are `jax.grad` of the model's `apply`; wrap the model in
`fn.with_manual_grads` to train on the hand-derived backward formulas instead.

The `fit` driver (epochs, shuffling, validation, checkpoints and resume, progress) is
`funcnet.fit`, built on this module; `fn.train.fit`, `fn.train.History` and
`fn.train.NonFiniteLossError` are its names, read from there on first use (see
`__getattr__` below), so this module never imports it.

Mixed precision: `make_step(..., compute_dtype=jnp.bfloat16)` computes in bfloat16 on
casts of float32 master parameters, and `loss_scale="dynamic"` adds loss scaling for
float16 (see `funcnet.mixed_precision` for the policy and its references).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import losses as losses_mod
from . import _random, sharding
from . import mixed_precision as mp
from .mixed_precision import LossScale, LossScalePolicy, dynamic_loss_scale
from ._validate import as_int
from .core import Layer, check_model_input
from .errors import FuncnetError, LayerError

__all__ = ["TrainState", "LossScale", "LossScalePolicy", "dynamic_loss_scale",
           "init_train_state", "make_step", "evaluate", "batch_order",
           "fit", "History", "NonFiniteLossError"]  # noqa: F822 - funcnet.fit's, see __getattr__


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree).

    params, state: the model's parameters and its state (batch-norm running statistics);
    opt_state: the optax optimizer's state; step: the number of steps taken (int32 scalar;
    a step skipped by loss scaling counts); key: the raw PRNG key (uint32[2]) the next
    step's dropout key is split from; loss_scale: the `LossScale` of a run with loss
    scaling, else None (its default: code that builds a TrainState of five fields, and
    checkpoints written before it existed, still work).
    """

    params: Any
    state: Any
    opt_state: Any
    step: Any
    key: Any
    loss_scale: Any = None


# ----------------------------------------------------------------------------- helpers

def _raw_key(key, where):
    """A raw uint32 PRNG key (typed keys are unwrapped), checked."""
    if key is None:
        raise FuncnetError(f"{where}: key is required, e.g. key=jax.random.PRNGKey(0)")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if key.dtype != jnp.uint32 or key.ndim != 1:
        raise FuncnetError(f"{where}: key must be a PRNG key such as jax.random.PRNGKey(0), got an "
                           f"array of dtype {key.dtype} and shape {tuple(key.shape)}")
    return key


def _is_optimizer(x) -> bool:
    return hasattr(x, "init") and hasattr(x, "update")


def _check_optimizer(optimizer, where):
    if not _is_optimizer(optimizer):
        raise FuncnetError(f"{where}: optimizer must be an optax GradientTransformation (with init "
                           f"and update), e.g. optax.sgd(0.1), got {optimizer!r}")


TASKS = ("classification", "binary", "regression")


def _unwrap(loss):
    """The function under any functools.partial layers."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return loss


def _task(loss, y_dtype, out_ndim):
    """"classification", "binary" or "regression": it decides which metrics are reported.

    A loss names its task in a `task` attribute (fn.losses' do; functools.partial is seen
    through); without one, integer labels with (batch, classes) outputs are classification
    and anything else regression."""
    task = getattr(loss, "task", None) or getattr(_unwrap(loss), "task", None)
    if task is not None:
        if task not in TASKS:
            raise FuncnetError(f"loss.task must be one of {', '.join(TASKS)}, got {task!r}")
        return task
    if jnp.issubdtype(y_dtype, jnp.integer) and out_ndim >= 2:
        return "classification"
    return "regression"


def _accuracy(task, out, y):
    if task == "classification":
        return losses_mod.accuracy(out, y)
    return jnp.mean((out > 0) == (y > 0.5))


def _default_loss(y):
    return (losses_mod.softmax_cross_entropy if np.issubdtype(np.asarray(y).dtype, np.integer)
            else losses_mod.mse)


def _check_l2(l2, where):
    if not isinstance(l2, (int, float)) or isinstance(l2, bool) or not math.isfinite(l2) or l2 < 0:
        raise FuncnetError(f"{where}: l2 must be a finite number >= 0, got {l2!r}")


# ----------------------------------------------------------------------------- the step

def init_train_state(model: Layer, optimizer, input_shape, key, *, dtype=None,
                     loss_scale=None) -> TrainState:
    """A fresh TrainState: `model.init` from one half of `key`, the other half for steps.
    model.init and optimizer.init run as one compiled program (not dozens of small ones).
    `dtype` is the parameters' (master) dtype; with `loss_scale` (see `make_step`) the
    state starts with that policy's scale.

    Returns the TrainState. Raises a FuncnetError for a key that is not a PRNG key or an
    optimizer that is not an optax GradientTransformation, and what `model.init` raises (a
    LayerError naming the layer) for an input shape the model cannot take.
    """
    _check_optimizer(optimizer, "init_train_state")
    policy = mp.resolve_loss_scale(loss_scale, "init_train_state")
    k_init, k_step = _random.split(_raw_key(key, "init_train_state"))
    init = _jitted_init(model, optimizer, tuple(input_shape), dtype)
    jax.eval_shape(init, k_init, k_step)  # shape errors (LayerError) before compiling
    ts = init(k_init, k_step)
    return ts if policy is None else ts._replace(loss_scale=mp.init_loss_scale(policy))


def _new_train_state(optimizer, params, state, k_step) -> TrainState:
    """The one place a TrainState is put together: step 0, the optimizer's fresh state."""
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), k_step)


# Compiled functions, reused while the same model, loss and optimizer objects come back
# (e.g. fit called again in a notebook): jax.jit caches by function, and each call of
# make_step would otherwise build a new one and compile it again.
_CACHE: dict = {}


def _cached(key, build):
    try:
        hash(key)
    except TypeError:  # e.g. a hand-made Layer holding a list: just don't cache
        return build()
    if key not in _CACHE:
        if len(_CACHE) >= 64:
            _CACHE.clear()
        _CACHE[key] = build()
    return _CACHE[key]


def _jitted_init(model, optimizer, input_shape, dtype):
    """model.init and optimizer.init as one compiled program (not dozens of small ones),
    its normal draws batched (same values, a fraction of the compile: _random.py)."""

    def build():
        @_random.batched_normals
        def init(k_init, k_step):
            return _new_train_state(optimizer, *model.init(k_init, input_shape, dtype), k_step)

        return jax.jit(init)

    return _cached(("init", model, optimizer, tuple(input_shape), dtype), build)


def _objective(model, loss, l2, dtype, scale, state, x, y, key):
    """params -> (the loss to differentiate, (data loss, float32 outputs, new state)).

    With a compute `dtype`, params, the model state and float inputs are cast to it and the
    outputs back to float32 before the loss (and the new state to the master dtype): the
    gradient of the cast carries the float32 loss gradient into the compute dtype and the
    parameter gradients back to float32. With a loss `scale` the loss is multiplied by it."""

    def objective(params):
        if dtype is None:
            out, new_state = model.apply(params, state, x, train=True, key=key)
        else:
            p, s, xc = mp.cast_floats((params, state, x), dtype)
            out, new_state = model.apply(p, s, xc, train=True, key=key)
            out, new_state = mp.to_float32(out), mp.cast_like(new_state, state)
        value = loss(out, y)
        total = value + losses_mod.l2(params, l2) if l2 else value
        return (total if scale is None else total * scale), (value, out, new_state)

    return objective


def _skip_if_not_finite(old: TrainState, new: TrainState, grads, ls, policy, metrics):
    """`new`, or -- when a gradient is not finite -- `old`'s params, model state and
    optimizer state with `new`'s step and key; the loss scale moves on either way."""
    finite = mp.all_finite(grads)

    def pick(a, b):
        return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), a, b)

    new = new._replace(params=pick(new.params, old.params), state=pick(new.state, old.state),
                       opt_state=pick(new.opt_state, old.opt_state),
                       loss_scale=mp.next_loss_scale(ls, finite, policy))
    return new, dict(metrics, skipped=(~finite).astype(jnp.int32), loss_scale=ls.scale)


def _step_function(model: Layer, loss, optimizer, l2, dtype=None, policy=None):
    def step(ts: TrainState, x, y):
        key, dropout_key = jax.random.split(ts.key)
        ls = None if policy is None else mp.current_loss_scale(ts.loss_scale, policy)
        objective = _objective(model, loss, l2, dtype, None if ls is None else ls.scale,
                               ts.state, x, y, dropout_key)
        (_, (value, out, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(ts.params)
        if ls is not None:  # unscale: g = grad(S L) / S
            grads = jax.tree_util.tree_map(lambda g: g / ls.scale.astype(g.dtype), grads)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        metrics = {"loss": value}
        task = _task(loss, y.dtype, out.ndim)
        if task != "regression":
            metrics["accuracy"] = _accuracy(task, out, y)
        new = TrainState(params, new_state, opt_state, ts.step + 1, key, ts.loss_scale)
        if ls is None:
            return new, metrics
        return _skip_if_not_finite(ts, new, grads, ls, policy, metrics)

    return step


def make_step(model: Layer, optimizer, loss, *, l2: float = 0.0, mesh=None, donate: bool = True,
              compute_dtype=None, loss_scale=None):
    """A jit-compiled, pure update `step(train_state, x, y) -> (train_state, metrics)`.

    The arguments come in fit's order (model, optimizer, loss); the older order
    make_step(model, loss, optimizer) still works, with a DeprecationWarning.

    It splits the state's key (one half for this step's dropout masks, one carried on),
    computes the loss of `model.apply(..., train=True)` plus the L2 penalty ½ λ Σ w²
    (`fn.losses.l2`, λ = `l2`), its gradient with `jax.grad`, and applies
    `optimizer.update` (any optax GradientTransformation: sgd, momentum, adam, rmsprop,
    schedules, clipping chains). The model's new state (batch-norm running statistics)
    and `step + 1` go into the returned TrainState. metrics: {"loss": the data loss
    (without the penalty), "accuracy"} (accuracy for classification only).

    Mixed precision (`funcnet.mixed_precision`): `compute_dtype` (jnp.bfloat16,
    jnp.float16) runs the forward and backward passes on casts of the params, float
    inputs and model state, while params and optimizer state stay float32 and the loss,
    its gradient and the parameter gradients are float32; None or float32 inserts no
    casts. `loss_scale` ("dynamic", a fixed number > 0, or a `LossScalePolicy`) scales
    the loss before the backward pass and the gradients back after it; a step whose
    gradients are not finite is skipped (params, optimizer and model state unchanged) and
    the scale halves; "dynamic" starts at 2¹⁵ and doubles after 2000 consecutive finite
    steps. The scale is carried in `train_state.loss_scale` (a TrainState without one
    starts from the policy's), and metrics gain "skipped" (1 for a skipped step, else 0)
    and "loss_scale" (the scale this step used).

    The input train_state's buffers are donated (reused for the output) unless
    `donate=False`: do not use a TrainState after passing it in. With a `mesh`
    (`fn.sharding.make_mesh`), the step is compiled for data parallelism: train_state
    replicated, x and y sharded along the batch (see `fn.sharding`).

    Building it raises a FuncnetError for a `loss` that is not a function, an invalid `l2`,
    `compute_dtype` or `loss_scale`, or an optimizer that is not an optax
    GradientTransformation; the step raises the model's LayerError for a batch it cannot
    take.
    """
    if _is_optimizer(loss) and not _is_optimizer(optimizer):
        warnings.warn("make_step(model, loss, optimizer) is deprecated; pass "
                      "make_step(model, optimizer, loss), the order fit uses",
                      DeprecationWarning, stacklevel=2)
        optimizer, loss = loss, optimizer
    _check_optimizer(optimizer, "make_step")
    _check_l2(l2, "make_step")
    if not callable(loss):
        raise FuncnetError(f"make_step: loss must be a function (pred, target) -> scalar, got {loss!r}")
    dtype = mp.resolve_compute_dtype(compute_dtype, "make_step")
    policy = mp.resolve_loss_scale(loss_scale, "make_step")
    mesh = None if mesh is None else sharding.make_mesh(mesh)

    def build():
        step = _step_function(model, loss, optimizer, float(l2), dtype, policy)
        if mesh is not None:
            return sharding.data_parallel(step, mesh, donate=donate)
        return jax.jit(step, donate_argnums=(0,) if donate else ())

    return _cached(("step", model, loss, optimizer, float(l2), mesh, donate, dtype, policy), build)


# ----------------------------------------------------------------------------- evaluation

def _eval_function(model, loss, task, dtype=None):
    """Jitted sums over one padded batch; `mask` marks the real examples. With a compute
    `dtype` the model runs on casts to it and its outputs are widened to float32."""

    def sums(params, state, x, y, mask):
        if dtype is None:
            out, _ = model.apply(params, state, x, train=False)
        else:
            out = mp.to_float32(model.apply(*mp.cast_floats((params, state, x), dtype),
                                            train=False)[0])
        # Per-example losses: the batch mean of an example-averaged loss is exact whatever
        # the batch, so padding rows can be masked out.
        per = jax.vmap(lambda o, t: loss(o[None], t[None]))(out, y)
        result = {"loss": jnp.sum(per * mask), "count": jnp.sum(mask)}
        if task != "regression":
            if task == "classification":
                # the fraction of each example's positions (one, or its time steps)
                hit = jnp.mean((jnp.argmax(out, axis=-1) == y).reshape(out.shape[0], -1), axis=1)
            else:
                hit = jnp.mean(((out > 0) == (y > 0.5)).reshape(out.shape[0], -1), axis=1)
            result["correct"] = jnp.sum(hit * mask)
        else:
            err = (out - y).reshape(out.shape[0], -1)
            m = mask[:, None]
            result.update(sq=jnp.sum(err ** 2 * m), abs=jnp.sum(jnp.abs(err) * m),
                          elements=jnp.sum(mask) * err.shape[1])
        return result

    return _cached(("eval", model, loss, task, dtype), lambda: jax.jit(sums))


def evaluate(model: Layer, params, state, x, y, *, batch_size: int = 512, loss=None,
             compute_dtype=None, loss_scale=None) -> dict:
    """Metrics of the model (train=False) over all of (x, y), batch by batch.

    Returns {"loss", "accuracy"} for classification (integer labels; `loss` defaults to
    softmax cross-entropy) and binary cross-entropy, {"loss", "mse", "mae", "rmse"} for
    regression (float targets; `loss` defaults to mse), as Python floats. Every batch has
    the same shape (the last one is padded and its padding masked), so one compilation
    serves any data size, and the result is exact: the loss is the mean of per-example
    losses (for mse/mae/rmse the mean over all elements, rmse = √mse), whatever
    `batch_size`. Its default is `fit`'s `eval_batch_size`: evaluating fit's val_data
    afterwards reuses the program fit compiled for it. `compute_dtype` (see `make_step`)
    runs the model on casts of params, state and float inputs to it, the loss and metrics
    on its outputs widened to float32. `loss_scale` is accepted (so one policy can be
    passed to make_step, fit and evaluate alike), checked and ignored: evaluation has no
    backward pass to scale.

    Raises a FuncnetError (before anything compiles) for x and y of different lengths, empty
    data, an invalid `batch_size` or targets that do not fit the output, and a LayerError for
    inputs the model cannot take or labels out of range.
    """
    mp.resolve_loss_scale(loss_scale, "evaluate")
    return _evaluator(model, params, state, x, y, batch_size=batch_size, loss=loss,
                      compute_dtype=compute_dtype)(params, state)


def _evaluator(model: Layer, params, state, x, y, *, batch_size, loss, compute_dtype=None):
    """`evaluate` in two halves: the checks of (x, y) against the model (with parameters
    like `params`, `state`) once, then a function (params, state) -> metrics dict that runs
    the jitted sums; fit builds one for val_data and calls it after every epoch."""
    where = "evaluate"
    x, y = np.asarray(x), np.asarray(y)
    n = _check_pair(x, y, where)
    batch_size = as_int(batch_size, "batch_size", where, error=FuncnetError)
    dtype = mp.resolve_compute_dtype(compute_dtype, where)
    loss = _default_loss(y) if loss is None else loss
    task, _ = _check_data(model, params, state, x, y, loss, where)
    bs = min(int(batch_size), n)
    fn = _eval_function(model, loss, task, dtype)
    batches = []  # padded to one shape (no recompilation), with the mask of the real rows
    for start in range(0, n, bs):
        xb, yb = x[start:start + bs], y[start:start + bs]
        m = len(xb)
        mask = np.zeros(bs, np.float32)
        mask[:m] = 1
        if m < bs:
            xb = np.concatenate([xb, np.zeros((bs - m,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((bs - m,) + yb.shape[1:], yb.dtype)])
        batches.append((xb, yb, mask))

    def run(params, state) -> dict:
        if not all(getattr(a, "is_fully_addressable", True)
                   for a in jax.tree_util.tree_leaves((params, state))):
            # Replicated over several processes: every process evaluates its own copy.
            params, state = jax.device_get((params, state))
        parts = []
        for xb, yb, mask in batches:
            parts.append(fn(params, state, xb, yb, mask))
            if len(parts) % 8 == 0:  # bounded dispatch-ahead (see fn.sharding on XLA:CPU meshes)
                jax.block_until_ready(parts[-1])
        parts = jax.device_get(parts)  # one host sync; the sums are added in float64
        totals = {k: float(sum(np.float64(p[k]) for p in parts)) for k in parts[0]}
        count = totals["count"]
        result = {"loss": totals["loss"] / count}
        if task != "regression":
            result["accuracy"] = totals["correct"] / count
        else:
            mse = totals["sq"] / totals["elements"]
            result.update(mse=mse, mae=totals["abs"] / totals["elements"], rmse=math.sqrt(mse))
            if _unwrap(loss) is losses_mod.rmse:  # rmse is not a mean of per-example values
                result["loss"] = result["rmse"]
        return result

    return run


# ----------------------------------------------------------------------------- validation

def _check_pair(x, y, where) -> int:
    if np.ndim(x) < 1 or np.ndim(y) < 1:
        raise FuncnetError(f"{where}: x and y must be arrays with a batch axis, got shapes "
                           f"{np.shape(x)} and {np.shape(y)}")
    n = int(np.shape(x)[0])
    if n != np.shape(y)[0]:
        raise FuncnetError(f"{where}: x has {n} examples but y has {np.shape(y)[0]}; they must "
                           f"have the same length")
    if n == 0:
        raise FuncnetError(f"{where}: the data is empty (0 examples)")
    return n


def _output_shape(model, params, state, x_shape, where):
    """The model's output shape for inputs of `x_shape`, or a LayerError saying so."""
    x = jax.ShapeDtypeStruct((1,) + tuple(x_shape[1:]), jnp.float32)
    try:
        out = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], params, state, x)
    except LayerError as e:
        raise LayerError(f"{where}: the model does not take inputs of shape "
                         f"(batch,) + {tuple(x_shape[1:])}: {e}") from None
    return tuple(out.shape)


def _check_data(model, params, state, x, y, loss, where):
    """(task, output shape): (x, y) checked against the model with parameters like
    `params`, `state` -- x against its input, y against its output, ids against its
    embeddings -- before anything is compiled."""
    out_shape = _output_shape(model, params, state, np.shape(x), where)
    task = _task(loss, y.dtype, len(out_shape))
    _check_targets(y, out_shape, task, where)
    check_model_input(model, params, x, where)  # e.g. ids into an embedding: XLA would clamp them
    return task, out_shape


def _check_targets(y, out_shape, task, where):
    """Class labels for the model's logits (`fn.losses.check_labels`: shape, integer dtype,
    range), or targets of its output's shape; `out_shape`'s batch is ignored."""
    if task == "classification":
        losses_mod.check_labels((len(y),) + tuple(out_shape[1:]), y, where)
    elif tuple(np.shape(y)[1:]) != tuple(out_shape[1:]):
        raise FuncnetError(f"{where}: targets of shape (batch,) + {tuple(np.shape(y)[1:])} do not "
                           f"match the model's output (batch,) + {tuple(out_shape[1:])}"
                           + ("; integer class labels need a loss like softmax_cross_entropy"
                              if task == "regression" and np.ndim(y) == 1 else ""))


def batch_order(key, epoch: int, n: int) -> np.ndarray:
    """The order in which `fit(key=key)` visits the n training examples in epoch `epoch`
    (0-based). Epoch e's batch b is examples order[b·B : (b+1)·B].

    It is `fn.data.shuffle(fold_in(data key, e), n)`, the order `fn.data.batches` shuffles
    in: a pure function of key and epoch. The data key is the second of
    jax.random.split(key, 3).

    Returns an int NumPy array of length n (a permutation of 0 … n − 1).
    """
    order = _cached(("order", int(n)), lambda: jax.jit(
        lambda k, e: jax.random.permutation(jax.random.fold_in(_fit_keys(k)[0], e), n)))
    # one compiled program per epoch's order instead of an eager split, fold_in and
    # permutation (integer ops only: the same order as `data.shuffle`, bit for bit)
    return np.asarray(order(_raw_key(key, "batch_order"), np.uint32(epoch)))


def _fit_keys(key):
    """(data key, init key, step key) of fit's key (`batch_order` reads the data key)."""
    k_init, k_data, k_step = _random.split(key, 3)
    return k_data, k_init, k_step


# ----------------------------------------------------------------------------- fit's names

def __getattr__(name):
    """fit's names, read here as before fit had its own module (`fn.train.fit`, History,
    NonFiniteLossError, and whatever else funcnet.fit defines): imported on first use
    (PEP 562), so data still flows one way, fit -> train."""
    if not name.startswith("__"):
        import importlib
        fit_module = importlib.import_module(f"{__package__}.fit")
        if hasattr(fit_module, name):
            return getattr(fit_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"fit", "History", "NonFiniteLossError"})
