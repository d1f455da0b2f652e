"""`fit`: the training driver over `funcnet.train`'s step -- settings, resume, checkpoints,
metrics, progress and the epoch loop. Also spelled `fn.train.fit`.

    opt = optax.adam(1e-3)
    train_state, history = fn.train.fit(model, opt, (x, y), loss=fn.losses.softmax_cross_entropy,
                                        epochs=10, batch_size=64, key=jax.random.PRNGKey(0),
                                        val_data=(x_val, y_val))
    fn.train.evaluate(model, train_state.params, train_state.state, x_test, y_test)

Every step is `fn.train.make_step`'s update (see funcnet.train for the formula).

Reproducibility: `fit(key=k)` splits k into (init, data, step) keys. Epoch e visits the
examples in the order `batch_order(k, e, N)` = `fn.data.shuffle(fold_in(data key, e), N)`
(the order `fn.data.batches` shuffles in), and
each step splits the TrainState's key for its dropout masks, so a run is a pure function of
its inputs: a run resumed from a checkpoint continues bit for bit as if never stopped.

The pieces, in the order a call meets them: `_fit_settings` checks and resolves the
arguments; `_start` checks the data against the model and builds, restores or places the
first TrainState; `_Checkpoints` saves and resumes; `_Metrics` fetches the steps' metrics
and fills `History`; `_run` / `_run_epoch` are the loop.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import numpy as np

from . import checkpoint as ckpt
from . import data as data_mod
from . import distributed, sharding
from . import mixed_precision as mp
from ._validate import as_float, as_int
from .core import Layer
from .errors import FuncnetError, LayerError
from .train import (TrainState, _check_data, _check_l2, _check_optimizer, _check_pair,
                    _check_targets, _default_loss, _evaluator, _fit_keys, _jitted_init,
                    _new_train_state, _raw_key, batch_order, make_step)

__all__ = ["fit", "History", "NonFiniteLossError"]


class NonFiniteLossError(FuncnetError, FloatingPointError):
    """The training loss became NaN or infinite; `step` is the update that produced it
    (1-based), `checkpoint` the last good checkpoint's path (or None)."""

    def __init__(self, message, *, step, epoch, loss, checkpoint=None):
        super().__init__(message)
        self.step, self.epoch, self.loss, self.checkpoint = step, epoch, loss, checkpoint


_ALIASES = {"loss": "train_loss", "accuracy": "train_accuracy", "acc": "train_accuracy",
            "train_acc": "train_accuracy", "val_acc": "val_accuracy"}


class _Row(dict):
    """One epoch's record; "loss" and "accuracy" read "train_loss" and "train_accuracy"."""

    def __missing__(self, name):
        if name in _ALIASES and _ALIASES[name] in self:
            return self[_ALIASES[name]]
        raise KeyError(name)


class History(list):
    """Per-epoch rows: {"epoch", "step", "train_loss", "train_accuracy", "val_loss",
    "val_accuracy" (or "val_mse", "val_mae", "val_rmse" for regression), "seconds"}.

    `history[i]` is epoch i+1's row; `history["val_loss"]` is that column as a list ("loss"
    and "accuracy" name the training columns). train_loss and train_accuracy are the means
    over the epoch's steps of each step's batch values (before its update). `step_losses`
    holds every step's training loss of this call (not of the steps before a resume). A run
    stopped mid-epoch by the `steps` budget ends with a row marked "partial": True. With
    loss scaling each row has "skipped", the number of its steps skipped for non-finite
    gradients (a non-finite loss stops the run, as without scaling).
    """

    def __init__(self, rows=()):
        super().__init__(_Row(r) for r in rows)
        self.step_losses = []

    def __getitem__(self, item):
        if isinstance(item, str):
            name = _ALIASES.get(item, item)
            if not any(name in row for row in self):
                raise KeyError(f"history has no column {item!r}; it has {self.keys()}")
            return [row.get(name) for row in self]
        return super().__getitem__(item)

    def keys(self):
        seen = {}
        for row in self:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def columns(self) -> dict:
        """{column: [value per epoch]}."""
        return {k: self[k] for k in self.keys()}


# ----------------------------------------------------------------------------- settings

class _Settings(NamedTuple):
    """fit's arguments, checked and resolved before anything is compiled."""

    x: np.ndarray
    y: np.ndarray
    val: Optional[Tuple[np.ndarray, np.ndarray]]
    loss: Callable
    batch_size: int            # min(batch_size, N)
    steps_per_epoch: int
    budget: float              # the step count to stop at (math.inf: no steps= budget)
    epochs: Optional[int]
    key: jax.Array             # the raw fit key, split into (init, data, step) keys
    mesh: Any                  # a Mesh for data parallelism, or None
    signature: dict            # what a checkpoint must have been written with to resume
    compute_dtype: Any = None  # the dtype forward and backward run in (None: the params')
    loss_scale: Optional[mp.LossScalePolicy] = None


def _fit_settings(optimizer, train_data, *, loss, epochs, steps, batch_size, key, val_data,
                  l2, checkpoint_every, devices, drop_remainder, sync_every, target_loss,
                  compute_dtype=None, loss_scale=None, where="fit") -> _Settings:
    _check_optimizer(optimizer, where)
    _check_l2(l2, where)
    compute_dtype = mp.resolve_compute_dtype(compute_dtype, where)
    loss_scale = mp.resolve_loss_scale(loss_scale, where)
    x, y = _pair_of_arrays(train_data, "train_data", where)
    n = _check_pair(x, y, where)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    epochs, steps, checkpoint_every = (
        None if v is None else as_int(v, name, where, minimum=0, error=FuncnetError)
        for name, v in (("epochs", epochs), ("steps", steps), ("checkpoint_every", checkpoint_every)))
    if epochs is None and steps is None:
        raise FuncnetError(f"{where}: give a budget: epochs=... and/or steps=...")
    bs = min(as_int(batch_size, "batch_size", where, error=FuncnetError), n)
    if as_int(sync_every, "sync_every", where, error=FuncnetError) > 16:
        raise FuncnetError(f"{where}: sync_every must be an int in [1, 16], got {sync_every!r}")
    if target_loss is not None:
        as_float(target_loss, "target_loss", where, words="a finite number", error=FuncnetError)
    if checkpoint_every == 0:
        raise FuncnetError(f"{where}: checkpoint_every must be a positive number of steps")
    if drop_remainder and n % bs and n < bs:
        raise FuncnetError(f"{where}: drop_remainder with {n} examples < batch size {bs}")
    per_epoch = data_mod.num_batches(n, bs, drop_remainder=drop_remainder)
    loss = _default_loss(y) if loss is None else loss
    if not callable(loss):
        raise FuncnetError(f"{where}: loss must be a function (pred, target) -> scalar, got {loss!r}")
    val = None
    if val_data is not None:
        val = _pair_of_arrays(val_data, "val_data", where)
        _check_pair(*val, "fit (val_data)")
        if val[0].shape[1:] != x.shape[1:]:
            raise FuncnetError(f"{where}: val_data inputs have shape (batch,) + {val[0].shape[1:]}, "
                               f"the training inputs (batch,) + {x.shape[1:]}")
    key = _raw_key(key, where)
    if devices is None and jax.process_count() > 1:  # several processes: train as one
        devices = jax.devices()
    mesh = None if devices is None else _data_parallel_mesh(devices, n, bs, drop_remainder, where)
    budget = min(epochs * per_epoch if epochs is not None else math.inf,
                 steps if steps is not None else math.inf)
    signature = {"examples": n, "batch_size": bs, "drop_remainder": bool(drop_remainder),
                 "key": [int(v) for v in np.asarray(key)]}
    return _Settings(x, y, val, loss, bs, per_epoch, budget, epochs, key, mesh, signature,
                     compute_dtype, loss_scale)


def _pair_of_arrays(pair, what, where):
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise FuncnetError(f"{where}: {what} must be a pair (x, y), got {type(pair).__name__}")
    return tuple(np.asarray(a) for a in pair)


def _data_parallel_mesh(devices, n, bs, drop_remainder, where):
    mesh = sharding.make_mesh(devices)
    sharding.check_batch_size(bs, mesh, where)
    if not drop_remainder and n % bs and (n % bs) % sharding.mesh_size(mesh):
        raise FuncnetError(
            f"{where}: the last batch of each epoch has {n % bs} examples ({n} = "
            f"{n // bs}·{bs} + {n % bs}), which cannot be split evenly over "
            f"{sharding.mesh_size(mesh)} devices; pass drop_remainder=True or choose a "
            f"batch size whose remainder divides")
    return mesh


def _starting_point(model, optimizer, settings, initial, dtype, where):
    """(train_state or None, like): the state to start from (None: build it after the
    checks) and a tree of its shapes, which the checks and a resume read."""
    _, k_init, k_step = _fit_keys(settings.key)
    if initial is None:
        shape = (settings.batch_size,) + settings.x.shape[1:]
        try:  # shapes only: nothing is compiled until the inputs are known to fit
            return None, jax.eval_shape(_jitted_init(model, optimizer, shape, dtype), k_init, k_step)
        except LayerError as e:
            raise LayerError(f"{where}: the model does not take inputs of shape (batch,) + "
                             f"{settings.x.shape[1:]}: {e}") from None
    if not isinstance(initial, TrainState):
        initial = _new_train_state(optimizer, *initial, k_step)
    # Our own copy (through the host): the step donates its input buffers, so it must
    # never be handed the caller's arrays.
    ts = jax.device_put(jax.device_get(initial))
    return ts, ts


def _check_model_fits(model, like, settings, where) -> str:
    """The task (see `fn.train`'s `_task`), after checking the data against the model."""
    task, out_shape = _check_data(model, like.params, like.state, settings.x, settings.y,
                                  settings.loss, where)
    if settings.val is not None:
        _check_targets(settings.val[1], out_shape, task, "fit (val_data)")
    return task


def _start(model, optimizer, settings, checkpoints, initial, dtype, where):
    """(train_state, task, history, sums): the data checked against the model, then the
    run's first TrainState -- resumed from the newest checkpoint, else `initial`, else
    `model.init` -- placed on the mesh, with the history and partial-epoch sums so far."""
    ts, like = _starting_point(model, optimizer, settings, initial, dtype, where)
    task = _check_model_fits(model, like, settings, where)
    resumed = checkpoints.resume(like)
    if resumed is not None:
        ts, history, sums = resumed
    else:
        history, sums = History(), _empty_sums()
        if ts is None:
            _, k_init, k_step = _fit_keys(settings.key)
            shape = (settings.batch_size,) + settings.x.shape[1:]
            ts = _jitted_init(model, optimizer, shape, dtype)(k_init, k_step)
    if settings.loss_scale is not None and ts.loss_scale is None:  # a run starting to scale
        ts = ts._replace(loss_scale=mp.init_loss_scale(settings.loss_scale))
    if settings.mesh is not None:
        ts = sharding.replicate(ts, settings.mesh)
    return ts, task, history, sums


# ----------------------------------------------------------------------------- checkpoints

def _empty_sums():
    return {"loss": 0.0, "accuracy": 0.0, "count": 0, "seconds": 0.0, "skipped": 0}


class _Checkpoints:
    """fit's checkpoints: where (None: none), how often, how many to keep, and the last good one."""

    def __init__(self, directory, every, keep, signature, where):
        self.directory, self.every, self.keep = directory, every, keep
        self.signature, self.where = signature, where
        self.last = None

    def resume(self, like):
        """(train_state, history, the partial epoch's sums) from the newest checkpoint, if any.
        Its loss scale comes back when it has one (whatever this run's policy); one written
        before TrainState had the field restores with loss_scale=None."""
        path = None if self.directory is None else ckpt.latest(self.directory)
        if path is None:
            return None
        meta = ckpt.read_metadata(path)
        saved = meta.get("fit", {})
        differ = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in self.signature.items()
                  if saved.get(k) != v]
        if differ:
            raise FuncnetError(f"{self.where}: cannot resume from {path}: it was written by a run "
                               f"with other settings ({'; '.join(differ)}); use another "
                               f"checkpoint_dir or the same settings")
        scaled = mp.init_loss_scale(mp.LossScalePolicy()) if meta.get("loss_scale") else None
        ts = ckpt.restore(path, like=like._replace(loss_scale=scaled))
        self.last = path
        return ts, History(meta.get("history", [])), dict(_empty_sums(), **meta.get("partial", {}))

    def due(self, step, *, epoch_end):
        """Whether to save after `step`: every `every` steps, or after each epoch by default."""
        if self.directory is None:
            return False
        if epoch_end:
            return not self.every or step % self.every == 0
        return bool(self.every) and step % self.every == 0

    def save(self, ts, step, history, sums, steps_per_epoch):
        host = jax.device_get(ts)
        if not _finite_tree(host):
            raise NonFiniteLossError(
                f"{self.where}: the training state holds NaN or infinite values after step {step}; "
                f"not saved. The last good checkpoint is {self.last}.",
                step=step, epoch=step // steps_per_epoch + 1, loss=math.nan, checkpoint=self.last)
        meta = {"fit": self.signature, "partial": dict(sums), "loss_scale": host.loss_scale is not None,
                "history": [dict(r) for r in history if not r.get("partial")]}
        if distributed.is_main():  # process 0 writes; the others wait until it is in place
            self.last = ckpt.save_step(self.directory, step, host, metadata=meta, keep=self.keep)
        else:
            self.last = ckpt.step_path(self.directory, step)
        distributed.barrier(f"funcnet.fit.checkpoint.{step}")

    def saved(self, step) -> bool:
        return self.last is not None and self.last.endswith(f"{step:08d}.npz")

    def note(self) -> str:
        """The sentence a NaN error ends with: which checkpoint is the last good one."""
        if self.last:
            return f" The last good checkpoint is {self.last}."
        return " No checkpoint was written" + (" before it." if self.directory is not None else
                                               " (pass checkpoint_dir=... to keep one).")


# ----------------------------------------------------------------------------- metrics

def _progress_bar(enabled, total, initial):
    """A tqdm bar on a terminal; None when disabled, not a TTY, or tqdm is missing."""
    if not enabled:
        return None
    stream = sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the optional extra `progress` is not installed: stay silent
        return None
    return tqdm(total=total, initial=initial, unit="step", file=stream, dynamic_ncols=True,
                leave=True)


def _finite_tree(tree) -> bool:
    return all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(a).dtype, np.inexact))


class _Metrics:
    """The steps' metrics, left on the device until `drain` fetches them in one transfer
    (the loop's only host syncs); then summed into the epoch's row and `step_losses`.
    With loss scaling (`scaled`) each row counts its skipped steps (gradients that overflowed
    the compute dtype: the loss scale halves and the state stays). A non-finite *loss* stops
    the run all the same, skipped or not: the forward pass itself overflowed, which no loss
    scale can mend, and skipping it would skip every step from then on."""

    def __init__(self, history, sums, bar, checkpoints, steps_per_epoch, scaled=False):
        self.history, self.sums, self.bar = history, sums, bar
        self.checkpoints, self.steps_per_epoch = checkpoints, steps_per_epoch
        self.scaled = scaled
        self.pending = []  # (step, epoch, batch, metrics on device), not fetched yet
        self.last_step = None  # the newest step dispatched (named when a peer is lost)

    def add(self, step, epoch, batch, metrics, sync_every):
        self.last_step = step
        self.pending.append((step, epoch, batch, metrics))
        if len(self.pending) >= sync_every + 2:
            self.drain(keep_last=2)  # never more than sync_every + 2 steps in flight

    def drain(self, keep_last=0):
        """Fetch all but the newest `keep_last` pending steps (blocks on them)."""
        cut = len(self.pending) - keep_last
        if cut <= 0:
            return
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        fetched = jax.device_get([m for *_, m in ready])
        for (step, epoch, batch, _), m in zip(ready, fetched):
            value, skipped = float(m["loss"]), int(m.get("skipped", 0))
            if not math.isfinite(value):
                self._stop(value, step, epoch, batch)
            self.history.step_losses.append(value)
            self.sums["skipped"] += skipped
            self.sums["loss"] += value
            self.sums["accuracy"] += float(m.get("accuracy", 0.0))
            self.sums["count"] += 1
        if self.bar is not None:
            self.bar.update(len(ready))
            post = {"epoch": ready[-1][1] + 1, "loss": f"{float(fetched[-1]['loss']):.4f}"}
            if "accuracy" in fetched[-1]:
                post["acc"] = f"{float(fetched[-1]['accuracy']):.3f}"
            self.bar.set_postfix(post, refresh=False)

    def _stop(self, value, step, epoch, batch):
        where, last = self.checkpoints.where, self.checkpoints.last
        raise NonFiniteLossError(
            f"{where}: the training loss became {value} at step {step} (epoch {epoch + 1}, batch "
            f"{batch + 1} of {self.steps_per_epoch}); training stopped. Check the data for NaN or "
            f"infinite values and try a smaller learning rate.{self.checkpoints.note()}",
            step=step, epoch=epoch + 1, loss=value, checkpoint=last)

    def row(self, epoch, step, task) -> _Row:
        """The epoch's row from its sums (the pending metrics are fetched first)."""
        self.drain()
        count = self.sums["count"]
        row = _Row(epoch=epoch + 1, step=step,
                   train_loss=self.sums["loss"] / count if count else math.nan)
        if task != "regression":
            row["train_accuracy"] = self.sums["accuracy"] / count if count else math.nan
        if self.scaled:
            row["skipped"] = self.sums["skipped"]
        return row


# ----------------------------------------------------------------------------- the loop

class _Loop(NamedTuple):
    """What the epoch loop needs besides the train state."""

    model: Layer
    settings: _Settings
    step_fn: Callable
    task: str
    metrics: _Metrics
    checkpoints: _Checkpoints
    val_metrics: Optional[Callable]  # (params, state) -> val_data's metrics, or None
    sync_every: int


def _run_epoch(loop: _Loop, ts, s, t0):
    """Steps from step `s` to the end of its epoch or of the budget: (train_state, step)."""
    cfg = loop.settings
    epoch, b = divmod(s, cfg.steps_per_epoch)
    order = batch_order(cfg.key, epoch, len(cfg.x))
    while b < cfg.steps_per_epoch and s < cfg.budget:
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if cfg.mesh is not None:  # only this process's devices' rows are read
            xb, yb = sharding.gather_batch((cfg.x, cfg.y), idx, cfg.mesh)
        else:
            xb, yb = cfg.x[idx], cfg.y[idx]
        ts, metrics = loop.step_fn(ts, xb, yb)
        loop.metrics.add(s + 1, epoch, b, metrics, loop.sync_every)
        s, b = s + 1, b + 1
        # an epoch's last step saves after its row
        if b < cfg.steps_per_epoch and loop.checkpoints.due(s, epoch_end=False):
            loop.metrics.drain()
            loop.metrics.sums["seconds"] = time.perf_counter() - t0
            loop.checkpoints.save(ts, s, loop.metrics.history, loop.metrics.sums, cfg.steps_per_epoch)
    return ts, s


def _run(loop: _Loop, ts, *, target_loss, callback):
    """Epochs until the budget, `target_loss` or `callback` stops them; returns the train state."""
    cfg, metrics, history = loop.settings, loop.metrics, loop.metrics.history
    s = int(jax.device_get(ts.step))
    while s < cfg.budget:
        epoch = s // cfg.steps_per_epoch
        t0 = time.perf_counter() - metrics.sums["seconds"]
        ts, s = _run_epoch(loop, ts, s, t0)
        row = metrics.row(epoch, s, loop.task)
        if loop.val_metrics is not None:
            for k, v in loop.val_metrics(ts.params, ts.state).items():
                row["val_" + k] = v
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if s % cfg.steps_per_epoch:  # the budget ended mid-epoch
            row["partial"] = True
            metrics.sums["seconds"] = row["seconds"]
            break
        metrics.sums = _empty_sums()
        if metrics.bar is not None:
            metrics.bar.set_description(f"epoch {epoch + 1}" + (f"/{cfg.epochs}" if cfg.epochs else ""))
        stop = target_loss is not None and row["train_loss"] < target_loss
        if callback is not None and callback(row, ts):
            stop = True
        if stop:
            break
        if s < cfg.budget and loop.checkpoints.due(s, epoch_end=True):
            loop.checkpoints.save(ts, s, history, metrics.sums, cfg.steps_per_epoch)
    if loop.checkpoints.directory is not None and not loop.checkpoints.saved(s):
        loop.checkpoints.save(ts, s, history, metrics.sums, cfg.steps_per_epoch)
    return ts


def fit(model: Layer, optimizer, train_data, *, loss=None, epochs: Optional[int] = None,
        steps: Optional[int] = None, batch_size: int = 128, key=None, val_data=None,
        target_loss: Optional[float] = None, l2: float = 0.0, checkpoint_dir=None,
        checkpoint_every: Optional[int] = None, keep: int = 3, devices=None,
        drop_remainder: bool = False, initial=None, progress: bool = True,
        callback: Optional[Callable] = None, eval_batch_size: int = 512, sync_every: int = 8,
        dtype=None, compute_dtype=None, loss_scale=None):
    """Train `model` with `optimizer` on train_data = (x, y); returns (TrainState, History).

    - loss: `fn.losses.softmax_cross_entropy` for integer labels (the default for them),
      mse for float targets (their default), or any (pred, target) -> scalar. Its `task`
      attribute ("classification", "binary", "regression"; seen through functools.partial)
      chooses the reported metrics; without one, integer labels and (batch, classes)
      outputs mean classification.
    - epochs / steps: the budget (at least one); training stops at whichever comes first,
      or after the first epoch whose mean training loss is below `target_loss`, or when
      `callback(row, train_state)` (called after each epoch) returns True.
    - batch_size: examples per update; every epoch is reshuffled from `key` (see
      `batch_order`). batch_size >= N is batch gradient descent (one step per epoch). The
      last batch of an epoch is partial unless `drop_remainder`.
    - val_data=(x, y): evaluated after every epoch (`evaluate`).
    - l2: λ of the ½ λ Σ w² penalty. initial: a TrainState or (params, state) to start
      from instead of `model.init`. dtype: the parameters' dtype at `model.init`.
    - compute_dtype (jnp.bfloat16, jnp.float16; None or float32: none) and loss_scale
      (None, "dynamic", a fixed number > 0): mixed precision, as in `make_step` -- the
      steps and val_data's evaluation run on casts to the compute dtype while params and
      optimizer state stay float32; a step whose scaled gradients overflow is skipped,
      each row counts them in "skipped", and the scale is checkpointed with the state.
    - checkpoint_dir: a TrainState checkpoint `ckpt_<step>.npz` is written atomically every
      `checkpoint_every` steps (default: after every epoch) and at the end, keeping the
      newest `keep`; a later fit with the same directory (and the same data, batch size and
      key) resumes from the newest one by itself and continues exactly as if never stopped.
    - devices: a list of devices (or a Mesh) for data parallelism (`fn.sharding`): each
      batch is sharded across them, parameters replicated; the batch size must divide.
      After `fn.distributed.initialize` (several processes) the default is every device
      of every process; process 0 alone writes checkpoints (see `fn.distributed`).
    - progress: a tqdm bar (epoch, loss, accuracy, rate) on a terminal; silent when stderr
      is not a TTY, tqdm is not installed, or progress=False.
    - sync_every: metrics are fetched from the device every this many steps (the only host
      syncs in the loop), which also bounds how far dispatch runs ahead of the device.

    A NaN or infinite training loss raises `NonFiniteLossError` naming the step (and the
    epoch and batch); nothing after the last finite step is checkpointed, so the newest
    checkpoint stays the last good one. Inputs are checked before anything is compiled:
    x against the model's input shape, y against its output (labels in range), x and y
    lengths, the batch size against the devices.
    """
    where = "fit"
    cfg = _fit_settings(optimizer, train_data, loss=loss, epochs=epochs, steps=steps,
                        batch_size=batch_size, key=key, val_data=val_data, l2=l2,
                        checkpoint_every=checkpoint_every, devices=devices,
                        drop_remainder=drop_remainder, sync_every=sync_every,
                        target_loss=target_loss, compute_dtype=compute_dtype,
                        loss_scale=loss_scale, where=where)
    checkpoints = _Checkpoints(checkpoint_dir, checkpoint_every, keep, cfg.signature, where)
    ts, task, history, sums = _start(model, optimizer, cfg, checkpoints, initial, dtype, where)
    start = int(jax.device_get(ts.step))
    bar = _progress_bar(progress, None if cfg.budget == math.inf else int(cfg.budget), start)
    val_metrics = None if cfg.val is None else _evaluator(  # val_data checked once, not per epoch
        model, ts.params, ts.state, *cfg.val, batch_size=eval_batch_size, loss=cfg.loss,
        compute_dtype=cfg.compute_dtype)
    step = make_step(model, optimizer, cfg.loss, l2=l2, mesh=cfg.mesh,
                     compute_dtype=cfg.compute_dtype, loss_scale=cfg.loss_scale)
    metrics = _Metrics(history, sums, bar, checkpoints, cfg.steps_per_epoch,
                       scaled=cfg.loss_scale is not None)
    loop = _Loop(model, cfg, step, task, metrics, checkpoints, val_metrics, sync_every)
    try:
        return _run(loop, ts, target_loss=target_loss, callback=callback), history
    except Exception as e:  # a lost peer surfaces as a failed collective: say so
        lost = distributed.as_process_lost(e, where, loop.metrics.last_step)
        if lost is None:
            raise
        raise lost from e
    finally:
        if bar is not None:
            bar.close()
