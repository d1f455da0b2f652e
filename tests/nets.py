"""What several test files share: small nets and optimizers (the same objects, so fit and
make_step reuse their compiled programs across tests of one worker), and a runner for code
that needs several (host CPU) devices in a process of its own."""
import json
import os
import subprocess
import sys

import funcnet as fn
import optax

from tests.suite_xla import device_flags

MLP16, SGD = fn.models.mlp(10, (16,)), optax.sgd(0.1)


def small_bn_net():
    """A net with every kind of step-to-step flow: batch-norm state and dropout keys."""
    return fn.serial(fn.flatten, fn.dense(32), fn.batch_norm(), fn.relu, fn.dropout(0.2),
                     fn.dense(10))


def run_on_devices(code: str, devices: int, timeout: int = 300):
    """Run `code` in a new Python process with `devices` CPU devices; return the JSON it
    prints on a line starting with RESULT."""
    env = dict(os.environ, XLA_FLAGS=device_flags(devices),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])
