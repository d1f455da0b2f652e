"""Data parallelism with `jax.sharding`: one mesh axis "batch", parameters replicated.

A training step is compiled once for the whole mesh: each batch is split along its first
axis across the devices, the parameters, optimizer state and model state are replicated,
and XLA inserts the all-reduce of the gradients. Because the jitted function still sees the
*global* batch, everything computed over the batch -- the loss mean, batch-norm statistics
-- is over the global batch, exactly as on one device (up to float summation order).

    mesh = fn.parallel.make_mesh(jax.devices())
    state, history = fn.train.fit(model, opt, (x, y), ..., devices=jax.devices())

Multi-host (several processes, e.g. one per GPU host or TPU worker): call
`jax.distributed.initialize(coordinator_address, num_processes, process_id)` in every
process before anything else; `jax.devices()` then lists every process's devices and a
mesh over them spans the hosts. Every process must run the same program on the same data
in the same order (`fit` derives its order from the key, so giving every process the same
key and dataset is enough): `shard_batch` builds the global batch with
`jax.make_array_from_callback`, each process supplying only the rows of its own devices,
and `replicate` places the parameters on every device. Checkpoints of replicated arrays
can be written by process 0 alone.

On the CPU backend (`XLA_FLAGS=--xla_force_host_platform_device_count=N`), XLA runs at
most 32 computations in flight per device; a multi-device program queued beyond that
blocks its dispatch threads inside XLA's shared CPU thread pool, which then has no thread
left for the peers of a waiting all-reduce, and XLA aborts the process after 40 s
("Termination timeout for all reduce"). `fit` never lets more than `sync_every + 2` steps
run ahead; code driving a sharded step by hand must also block every few steps (see
`MAX_IN_FLIGHT`).
"""
from __future__ import annotations

import sys
import types
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .core import FuncnetError

__all__ = ["AXIS", "MAX_IN_FLIGHT", "make_mesh", "replicated", "batch_sharded", "replicate",
           "shard_batch", "check_batch_size", "data_parallel", "mesh_size"]

AXIS = "batch"

# XLA:CPU's default max_inflight_computations_per_device. Beyond it a sharded program's
# dispatch can deadlock the all-reduce (see the module docstring); stay well below.
MAX_IN_FLIGHT = 32


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
    """A 1-D `Mesh` with axis "batch" over `devices` (default: every device, all hosts).
    A Mesh is returned unchanged."""
    if isinstance(devices, Mesh):
        if AXIS not in devices.axis_names:
            raise FuncnetError(f"parallel: the mesh needs an axis named {AXIS!r} to shard the "
                               f"batch along, got axes {devices.axis_names}")
        return devices
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise FuncnetError("parallel: devices is empty; pass e.g. devices=jax.devices()")
    if len(set(devices)) != len(devices):
        raise FuncnetError(f"parallel: devices lists a device twice: {devices}")
    return Mesh(np.array(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer and model state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first (batch) axis is split evenly across the mesh's "batch" axis."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def mesh_size(mesh: Mesh) -> int:
    return int(mesh.shape[AXIS])


def check_batch_size(batch_size: int, mesh: Mesh, where: str = "fit"):
    """Raise unless `batch_size` splits evenly over the mesh's devices."""
    n = mesh_size(mesh)
    if batch_size % n:
        raise FuncnetError(f"{where}: a batch of {batch_size} examples cannot be split evenly over "
                           f"{n} devices; use a batch size divisible by {n} (e.g. "
                           f"{max(n, batch_size // n * n)})")


def replicate(tree, mesh: Mesh):
    """Place a pytree (e.g. a TrainState) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree, mesh: Mesh):
    """Split each array of a pytree of global-batch host arrays along axis 0 over the mesh.

    Built with `jax.make_array_from_callback`, so under multi-host each process supplies
    only its own devices' rows of the (identical) global batch."""
    sharding = batch_sharded(mesh)

    def put(a):
        a = np.asarray(a)
        check_batch_size(a.shape[0], mesh, "shard_batch")
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree_util.tree_map(put, tree)


def data_parallel(step, mesh: Mesh, *, donate: bool = True):
    """jit a step `(train_state, x, y) -> (train_state, metrics)` for the mesh: train_state
    replicated, x and y sharded along the batch, outputs replicated; the train_state's
    buffers are donated (reused for the new state) unless `donate=False`."""
    rep, bat = replicated(mesh), batch_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, bat, bat), out_shardings=(rep, rep),
                   donate_argnums=(0,) if donate else ())


class _CallableModule(types.ModuleType):
    """`fn.parallel` is both this module (fn.parallel.make_mesh, ...) and the branch
    combinator: `fn.parallel(*layers)` builds `funcnet.combinators.parallel(*layers)`."""

    def __call__(self, *layers):
        from .combinators import parallel
        return parallel(*layers)


sys.modules[__name__].__class__ = _CallableModule
