"""Several processes, one training run: JAX's distributed runtime, set up for funcnet.

Each process runs the same program and calls `initialize` before any JAX computation:

    fn.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # on host 0
    fn.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=1)   # on host 1
    state, history = fn.train.fit(model, opt, (x, y), ..., key=jax.random.PRNGKey(0))

`jax.devices()` then lists every process's devices and `fit` trains over all of them (one
mesh axis "batch"; see `fn.sharding`): each process copies to its own devices only its rows
of every global batch, parameters are replicated, and gradients, the loss and batch-norm
statistics are over the global batch, so every process holds the same parameters and
history. Checkpoints are written by process 0 alone, into a directory every process can
read (a shared filesystem across hosts); the others wait at a barrier until the file is in
place, and all resume from it. Validation (`evaluate`) runs on every process over the whole
validation set, on its own copy of the parameters: the same numbers everywhere.
`python -m funcnet launch -n 2 -- train ...` starts N such processes on one machine
(`fn.launch`).

What JAX needs (jax 0.10): `jax.distributed.initialize(coordinator_address, num_processes,
process_id)` before the backend starts; process 0 hosts the coordination service at the
address. On CPU the cross-process collectives are gloo over TCP
(`jax_cpu_collectives_implementation="gloo"`, set here explicitly). Without arguments,
`initialize()` takes them from FUNCNET_COORDINATOR / FUNCNET_NUM_PROCESSES /
FUNCNET_PROCESS_ID (set by `funcnet launch`), or leaves them to JAX's own detection of
SLURM, Open MPI, Kubernetes and Cloud TPU environments (`jax.distributed.initialize()`).

Faults. JAX's coordination service declares a process dead when it has sent no heartbeat
for `heartbeat_timeout` seconds and then terminates every other process (SIGABRT, with
"Terminating process because the JAX distributed service detected fatal errors"); JAX's
own default is 100 s, funcnet's is HEARTBEAT_TIMEOUT = 20 s (env FUNCNET_HEARTBEAT_TIMEOUT
or the argument overrides it). A process that dies outright (killed, crashed) is noticed
sooner: its TCP connections close, the next all-reduce fails at once ("Gloo all-reduce
failed ... Connection reset by peer"), and `fit` raises `ProcessLostError` naming the lost
process where it can tell (see `lost_process`). Either way nobody hangs past the heartbeat
timeout. Note also that JAX's preemption service catches SIGTERM in these processes (it
marks a preemption instead of exiting), so stop them with SIGINT or SIGKILL.
"""
from __future__ import annotations

import os
import re
import socket
import sys
from typing import Optional

import jax

from ._validate import as_int
from .errors import FuncnetError

__all__ = ["HEARTBEAT_TIMEOUT", "SHUTDOWN_TIMEOUT", "INITIALIZATION_TIMEOUT", "ProcessLostError",
           "initialize", "is_initialized", "process_index", "process_count", "is_main",
           "barrier", "free_port", "lost_process", "as_process_lost", "exit_now"]

HEARTBEAT_TIMEOUT = 20
"""Seconds without a heartbeat before a process counts as lost (JAX's own default: 100);
`initialize(heartbeat_timeout=)` or FUNCNET_HEARTBEAT_TIMEOUT overrides it."""
SHUTDOWN_TIMEOUT = 60
"""Seconds a finishing process waits for the others at exit (JAX's default: 300);
`initialize(shutdown_timeout=)` or FUNCNET_SHUTDOWN_TIMEOUT overrides it."""
INITIALIZATION_TIMEOUT = 120
"""Seconds to wait for every process to connect (JAX's default: 300);
`initialize(initialization_timeout=)` or FUNCNET_INITIALIZATION_TIMEOUT overrides it."""

_ENV = {"coordinator": "FUNCNET_COORDINATOR", "num_processes": "FUNCNET_NUM_PROCESSES",
        "process_id": "FUNCNET_PROCESS_ID"}


class ProcessLostError(FuncnetError, RuntimeError):
    """Another process of a multi-process run died or became unreachable; `process` is its
    index when it could be told (else None), `step` the update that was under way."""

    def __init__(self, message, *, process=None, step=None):
        super().__init__(message)
        self.process, self.step = process, step


def _env_int(name, where):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise FuncnetError(f"{where}: environment variable {name} must be an int, got "
                           f"{value!r}") from None


def _timeout(value, name, default):
    if value is None:
        value = _env_int("FUNCNET_" + name.upper(), "distributed.initialize")
    value = default if value is None else value
    return as_int(value, f"{name} (seconds)", "distributed.initialize", error=FuncnetError)


def _cluster_detected() -> bool:
    """True inside a multi-process job JAX can configure itself (SLURM, Open MPI, Kubernetes,
    Cloud TPU ...). Single-task SLURM / MPI jobs count as not distributed."""
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            return _env_int(name, "distributed.initialize") > 1
    try:
        from jax._src import clusters  # JAX's own detectors (private module: best effort)
        return any(c.is_env_present() for c in clusters.ClusterEnv._cluster_types
                   if c.__name__ not in ("SlurmCluster", "OmpiCluster"))
    except Exception:  # noqa: BLE001 - an unknown JAX layout means: nothing detected
        return False


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, heartbeat_timeout: Optional[int] = None,
               shutdown_timeout: Optional[int] = None,
               initialization_timeout: Optional[int] = None) -> bool:
    """Join a multi-process run: `jax.distributed.initialize` with gloo CPU collectives and
    funcnet's timeouts. Returns True when this process is now part of one, False when
    there is nothing to join (no arguments, no FUNCNET_* variables, no cluster detected).

    Arguments left None come from FUNCNET_COORDINATOR ("host:port"), FUNCNET_NUM_PROCESSES,
    FUNCNET_PROCESS_ID; with none of them set, JAX's auto-detection (SLURM, Open MPI,
    Kubernetes, TPU) is used when such an environment is present. Timeouts in seconds:
    argument, else FUNCNET_HEARTBEAT_TIMEOUT etc., else the module's defaults. Must run
    before the first JAX computation; a second call is an error.

    Raises a FuncnetError for an incomplete or invalid set of arguments or variables (a
    coordinator that is not HOST:PORT, a process_id out of range, a timeout that is not a
    positive int) and for a second call.
    """
    where = "distributed.initialize"
    coordinator = coordinator or os.environ.get(_ENV["coordinator"]) or None
    if num_processes is None:
        num_processes = _env_int(_ENV["num_processes"], where)
    if process_id is None:
        process_id = _env_int(_ENV["process_id"], where)
    explicit = (coordinator, num_processes, process_id)
    if all(v is None for v in explicit) and not _cluster_detected():
        return False
    if any(v is None for v in explicit) and not _cluster_detected():
        raise FuncnetError(f"{where}: give all three of coordinator (host:port), num_processes and "
                           f"process_id (or --coordinator, --num-processes, --process-id), got "
                           f"coordinator={coordinator!r}, num_processes={num_processes!r}, "
                           f"process_id={process_id!r}")
    if coordinator is not None and not re.fullmatch(r".+:\d+", coordinator):
        raise FuncnetError(f"{where}: coordinator must be HOST:PORT, e.g. 127.0.0.1:1234, got "
                           f"{coordinator!r}")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise FuncnetError(f"{where}: process_id must lie in [0, {num_processes - 1}] for "
                           f"{num_processes} processes, got {process_id}")
    timeouts = dict(
        heartbeat_timeout_seconds=_timeout(heartbeat_timeout, "heartbeat_timeout", HEARTBEAT_TIMEOUT),
        shutdown_timeout_seconds=_timeout(shutdown_timeout, "shutdown_timeout", SHUTDOWN_TIMEOUT),
        initialization_timeout=_timeout(initialization_timeout, "initialization_timeout",
                                        INITIALIZATION_TIMEOUT))
    if is_initialized():
        raise FuncnetError(f"{where}: this process has already joined a distributed run")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, **timeouts)
    return True


def is_initialized() -> bool:
    """True when this process has joined a multi-process run (`initialize` returned True)."""
    return jax.distributed.is_initialized()


def process_index() -> int:
    """This process's index in the run, 0 … process_count() − 1 (0 when alone)."""
    return jax.process_index()


def process_count() -> int:
    """The number of processes in the run (1 when alone)."""
    return jax.process_count()


def is_main() -> bool:
    """True on process 0 (the one that writes files), and in any single-process run.

    Returns a bool.
    """
    return jax.process_index() == 0


def barrier(name: str):
    """Wait until every process has reached `barrier(name)` (no-op with one process).

    Returns None once all have arrived; a lost process surfaces as JAX's error, which
    `as_process_lost` turns into a ProcessLostError.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it: bind to port 0).

    Returns the port number (an int); another program may take it before it is used.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_PEER = re.compile(r"\[([^\]]+)\]:(\d+)")


def lost_process(error: BaseException) -> Optional[int]:
    """Which process a failed collective lost, or None when that cannot be told.

    Gloo's error names the peer's address ("Read error [127.0.0.1]:42677"); each gloo rank
    published its address in the coordination service's key-value store under
    "cpu:gloo/<device ids>/<rank>" (holding a sockaddr_in: family, big-endian port, IPv4),
    so the address leads to a rank, the rank to a device and the device to its process.
    The address is the peer's listening one only when this side opened the connection
    (else it is an ephemeral port): so this is best effort (it reads XLA internals), and
    with two processes the lost one is simply the other."""
    if not is_initialized():
        return None
    if jax.process_count() == 2:
        return 1 - jax.process_index()
    m = _PEER.search(str(error))
    if m is None:
        return None
    try:
        needle = b"\x02\x00" + int(m.group(2)).to_bytes(2, "big") + socket.inet_aton(m.group(1))
        entries = jax._src.distributed.global_state.client.key_value_dir_get_bytes("cpu:gloo")
    except Exception:  # noqa: BLE001 - not IPv4, or the coordinator itself is gone
        return None
    by_id = {d.id: d.process_index for d in jax.devices()}
    for key, value in entries:
        parts = key.split("/")
        if needle not in value or len(parts) < 3:
            continue
        try:
            ids = [int(v) for v in parts[-2].split(",")]
            return by_id.get(ids[int(parts[-1])])
        except (ValueError, IndexError):
            continue
    return None


def as_process_lost(error: BaseException, where: str, step=None) -> Optional[ProcessLostError]:
    """A ProcessLostError for `error` when it is a failed cross-process operation in a
    multi-process run (else None), saying which process was lost if that can be told."""
    if jax.process_count() == 1 or isinstance(error, FuncnetError):
        return None
    text = str(error)
    if not re.search(r"gloo|coordination|heartbeat|UNAVAILABLE|connection|socket|collective",
                     text, re.IGNORECASE):
        return None
    lost = lost_process(error)
    who = (f"process {lost}" if lost is not None else
           "another process (JAX's log on process 0 names it once its heartbeats stop)")
    at = f" during step {step}" if step is not None else ""
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ProcessLostError(
        f"{where}: lost {who} of {jax.process_count()}{at} (this is process "
        f"{jax.process_index()}): {first}. The run cannot go on without it; restart all "
        f"processes to resume from the newest checkpoint.", process=lost, step=step)


def exit_now(code: int, *, atexit_handlers: bool = False):
    """End the process at once with status `code`, the standard streams flushed, without
    the interpreter's teardown.

    atexit_handlers=False, after a failure in a multi-process run, skips the atexit
    handlers too, and with them JAX's exit-time shutdown barrier, which would wait (up to
    the shutdown timeout) for processes that are gone. True is the `funcnet` command's
    normal end: the handlers run (JAX's distributed shutdown, logging's flush), but not the
    teardown of JAX's modules and runtime, ~0.3 s after every command, a tenth of a cached
    `funcnet train` (every file was closed by the command itself)."""
    if atexit_handlers:
        import atexit
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # no stream, or a closed one / pipe
            pass
    os._exit(int(code or 0))
