"""Start N processes of one multi-process run on this machine (`funcnet launch`).

    python -m funcnet launch -n 2 -- train --epochs 2 --model mlp
    python -m funcnet launch -n 2 --devices-per-process 2 -- my_script.py --flag

Each child runs `python -m funcnet <command ...>` (or `python script.py ...` when the
command is a .py file) with FUNCNET_COORDINATOR=127.0.0.1:<free port>,
FUNCNET_NUM_PROCESSES=N and FUNCNET_PROCESS_ID=i set, which `fn.distributed.initialize()`
(and so `funcnet train`) reads. Every output line is prefixed with "[i] ". Ctrl-C (SIGINT)
is forwarded to every child; a second one kills them. When a child fails, the others get
`grace` seconds to stop by themselves (they notice the lost peer), then are killed; each
failure is reported ("funcnet launch: process 1 was killed by SIGKILL"), and the exit
status is 128 + the signal number of a process killed by a signal (the likely cause), else
the first failure's status; 0 when all succeed.
This is a way to try multi-process training on one machine; on a cluster, start one
process per host with SLURM, mpirun or Kubernetes and JAX finds the settings itself.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

from ._validate import as_int
from .distributed import free_port
from .errors import FuncnetError

__all__ = ["launch", "child_command"]


def child_command(command: Sequence[str]) -> List[str]:
    """The argv of one child: a funcnet command, or a Python script with its arguments."""
    command = list(command)
    if not command:
        raise FuncnetError("launch: give the command to run after --, e.g. "
                           "`funcnet launch -n 2 -- train --epochs 2`")
    if command[0].endswith(".py"):
        return [sys.executable, "-u"] + command
    return [sys.executable, "-u", "-m", "funcnet"] + command


def _child_setup():
    """In each child before exec: SIGINT back to its default (a launcher started in the
    background inherits it ignored, and exec keeps it so), and die with the launcher even
    when it is killed outright (Linux only)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: best effort
        pass


def _pump(i, stream, out, lock):
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace")
        with lock:
            out.write(f"[{i}] {text}" if text.endswith("\n") else f"[{i}] {text}\n")
            out.flush()
    stream.close()


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def launch(command: Sequence[str], n: int, *, devices_per_process: Optional[int] = None,
           host: str = "127.0.0.1", grace: float = 30.0, out=None) -> int:
    """Run `command` (see `child_command`) as processes 0..n-1 of one run; return the exit
    status (0 when every process succeeded)."""
    n = as_int(n, "-n", "launch", error=FuncnetError)
    out = sys.stdout if out is None else out
    argv = child_command(command)
    address = f"{host}:{free_port(host)}"
    env = dict(os.environ, FUNCNET_COORDINATOR=address, FUNCNET_NUM_PROCESSES=str(n),
               PYTHONUNBUFFERED="1")
    if devices_per_process is not None:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                            f"{int(devices_per_process)}").strip()
    lock = threading.Lock()
    children, pumps = [], []
    # Ctrl-C is recorded (and forwarded by _supervise) from before the first child starts:
    # installed later, a Ctrl-C right after a child's first output line raised
    # KeyboardInterrupt in the launcher instead (each child resets SIGINT in _child_setup).
    interrupts = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupts.append(time.monotonic()))
    try:
        for i in range(n):
            p = subprocess.Popen(argv, env=dict(env, FUNCNET_PROCESS_ID=str(i)),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=_child_setup)
            children.append(p)
        for i, p in enumerate(children):  # readers start after the forks (preexec_fn, threads)
            pumps.append(threading.Thread(target=_pump, args=(i, p.stdout, out, lock), daemon=True))
            pumps[-1].start()
        status = _supervise(children, interrupts, grace, out, lock)
    finally:
        signal.signal(signal.SIGINT, previous)
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        for t in pumps:
            t.join(timeout=5)
    return status


def _say(out, lock, text):
    with lock:
        out.write(f"funcnet launch: {text}\n")
        out.flush()


def _supervise(children, interrupts, grace, out, lock) -> int:
    """Wait for the children; on the first failure or Ctrl-C, stop the rest. The status is
    a child's killed by a signal if any (the likely cause: the others then fail for want of
    it), else the first failure's."""
    failures, deadline, forwarded, killed = {}, None, 0, set()
    while any(p.poll() is None for p in children):
        if len(interrupts) > forwarded:  # Ctrl-C: forward the first, kill on the second
            forwarded = len(interrupts)
            if forwarded == 1:
                _say(out, lock, "interrupted; forwarding SIGINT to every process")
                for p in children:
                    if p.poll() is None:
                        p.send_signal(signal.SIGINT)
                deadline = time.monotonic() + grace
            else:
                deadline = time.monotonic()
            failures.setdefault("interrupt", -signal.SIGINT)
        for i, p in enumerate(children):
            rc = p.poll()
            if rc not in (None, 0) and i not in failures:
                failures[i] = rc
                stopping = "" if deadline is not None else \
                    f"; stopping the others (killed after {grace:g} s)"
                _say(out, lock, f"process {i} {_describe(rc)}{stopping}")
                deadline = deadline or time.monotonic() + grace
        if deadline is not None and time.monotonic() >= deadline:
            for i, p in enumerate(children):
                if p.poll() is None:
                    killed.add(i)
                    p.kill()
            break
        time.sleep(0.05)
    for i, p in enumerate(children):  # those that ended between two polls are reported too
        if p.wait() and i not in failures and i not in killed:
            failures[i] = p.returncode
            _say(out, lock, f"process {i} {_describe(p.returncode)}")
    if not failures:
        return 0
    signalled = [rc for rc in failures.values() if rc < 0]
    return _status(signalled[0] if signalled else next(iter(failures.values())))
