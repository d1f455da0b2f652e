"""Data parallelism with `jax.sharding`: one mesh axis "batch", parameters replicated
(and, on a 2-D mesh, weights split over a "model" axis). Until 0.1 these helpers were
`fn.parallel.make_mesh` & co.; those spellings still work, with a DeprecationWarning
(`fn.parallel` is the branch combinator).

A training step is compiled once for the whole mesh: each batch is split along its first
axis across the devices, the parameters, optimizer state and model state are replicated,
and XLA inserts the all-reduce of the gradients. Because the jitted function still sees the
*global* batch, everything computed over the batch -- the loss mean, batch-norm statistics
-- is over the global batch, exactly as on one device (up to float summation order).

    mesh = fn.sharding.make_mesh(jax.devices())
    state, history = fn.train.fit(model, opt, (x, y), ..., devices=jax.devices())

Multi-process (one process per host or per GPU): every process calls
`fn.distributed.initialize(...)` (JAX's distributed runtime; gloo collectives on CPU) before
anything else and runs the same program on the same data; `jax.devices()` then lists every
process's devices, and `fit` trains over all of them by itself. The dataset order comes from
the shared key, `gather_batch` builds each global batch with `jax.make_array_from_callback`
so each process copies only its own devices' rows, `replicate` places the state on every
device, and process 0 alone writes checkpoints (see `fn.distributed`; `funcnet launch`).

Beyond data parallelism: `make_mesh_2d(devices, model=k)` is a (batch x model) mesh; on it
`replicate` splits every weight matrix named "w" (and its optimizer moments) along its
output columns over the k devices of the "model" axis (`param_sharding`), and the step pins
the new state to the same layout (`with_sharding_constraint`), so each device holds 1/k of
the weights and a model k times larger than one device's memory trains; XLA inserts the
gathers the products need. Limits: the model axis should stay within one process (a
checkpoint fetches the whole state to process 0's host), biases and batch-norm parameters
stay replicated, and activations are left to XLA's sharding propagation.

On the CPU backend (`XLA_FLAGS=--xla_force_host_platform_device_count=N`), XLA runs at
most 32 computations in flight per device; a multi-device program queued beyond that
blocks its dispatch threads inside XLA's shared CPU thread pool, which then has no thread
left for the peers of a waiting all-reduce, and XLA aborts the process after 40 s
("Termination timeout for all reduce"). `fit` never lets more than `sync_every + 2` steps
run ahead; code driving a sharded step by hand must also block every few steps (see
`MAX_IN_FLIGHT`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._validate import as_int
from .errors import FuncnetError

__all__ = ["AXIS", "MODEL_AXIS", "MAX_IN_FLIGHT", "make_mesh", "make_mesh_2d", "replicated",
           "batch_sharded", "param_sharding", "replicate", "shard_batch", "gather_batch",
           "check_batch_size", "data_parallel", "mesh_size"]

AXIS = "batch"
"""The mesh axis each batch is split along."""
MODEL_AXIS = "model"
"""The mesh axis `make_mesh_2d`'s meshes split weight matrices along."""

# XLA:CPU's default max_inflight_computations_per_device. Beyond it a sharded program's
# dispatch can deadlock the all-reduce (see the module docstring); stay well below.
MAX_IN_FLIGHT = 32
"""XLA:CPU's limit of computations in flight per device: a loop driving a sharded step by
hand must block (e.g. fetch a metric) at least every this many steps (see the module
docstring)."""


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
    """A 1-D `Mesh` with axis "batch" over `devices` (default: every device, all hosts).
    A Mesh is returned unchanged.

    Raises a FuncnetError for an empty device list, a device listed twice, or a Mesh
    without a "batch" axis.
    """
    if isinstance(devices, Mesh):
        if AXIS not in devices.axis_names:
            raise FuncnetError(f"make_mesh: the mesh needs an axis named {AXIS!r} to shard the "
                               f"batch along, got axes {devices.axis_names}")
        return devices
    devices = _device_list(devices, "make_mesh")
    if not devices:
        raise FuncnetError("make_mesh: devices is empty; pass e.g. devices=jax.devices()")
    if len(set(devices)) != len(devices):
        raise FuncnetError(f"make_mesh: devices lists a device twice: {devices}")
    return Mesh(np.array(devices), (AXIS,))


def _device_list(devices, where) -> list:
    """`devices` as a list (None: every device of every process)."""
    if devices is not None and (isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__")):
        raise FuncnetError(f"{where}: devices must be a sequence of devices or a Mesh, got "
                           f"{devices!r}; for the first n devices pass jax.devices()[:n]")
    return jax.devices() if devices is None else list(devices)


def make_mesh_2d(devices: Optional[Sequence] = None, *, model: int) -> Mesh:
    """A 2-D `Mesh` (batch x model): `model` devices share each weight matrix (its output
    columns split among them), and the batch is split over len(devices) / model groups.

    Returns the Mesh (axes "batch", "model"); a FuncnetError when `model` is not a positive
    int dividing the number of devices.
    """
    devices = _device_list(devices, "make_mesh_2d")
    model = as_int(model, "model", "make_mesh_2d", error=FuncnetError)
    if len(devices) % model:
        raise FuncnetError(f"make_mesh_2d: model must be a positive int dividing the {len(devices)} "
                           f"devices, got {model!r}")
    make_mesh(devices)  # the same checks
    return Mesh(np.array(devices).reshape(len(devices) // model, model), (AXIS, MODEL_AXIS))


def param_sharding(tree, mesh: Mesh):
    """Shardings for a pytree of parameters (or a whole TrainState, optimizer moments
    included): on a mesh with a "model" axis every weight named "w" (dense (in, out), conv
    (kh, kw, c_in, c_out)) whose last axis divides is split along that axis over "model";
    everything else (biases, batch-norm, scalars) is replicated.

    Returns a pytree of NamedShardings with `tree`'s structure.
    """
    model = mesh.shape.get(MODEL_AXIS, 1)

    def spec(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        shape = np.shape(leaf)
        if model > 1 and name == "w" and len(shape) >= 2 and shape[-1] % model == 0:
            return NamedSharding(mesh, PartitionSpec(*([None] * (len(shape) - 1)), MODEL_AXIS))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(spec, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer and model state).

    Returns a NamedSharding.
    """
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first (batch) axis is split evenly across the mesh's "batch" axis.

    Returns a NamedSharding.
    """
    return NamedSharding(mesh, PartitionSpec(AXIS))


def mesh_size(mesh: Mesh) -> int:
    """The number of devices along the mesh's batch axis: the ways each batch is split."""
    return int(mesh.shape[AXIS])


def check_batch_size(batch_size: int, mesh: Mesh, where: str = "fit"):
    """Raise unless `batch_size` splits evenly over the mesh's devices.

    Returns None; the FuncnetError names both numbers and `where`.
    """
    n = mesh_size(mesh)
    if batch_size % n:
        raise FuncnetError(f"{where}: a batch of {batch_size} examples cannot be split evenly over "
                           f"{n} devices; use a batch size divisible by {n} (e.g. "
                           f"{max(n, batch_size // n * n)})")


def replicate(tree, mesh: Mesh):
    """Place a pytree (e.g. a TrainState) on every device of the mesh (on a mesh with a
    "model" axis, large weights split over it: `param_sharding`). With several processes
    each process supplies its own devices' copies, from the host (all hold the same).

    Returns the placed pytree (JAX arrays).
    """
    if jax.process_count() > 1:
        tree = jax.device_get(tree)
    if MODEL_AXIS in mesh.axis_names:
        return jax.device_put(tree, param_sharding(tree, mesh))
    return jax.device_put(tree, replicated(mesh))


def gather_batch(arrays, index, mesh: Mesh):
    """The global batch `[a[index] for a in arrays]`, sharded along axis 0 over the mesh,
    reading from each host array only the rows this process's devices hold (with several
    processes, every one calls this with the same `index`, e.g. from the shared key).

    Returns a list of sharded global arrays, one per array.
    """
    index = np.asarray(index)
    check_batch_size(len(index), mesh, "gather_batch")
    sharding = batch_sharded(mesh)

    def put(a):
        shape = (len(index),) + a.shape[1:]
        return jax.make_array_from_callback(shape, sharding, lambda i: a[index[i[0]]])

    return tuple(put(np.asarray(a)) for a in arrays)


def shard_batch(tree, mesh: Mesh):
    """Split each array of a pytree of global-batch host arrays along axis 0 over the mesh.

    Built with `jax.make_array_from_callback`, so under multi-host each process supplies
    only its own devices' rows of the (identical) global batch.

    Returns the pytree of sharded global arrays; the batch size must divide over the
    mesh's "batch" axis (`check_batch_size`).
    """
    sharding = batch_sharded(mesh)

    def put(a):
        a = np.asarray(a)
        check_batch_size(a.shape[0], mesh, "shard_batch")
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree_util.tree_map(put, tree)


def data_parallel(step, mesh: Mesh, *, donate: bool = True):
    """jit a step `(train_state, x, y) -> (train_state, metrics)` for the mesh: train_state
    replicated, x and y sharded along the batch, outputs replicated; the train_state's
    buffers are donated (reused for the new state) unless `donate=False`.

    Returns the jitted step.
    """
    rep, bat = replicated(mesh), batch_sharded(mesh)
    if MODEL_AXIS in mesh.axis_names:
        # The state keeps `param_sharding` (placed by `replicate`, pinned on the way out);
        # XLA splits each dense/conv product over "model" and gathers where needed.
        def sharded(ts, x, y):
            new, metrics = step(ts, x, y)
            pin = jax.lax.with_sharding_constraint
            return pin(new, param_sharding(new, mesh)), pin(metrics, rep)

        return jax.jit(sharded, donate_argnums=(0,) if donate else ())
    return jax.jit(step, in_shardings=(rep, bat, bat), out_shardings=(rep, rep),
                   donate_argnums=(0,) if donate else ())

