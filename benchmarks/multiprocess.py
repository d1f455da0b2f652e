"""Multi-process overhead and fault detection (results in RESULTS.md, "Multi-process").

    python benchmarks/multiprocess.py            # steps/s for 1x1, 1x2, 2x1 (processes x
                                                 # devices) on the MLP and LeNet, batch 128,
                                                 # then the time to detect a lost process

A step is `fn.train.make_step` over a mesh of every device of every process, the global
batch of 128 gathered with `fn.sharding.gather_batch` (each process copies only its rows).
On a machine with 2 cores, 1x2 and 2x1 split the same cores, so the figures measure the
cost of sharding and of gloo's all-reduce over loopback TCP, not a speed-up.

Lost process: process 1 of 2 sends itself SIGKILL (crash) or SIGSTOP (hang) after a few
steps; the figure is the time from then until process 0 has stopped (its ProcessLostError,
or JAX's coordination service terminating it once heartbeats stop).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(kind: str, steps: int, fault: str = "none"):
    import funcnet as fn
    fn.distributed.initialize()
    import jax
    import optax

    from benchmarks import workloads
    model = workloads.funcnet_model(kind)
    mesh = fn.sharding.make_mesh(jax.devices())
    opt = optax.sgd(workloads.LR, momentum=workloads.MOMENTUM)
    shape = (workloads.BATCH, 784) if kind.startswith("mlp") else (workloads.BATCH, 28, 28, 1)
    ts = fn.sharding.replicate(fn.train.init_train_state(model, opt, shape, jax.random.PRNGKey(0)),
                               mesh)
    step = fn.train.make_step(model, opt, fn.losses.softmax_cross_entropy, mesh=mesh)
    x, y = workloads.batch(kind)
    index = list(range(len(x)))
    me = jax.process_index()
    for _ in range(3):  # compile, warm up
        ts, m = step(ts, *fn.sharding.gather_batch((x, y), index, mesh))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    try:
        for i in range(steps):
            if fault != "none" and i == 10 and me == 1:
                print(json.dumps({"fault": fault, "at": time.time()}), flush=True)
                os.kill(os.getpid(), signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
            ts, m = step(ts, *fn.sharding.gather_batch((x, y), index, mesh))
            if i % 8 == 7:
                jax.block_until_ready(m)
        jax.block_until_ready(m)
    except Exception as e:  # noqa: BLE001
        lost = fn.distributed.as_process_lost(e, "benchmark", i)
        print(json.dumps({"lost": str(lost or e)[:200], "at": time.time()}), flush=True)
        fn.distributed.exit_now(3)
    if me == 0:
        print(json.dumps({"steps_per_s": steps / (time.perf_counter() - t0)}), flush=True)


def _run(kind, processes, devices, steps, fault="none", timeout=300):
    from funcnet.distributed import free_port
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONUNBUFFERED="1")
    if processes > 1:
        env.update(FUNCNET_COORDINATOR=f"127.0.0.1:{free_port()}",
                   FUNCNET_NUM_PROCESSES=str(processes))
    procs = [subprocess.Popen([sys.executable, __file__, "worker", kind, str(steps), fault],
                              env=dict(env, FUNCNET_PROCESS_ID=str(i)) if processes > 1 else env,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i in range(processes)]
    records, ended = [], {}
    if fault == "stop":  # the stopped process never ends by itself
        first = procs[0].communicate(timeout=timeout)[0]
        ended[0] = time.time()
        procs[1].kill()
        outputs = [first, procs[1].communicate()[0]]
    else:
        outputs = []
        for i, p in enumerate(procs):
            outputs.append(p.communicate(timeout=timeout)[0])
            ended[i] = time.time()
    for out in outputs:
        records += [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return records, ended


def main():
    from funcnet.distributed import HEARTBEAT_TIMEOUT
    print(f"cores: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}")
    for kind, steps in (("mlp", 200), ("lenet", 60)):
        for processes, devices in ((1, 1), (1, 2), (2, 1)):
            records, _ = _run(kind, processes, devices, steps)
            rate = [r["steps_per_s"] for r in records if "steps_per_s" in r]
            print(f"{kind:6s} {processes} process(es) x {devices} device(s): "
                  f"{rate[0]:7.1f} steps/s")
    for fault in ("kill", "stop"):
        records, ended = _run("mlp", 2, 1, 100000, fault)
        at = next(r["at"] for r in records if "fault" in r)
        lost = [r for r in records if "lost" in r]
        how = f"ProcessLostError after {lost[0]['at'] - at:.2f} s" if lost else "terminated by JAX"
        print(f"process 1 {'killed' if fault == 'kill' else 'stopped (SIGSTOP)'}: process 0 "
              f"stopped after {ended[0] - at:.1f} s ({how}; heartbeat timeout "
              f"{os.environ.get('FUNCNET_HEARTBEAT_TIMEOUT', HEARTBEAT_TIMEOUT)} s)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
