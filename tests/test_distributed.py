"""Multi-process training for real: processes on 127.0.0.1 joined by JAX's distributed
runtime (gloo collectives on CPU), each run with a timeout so a hang fails.

Every run trains the same tiny MLP (dense, batch norm, relu, dropout, dense; SGD with
momentum; 12 steps of 16 examples; tests/distributed_worker.py) on the same global batches.
Processes x devices 1x1, 1x2, 2x1 and 2x2 must agree on every step's loss, the history and
the final parameters and batch-norm statistics to float32 round-off: max |difference| <=
TOL = 1e-5 (observed: <= 2.4e-7; the reductions only change summation order). Processes of
one run agree exactly, and a run killed and resumed ends bit for bit where an
uninterrupted one does.
"""
import fcntl
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import funcnet as fn
from funcnet import FuncnetError, distributed, launch
from tests.suite_xla import device_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
TOL = 1e-5
TIMEOUT = 180  # s for one run of processes; a hang fails the test instead of blocking it
HEARTBEAT = 10  # s: the heartbeat timeout the runs use (funcnet's default is 20)


def _env(devices, **extra):
    env = dict(os.environ, XLA_FLAGS=device_flags(devices),
               FUNCNET_HEARTBEAT_TIMEOUT=str(HEARTBEAT), PYTHONUNBUFFERED="1")
    for k in ("FUNCNET_COORDINATOR", "FUNCNET_NUM_PROCESSES", "FUNCNET_PROCESS_ID"):
        env.pop(k, None)
    env.update(extra)
    return env


def _start(out, processes, devices, *args):
    """Start one run's processes (with --coordinator flags when several); returns them."""
    os.makedirs(out, exist_ok=True)
    address = f"127.0.0.1:{distributed.free_port()}"
    procs = []
    for i in range(processes):
        flags = (["--coordinator", address, "--num-processes", str(processes), "--process-id",
                  str(i)] if processes > 1 else [])
        procs.append(subprocess.Popen([sys.executable, WORKER, str(out), *flags, *args],
                                      env=_env(devices), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs, timeout=TIMEOUT):
    """(return codes, outputs), killing every process if any runs past `timeout`."""
    deadline, outputs = time.monotonic() + timeout, []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a run of {len(procs)} processes hung past {timeout} s")
    return [p.returncode for p in procs], outputs


def _run(out, processes, devices, *args):
    codes, outputs = _finish(_start(out, processes, devices, *args))
    assert codes == [0] * processes, "\n".join(o[-3000:] for o in outputs)
    return [dict(np.load(os.path.join(out, f"result_{i}.npz"))) for i in range(processes)]


def _close(a, b, exact=False):
    for k in ("flat", "losses", "history"):
        assert a[k].shape == b[k].shape, k
        diff = np.max(np.abs(a[k] - b[k]))
        assert diff == 0 if exact else diff <= TOL, (k, diff)


SHAPES = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1), "2x2": (2, 2), "2d": (1, 4)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Processes x devices 1x1, 1x2, 2x1, 2x2, and 1x4 as a 2-D mesh, started together (they
    share the CPU). Under pytest-xdist the workers share one set of runs (a file lock)."""
    base = tmp_path_factory.getbasetemp()
    base = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "distributed-runs"
    base.mkdir(exist_ok=True)
    with open(base / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "done").exists():
            started = {k: _start(base / k, *shape, *(["--model-axis", "2"] if k == "2d" else []))
                       for k, shape in SHAPES.items()}
            for procs in started.values():
                codes, outputs = _finish(procs)
                assert codes == [0] * len(procs), "\n".join(o[-3000:] for o in outputs)
            (base / "done").touch()
    return {k: [dict(np.load(base / k / f"result_{i}.npz")) for i in range(shape[0])]
            for k, shape in SHAPES.items()}


def test_processes_and_devices_agree(runs):
    ref = runs["1x1"][0]
    assert int(ref["step"]) == 12 and len(ref["losses"]) == 12
    assert [int(runs[k][0]["devices"]) for k in ("1x1", "1x2", "2x1")] == [1, 2, 2]
    assert int(runs["2x1"][0]["processes"]) == 2
    _close(runs["1x2"][0], ref)
    _close(runs["2x1"][0], ref)
    _close(runs["2x1"][1], runs["2x1"][0], exact=True)  # every process holds the same


def test_two_processes_of_two_devices(runs):
    results = runs["2x2"]
    assert int(results[0]["devices"]) == 4
    _close(results[0], runs["1x1"][0])
    _close(results[1], results[0], exact=True)


def test_weights_split_over_a_model_axis(runs):
    """4 devices as a 2-D mesh, batch 2 x model 2: each device holds half of every weight
    matrix's columns (dense (6, 8) -> (6, 4)), and training follows the 1-device run."""
    results = runs["2d"]
    assert tuple(results[0]["w_shard"]) == (6, 4)
    assert tuple(runs["1x1"][0]["w_shard"]) == (6, 8)
    _close(results[0], runs["1x1"][0])


def test_lost_process_stops_run_and_resume_matches(runs, tmp_path):
    """Process 1 kills itself (SIGKILL) after epoch 2 of 3, under `funcnet launch`: process
    0 stops with ProcessLostError naming process 1 well within the heartbeat bound, launch
    exits non-zero; a restart resumes from the last checkpoint and ends bit for bit where
    the uninterrupted 2-process run ended."""
    ckpt = tmp_path / "checkpoints"
    cmd = [sys.executable, "-m", "funcnet", "launch", "-n", "2", "--grace", "30", "--", WORKER,
           str(tmp_path), "--checkpoint-dir", str(ckpt), "--die-after-epoch", "2"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, env=_env(1), cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    seconds = time.monotonic() - t0
    out = done.stdout
    assert done.returncode == 128 + signal.SIGKILL, out[-3000:]
    assert "[1] worker 1: killing myself after epoch 2" in out
    assert "funcnet launch: process 1 was killed by SIGKILL" in out
    assert "[0] worker 0: error: fit: lost process 1 of 2" in out, out[-3000:]
    assert seconds < TIMEOUT
    assert max(os.listdir(ckpt)) == "ckpt_00000008.npz"  # epochs 1 and 2 were saved

    resumed = _run(tmp_path, 2, 1, "--checkpoint-dir", str(ckpt))
    ref = runs["2x1"][0]
    np.testing.assert_array_equal(resumed[0]["flat"], ref["flat"])
    np.testing.assert_array_equal(resumed[0]["history"], ref["history"])
    np.testing.assert_array_equal(resumed[0]["losses"], ref["losses"][8:])  # this call's steps
    _close(resumed[1], resumed[0], exact=True)


def test_launch_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "funcnet", "launch", "-n", "2", "--", "train", "--model", "mlp",
           "--epochs", "1", "--batch-size", "64", "--no-gradcheck", "--no-progress", "--out",
           str(out)]
    done = subprocess.run(cmd, env=_env(1), cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.splitlines()
    epochs = {i: [l[4:l.index("(")] for l in lines if l.startswith(f"[{i}] epoch")] for i in (0, 1)}
    assert len(epochs[0]) == 1 and epochs[0] == epochs[1]  # the same metrics on both
    assert any(l.startswith("[0] funcnet train: process 0 of 2, 2 devices") for l in lines)
    assert sorted(os.listdir(out)) >= ["checkpoints", "history.json"]
    assert os.listdir(out / "checkpoints") == ["ckpt_00000022.npz"]


def test_launch_forwards_ctrl_c(tmp_path):
    """SIGINT to the launcher reaches every child (here: scripts without JAX that wait);
    the launcher then exits with 130, children gone."""
    script = tmp_path / "wait.py"
    script.write_text("import os, time\nprint('ready', os.getpid(), flush=True)\ntime.sleep(60)\n")
    launcher = subprocess.Popen([sys.executable, "-m", "funcnet", "launch", "-n", "2", "--",
                                 str(script)], cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    lines = []
    while sum(line.split("] ", 1)[-1].startswith("ready") for line in lines) < 2:
        line = launcher.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    launcher.send_signal(signal.SIGINT)
    rest = launcher.communicate(timeout=30)[0]
    assert launcher.returncode == 130, rest
    assert "forwarding SIGINT" in rest and "[0] KeyboardInterrupt" in rest and "[1] Keyboard" in rest
    for line in lines:
        pid = int(line.split()[-1])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# ----------------------------------------------------------------------------- no processes

def test_initialize_without_settings_is_single_process(monkeypatch):
    for k in ("FUNCNET_COORDINATOR", "FUNCNET_NUM_PROCESSES", "FUNCNET_PROCESS_ID",
              "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(distributed, "_cluster_detected", lambda: False)
    assert distributed.initialize() is False
    with pytest.raises(FuncnetError, match="give all three"):
        distributed.initialize("127.0.0.1:1234")
    with pytest.raises(FuncnetError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(FuncnetError, match=r"process_id must lie in \[0, 1\]"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("FUNCNET_HEARTBEAT_TIMEOUT", "soon")
    with pytest.raises(FuncnetError, match="FUNCNET_HEARTBEAT_TIMEOUT must be an int"):
        distributed.initialize("127.0.0.1:1234", 2, 0)
    # Single-process: a failed collective is not a lost process.
    assert distributed.as_process_lost(ValueError("Gloo all-reduce failed"), "fit") is None


def test_cluster_detection_needs_several_tasks(monkeypatch):
    """SLURM / Open MPI jobs of several tasks are left to jax.distributed.initialize();
    single-task ones are plain single-process runs."""
    for k in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed._cluster_detected() is False
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed._cluster_detected() is True
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed._cluster_detected() is True


def test_launch_child_command():
    argv = launch.child_command(["train", "--epochs", "2"])
    assert argv[0] == sys.executable and argv[-5:] == ["-m", "funcnet", "train", "--epochs", "2"]
    assert launch.child_command(["run.py", "-x"])[-2:] == ["run.py", "-x"]
    with pytest.raises(FuncnetError, match="give the command"):
        launch.child_command([])


def test_launch_takes_numpy_ints_and_is_an_attribute_of_fn(tmp_path):
    assert fn.launch is launch and fn.launch.launch is launch.launch
    for bad in (0, True, 1.0):
        with pytest.raises(FuncnetError, match=rf"launch: -n must be a positive int, got {bad!r}"):
            launch.launch(["run.py"], bad)
    # launched from a fresh process: forking this one, where JAX runs threads, is unsafe
    script = tmp_path / "hello.py"
    script.write_text("import os; print('hello from', os.environ['FUNCNET_PROCESS_ID'], "
                      "'of', os.environ['FUNCNET_NUM_PROCESSES'])\n")
    code = ("import sys, numpy as np, funcnet as fn; "
            f"sys.exit(fn.launch.launch([{str(script)!r}], np.int64(2)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(proc.stdout.splitlines()) == ["[0] hello from 0 of 2", "[1] hello from 1 of 2"]


def test_timeouts_take_numpy_ints():
    assert distributed._timeout(np.int64(7), "heartbeat_timeout", 20) == 7
    assert type(distributed._timeout(np.int32(7), "heartbeat_timeout", 20)) is int
    assert distributed._timeout(None, "shutdown_timeout", 60) == 60
    for bad in (0, True, 2.5):
        with pytest.raises(FuncnetError, match=r"distributed.initialize: heartbeat_timeout "
                                               r"\(seconds\) must be a positive int"):
            distributed._timeout(bad, "heartbeat_timeout", 20)


def test_exit_now_skips_the_atexit_handlers_but_flushes():
    """After a failure in a multi-process run: no exit-time barrier (an atexit handler of
    JAX's) that would wait for lost processes, and the output so far still arrives."""
    code = ("import atexit; from funcnet import distributed; atexit.register(print, 'atexit ran'); "
            "print('partial', end=''); distributed.exit_now(3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 3 and proc.stdout == "partial", proc

