"""funcnet/parallel.py and fit(devices=...): data parallelism with jax.sharding.

The multi-device run needs XLA_FLAGS set before JAX starts, so it runs in a subprocess
(with a timeout: a hung collective must fail the test, never hang CI).
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import funcnet as fn
from funcnet import parallel

FOUR_DEVICES = textwrap.dedent("""
    import json, jax, optax, numpy as np
    import funcnet as fn
    assert len(jax.devices()) == 4, jax.devices()
    (x, y), _ = fn.data.load("digits")
    x, y = x[:512], y[:512]
    # batch norm (statistics over the global batch) and dropout (keys) both flow
    model = fn.serial(fn.flatten, fn.dense(32), fn.batch_norm(), fn.relu, fn.dropout(0.2),
                      fn.dense(10))
    opt = optax.sgd(0.1, momentum=0.9)
    runs = {}
    # 10 epochs of 8 steps: 80 steps, far beyond XLA:CPU's 32 computations in flight that
    # deadlocked an unbounded dispatch loop
    for name, devices in (("one", None), ("four", jax.devices())):
        state, history = fn.train.fit(model, opt, (x, y), loss=fn.losses.softmax_cross_entropy,
                                      epochs=10, batch_size=64, key=jax.random.PRNGKey(0),
                                      devices=devices, val_data=(x[:100], y[:100]),
                                      progress=False)
        runs[name] = dict(losses=history.step_losses,
                          w=np.asarray(state.params[1]["w"]).tolist(),
                          mean=np.asarray(state.state[2]["mean"]).tolist(),
                          sharding=str(state.params[1]["w"].sharding),
                          steps=int(state.step), val_loss=history["val_loss"])
    errors = []
    for kw in (dict(batch_size=30), dict(batch_size=64, x=x[:498], y=y[:498])):
        xx, yy = kw.pop("x", x), kw.pop("y", y)
        try:
            fn.train.fit(model, opt, (xx, yy), loss=fn.losses.softmax_cross_entropy, epochs=1,
                         key=jax.random.PRNGKey(0), devices=jax.devices(), progress=False, **kw)
        except fn.FuncnetError as e:
            errors.append(str(e))
    runs["errors"] = errors
    print("RESULT" + json.dumps(runs))
""")


@pytest.fixture(scope="module")
def four_device_run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_four_devices_follow_the_single_device_trajectory(four_device_run):
    one, four = four_device_run["one"], four_device_run["four"]
    assert one["steps"] == four["steps"] == 80 == len(four["losses"])
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(four["w"], one["w"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(four["val_loss"], one["val_loss"], rtol=0, atol=1e-5)
    assert len(one["val_loss"]) == 10
    # batch-norm running mean: statistics of the global batch, as on one device
    np.testing.assert_allclose(four["mean"], one["mean"], rtol=0, atol=1e-5)
    assert one["losses"][-1] < 0.5 * one["losses"][0]  # it trained
    assert "NamedSharding" in four["sharding"] and "P()" in four["sharding"]  # replicated


def test_batches_that_do_not_split_over_the_devices_are_errors(four_device_run):
    not_divisible, remainder = four_device_run["errors"]
    assert "a batch of 30 examples cannot be split evenly over 4 devices" in not_divisible
    assert "last batch of each epoch has 50 examples" in remainder
    assert "drop_remainder=True" in remainder


def test_mesh_and_shardings_on_one_device():
    mesh = parallel.make_mesh(jax.devices()[:1])
    assert mesh.axis_names == ("batch",) and parallel.make_mesh(mesh) is mesh
    x = np.arange(12.0).reshape(6, 2)
    sharded = parallel.shard_batch({"x": x}, mesh)["x"]
    assert sharded.sharding.spec == jax.sharding.PartitionSpec("batch")
    np.testing.assert_array_equal(np.asarray(sharded), x)
    rep = parallel.replicate({"w": np.ones(3)}, mesh)["w"]
    assert rep.sharding.spec == jax.sharding.PartitionSpec()


def test_mesh_errors():
    with pytest.raises(fn.FuncnetError, match=r"sequence of devices or a Mesh, got 4; .*\[:n\]"):
        parallel.make_mesh(4)
    with pytest.raises(fn.FuncnetError, match="devices is empty"):
        parallel.make_mesh([])
    with pytest.raises(fn.FuncnetError, match="lists a device twice"):
        parallel.make_mesh(jax.devices()[:1] * 2)
    other = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(fn.FuncnetError, match="axis named 'batch'"):
        parallel.make_mesh(other)
