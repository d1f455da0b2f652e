"""funcnet/sharding.py and fit(devices=...): data parallelism with jax.sharding; the old
spellings of its helpers (fn.parallel.make_mesh, funcnet.parallel), kept with a warning.

The multi-device run needs XLA_FLAGS set before JAX starts, so it runs in a subprocess
(with a timeout: a hung collective must fail the test, never hang CI).
"""
import importlib
import inspect
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import funcnet as fn
from funcnet import sharding
from tests.nets import run_on_devices

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
    return run_on_devices(FOUR_DEVICES, 4)


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
    mesh = sharding.make_mesh(jax.devices()[:1])
    assert mesh.axis_names == ("batch",) and sharding.make_mesh(mesh) is mesh
    x = np.arange(12.0).reshape(6, 2)
    sharded = sharding.shard_batch({"x": x}, mesh)["x"]
    assert sharded.sharding.spec == jax.sharding.PartitionSpec("batch")
    np.testing.assert_array_equal(np.asarray(sharded), x)
    rep = sharding.replicate({"w": np.ones(3)}, mesh)["w"]
    assert rep.sharding.spec == jax.sharding.PartitionSpec()


def test_mesh_errors():
    with pytest.raises(fn.FuncnetError, match=r"sequence of devices or a Mesh, got 4; .*\[:n\]"):
        sharding.make_mesh(4)
    with pytest.raises(fn.FuncnetError, match="devices is empty"):
        sharding.make_mesh([])
    with pytest.raises(fn.FuncnetError, match="lists a device twice"):
        sharding.make_mesh(jax.devices()[:1] * 2)
    other = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(fn.FuncnetError, match="axis named 'batch'"):
        sharding.make_mesh(other)


def test_make_mesh_2d_takes_numpy_ints_and_refuses_what_does_not_divide():
    one = jax.devices()[:1]
    mesh = sharding.make_mesh_2d(one, model=np.int64(1))
    assert mesh.axis_names == ("batch", "model") and dict(mesh.shape) == {"batch": 1, "model": 1}
    with pytest.raises(fn.FuncnetError, match="make_mesh_2d: model must be a positive int, got True"):
        sharding.make_mesh_2d(one, model=True)
    with pytest.raises(fn.FuncnetError, match="make_mesh_2d: model must be a positive int, got 1.0"):
        sharding.make_mesh_2d(one, model=1.0)
    with pytest.raises(fn.FuncnetError, match="dividing the 1 devices, got 2"):
        sharding.make_mesh_2d(one, model=np.int32(2))


# ----------------------------------------------------------------------------- old spellings

def test_fn_sharding_is_this_module_and_importing_funcnet_warns_of_nothing():
    code = ("import sys, funcnet as fn; "
            "assert fn.sharding is sys.modules['funcnet.sharding']; print(fn.sharding.AXIS)")
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "batch\n", proc.stderr[-3000:]


@pytest.mark.parametrize("name", sharding.__all__)
def test_fn_parallel_dot_a_helper_is_the_helper_and_warns_when_called(name):
    new, old = getattr(sharding, name), getattr(fn.parallel, name)
    if not callable(new):
        assert old == new  # AXIS, MODEL_AXIS, MAX_IN_FLIGHT
        return
    assert old.__wrapped__ is new
    with pytest.warns(DeprecationWarning, match=rf"fn\.parallel\.{name} is deprecated: use "
                                                rf"fn\.sharding\.{name}"):
        try:
            old()  # without its arguments: most raise, make_mesh() builds a mesh
        except (TypeError, ValueError):
            pass


def test_the_old_spellings_give_the_same_results():
    with pytest.warns(DeprecationWarning, match="fn.sharding.make_mesh"):
        mesh = fn.parallel.make_mesh(jax.devices()[:1])
    with pytest.warns(DeprecationWarning, match="fn.sharding.shard_batch"):
        sharded = fn.parallel.shard_batch(np.arange(4.0), mesh)
    assert mesh == sharding.make_mesh(jax.devices()[:1])
    assert sharded.sharding == sharding.shard_batch(np.arange(4.0), mesh).sharding
    np.testing.assert_array_equal(np.asarray(sharded), np.arange(4.0))
    with pytest.raises(AttributeError, match="has no attribute 'make_mash'"):
        assert fn.parallel.make_mash is None  # a typo is not forwarded
    assert inspect.isfunction(fn.parallel) and fn.parallel is fn.combinators.parallel


def test_importing_funcnet_parallel_warns_and_leaves_fn_parallel_the_combinator(monkeypatch):
    import funcnet
    from funcnet.combinators import parallel as combinator
    before = funcnet.parallel
    monkeypatch.delitem(sys.modules, "funcnet.parallel", raising=False)  # a first import
    with pytest.warns(DeprecationWarning, match="the module funcnet.parallel is deprecated: .* "
                                                "funcnet.sharding"):
        module = importlib.import_module("funcnet.parallel")
    # the package attribute is still the combinator, and the "module" is that same object
    assert funcnet.parallel is before is module is combinator
    layer = fn.parallel(fn.dense(2), fn.dense(3))
    expected = combinator(fn.dense(2), fn.dense(3))
    assert layer.name == expected.name == "parallel"
    params, _ = layer.init(jax.random.PRNGKey(0), ((1, 4), (1, 5)))
    want, _ = expected.init(jax.random.PRNGKey(0), ((1, 4), (1, 5)))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)
    from funcnet.parallel import make_mesh
    assert make_mesh.__wrapped__ is sharding.make_mesh
    with pytest.warns(DeprecationWarning, match="use fn.sharding.make_mesh"):
        assert make_mesh(jax.devices()[:1]) == sharding.make_mesh(jax.devices()[:1])
