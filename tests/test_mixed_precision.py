"""funcnet/mixed_precision.py through make_step and evaluate: a bfloat16 / float16 compute
dtype on float32 master parameters, and loss scaling (fit's side is in tests/test_fit.py).

Every run is seeded from an explicit key; models and batches are tiny.
"""
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import mixed_precision as mp
from funcnet import train
from tests.nets import run_on_devices

KEY = jax.random.PRNGKey(0)
CE = fn.losses.softmax_cross_entropy


def grads_kept():
    """An optax transformation whose state is the last gradients it was given (and whose
    updates are zero): the gradients a step computed, as the optimizer received them."""
    def init(params):
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        return jax.tree_util.tree_map(jnp.zeros_like, grads), grads

    return optax.GradientTransformation(init, update)


GRADS = grads_kept()
BN_NET = fn.serial(fn.flatten, fn.dense(16), fn.batch_norm(), fn.relu, fn.dense(10))
MANUAL_BN_NET = fn.with_manual_grads(BN_NET)


@pytest.fixture(scope="module")
def batch():
    (x, y), _ = fn.data.load("digits")
    return x[:32], y[:32]


def dtypes(tree):
    return {np.dtype(a.dtype).name for a in jax.tree_util.tree_leaves(tree)}


def global_rel_error(a, b):
    """‖a − b‖ / ‖b‖ over every leaf together."""
    diff = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                           jax.tree_util.tree_leaves(b)))
    norm = sum(float(jnp.sum(y ** 2)) for y in jax.tree_util.tree_leaves(b))
    return math.sqrt(diff / norm)


def one_step(model, batch, **policy):
    x, y = batch
    ts = train.init_train_state(model, GRADS, x.shape, KEY)
    return train.make_step(model, GRADS, CE, donate=False, **policy)(ts, x, y)


# ----------------------------------------------------------------------------- compute dtype

@pytest.mark.parametrize("model", [BN_NET, MANUAL_BN_NET], ids=["autodiff", "manual"])
def test_bfloat16_step_keeps_float32_masters_and_float32_gradients(model, batch):
    reference, ref_metrics = one_step(BN_NET, batch)
    ts, metrics = one_step(model, batch, compute_dtype=jnp.bfloat16)
    # master params, optimizer state (here: the gradients) and model state stay float32
    assert dtypes(ts.params) == dtypes(ts.opt_state) == dtypes(ts.state) == {"float32"}
    assert metrics["loss"].dtype == jnp.float32 and metrics["accuracy"].dtype == jnp.float32
    assert global_rel_error(ts.opt_state, reference.opt_state) < 2e-2  # bf16 round-off
    assert global_rel_error(ts.state, reference.state) < 2e-2
    assert float(metrics["loss"]) == pytest.approx(float(ref_metrics["loss"]), rel=1e-2)
    # the plain program has no loss scale and reports no skips
    assert ts.loss_scale is None and set(metrics) == {"loss", "accuracy"}


def test_the_logits_are_widened_to_float32_before_the_loss(batch):
    seen = []

    def loss(logits, labels):
        seen.append(logits.dtype)
        return CE(logits, labels)

    x, y = batch
    step = train.make_step(BN_NET, GRADS, loss, compute_dtype="bfloat16", donate=False)
    step(train.init_train_state(BN_NET, GRADS, x.shape, KEY), x, y)
    assert seen == [jnp.float32]


def test_float32_or_none_is_todays_program():
    for same in ("float32", jnp.float32, np.dtype("float32")):
        assert train.make_step(BN_NET, GRADS, CE, compute_dtype=same) is train.make_step(BN_NET, GRADS, CE)


def test_integer_ids_stay_integers_under_a_compute_dtype():
    model = fn.serial(fn.embedding(12, 6), fn.flatten, fn.dense(3))
    x = (np.arange(24).reshape(8, 3) % 12).astype(np.int32)
    y = np.arange(8, dtype=np.int32) % 3
    ts = train.init_train_state(model, GRADS, x.shape, KEY)
    ref, _ = train.make_step(model, GRADS, CE, donate=False)(ts, x, y)
    got, _ = train.make_step(model, GRADS, CE, donate=False, compute_dtype=jnp.bfloat16)(ts, x, y)
    assert global_rel_error(got.opt_state, ref.opt_state) < 2e-2
    assert dtypes(got.opt_state) == {"float32"}


def test_evaluate_in_bfloat16_matches_float32(batch):
    x, y = batch
    params, state = BN_NET.init(KEY, x.shape)
    want = train.evaluate(BN_NET, params, state, x, y, batch_size=12)
    got = train.evaluate(BN_NET, params, state, x, y, batch_size=12, compute_dtype=jnp.bfloat16,
                         loss_scale="dynamic")  # accepted and ignored: no backward pass
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-2)
    assert abs(got["accuracy"] - want["accuracy"]) <= 2 / len(x)  # at most a borderline flip or two


def test_the_step_on_a_mesh_matches_one_device(batch):
    x, y = batch
    ts = train.init_train_state(BN_NET, GRADS, x.shape, KEY)
    policy = dict(compute_dtype=jnp.bfloat16, loss_scale="dynamic", donate=False)
    one, m_one = train.make_step(BN_NET, GRADS, CE, **policy)(ts, x, y)
    mesh = fn.sharding.make_mesh(jax.devices())
    meshed, m_mesh = train.make_step(BN_NET, GRADS, CE, mesh=mesh, **policy)(
        fn.sharding.replicate(ts, mesh), *fn.sharding.shard_batch((x, y), mesh))
    assert global_rel_error(meshed.opt_state, one.opt_state) < 1e-5
    assert float(meshed.loss_scale.scale) == float(one.loss_scale.scale) == 2.0 ** 15
    assert int(m_mesh["skipped"]) == int(m_one["skipped"]) == 0


TWO_DEVICES = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, optax, numpy as np
    import funcnet as fn
    assert len(jax.devices()) == 2, jax.devices()
    (x, y), _ = fn.data.load("digits")
    model = fn.serial(fn.flatten, fn.dense(16), fn.batch_norm(), fn.relu, fn.dense(10))
    runs = {}
    for name, devices in (("one", None), ("two", jax.devices())):
        ts, history = fn.train.fit(model, optax.adam(1e-2), (x[:256], y[:256]), epochs=2,
                                   batch_size=64, key=jax.random.PRNGKey(0), devices=devices,
                                   progress=False, compute_dtype=jnp.bfloat16, loss_scale="dynamic")
        runs[name] = dict(losses=history.step_losses, skipped=history["skipped"],
                          w=np.asarray(ts.params[1]["w"]).tolist(),
                          dtypes=sorted({str(a.dtype) for a in jax.tree_util.tree_leaves(ts.params)}),
                          scale=float(ts.loss_scale.scale), sharding=str(ts.params[1]["w"].sharding))
    print("RESULT" + json.dumps(runs))
""")


def test_fit_on_two_devices_follows_one_device():
    one, two = run_on_devices(TWO_DEVICES, 2).values()
    assert one["dtypes"] == two["dtypes"] == ["float32"] and one["skipped"] == two["skipped"] == [0, 0]
    assert one["scale"] == two["scale"] == 2.0 ** 15 and "P()" in two["sharding"]  # replicated
    # the same steps in bfloat16; the cross-device sum only reorders round-off
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=2e-2)
    assert global_rel_error(np.asarray(two["w"]), np.asarray(one["w"])) < 2e-2
    assert one["losses"][-1] < 0.7 * one["losses"][0]


# ----------------------------------------------------------------------------- loss scaling

def overflowing_problem():
    """A dense layer on inputs of size 100: its float16 forward is fine, but dW = xᵀ dy of the
    loss scaled by 2¹⁵ reaches ~2¹⁵ · 100 / 4 > 65504 and overflows float16 until the
    scale has halved a few times."""
    x = np.full((4, 3), 100.0, np.float32)
    y = np.array([0, 1, 0, 1], np.int32)
    model = fn.serial(fn.dense(2))
    return model, x, y


def test_float16_overflow_skips_the_step_and_halves_the_scale():
    model, x, y = overflowing_problem()
    opt = optax.adam(1e-2)
    ts = train.init_train_state(model, opt, x.shape, KEY, loss_scale="dynamic")
    assert float(ts.loss_scale.scale) == 2.0 ** 15
    step = train.make_step(model, opt, CE, compute_dtype=jnp.float16, loss_scale="dynamic",
                           donate=False)
    new, metrics = step(ts, x, y)
    assert int(metrics["skipped"]) == 1 and float(metrics["loss_scale"]) == 2.0 ** 15
    for a, b in zip(jax.tree_util.tree_leaves((new.params, new.opt_state, new.state)),
                    jax.tree_util.tree_leaves((ts.params, ts.opt_state, ts.state))):
        assert np.array_equal(a, b)  # bit for bit
    assert np.isfinite(float(metrics["loss"]))  # the forward was fine: the backward overflowed
    assert float(new.loss_scale.scale) == 2.0 ** 14 and int(new.loss_scale.good_steps) == 0
    assert int(new.step) == 1 and not np.array_equal(new.key, ts.key)  # the step still counts
    skipped = [1]
    while skipped[-1]:
        new, metrics = step(new, x, y)
        skipped.append(int(metrics["skipped"]))
    # scale · 100 · |dy| must fit in float16: 2^15 → 2^12 or so, then a real update
    assert 2 <= len(skipped) - 1 <= 6
    assert float(new.loss_scale.scale) == 2.0 ** (15 - (len(skipped) - 1))
    assert not np.array_equal(new.params[0]["w"], ts.params[0]["w"])
    assert dtypes(new.params) == {"float32"} and dtypes(new.opt_state) == {"float32", "int32"}
    assert int(new.opt_state[0].count) == 1  # adam counted the one update it made


def test_a_fixed_scale_skips_but_stays():
    model, x, y = overflowing_problem()
    sgd = optax.sgd(0.1)
    step = train.make_step(model, sgd, CE, compute_dtype=jnp.float16, loss_scale=2.0 ** 15,
                           donate=False)
    ts = train.init_train_state(model, sgd, x.shape, KEY)  # no scale yet: the policy's
    new, metrics = step(ts, x, y)
    assert int(metrics["skipped"]) == 1 and float(new.loss_scale.scale) == 2.0 ** 15
    assert np.array_equal(new.params[0]["w"], ts.params[0]["w"])
    small = x / 100  # dW = 2^15 · 1 · |dy| fits in float16
    ok, metrics = step(new, small, y)
    assert int(metrics["skipped"]) == 0 and float(ok.loss_scale.scale) == 2.0 ** 15
    # the unscaled float16 gradients are the float32 ones to float16 round-off
    plain, _ = train.make_step(model, sgd, CE, donate=False)(ts, small, y)
    np.testing.assert_allclose(ok.params[0]["w"], plain.params[0]["w"], rtol=2e-3)


def test_the_scale_grows_after_enough_good_steps():
    model, x, y = overflowing_problem()
    policy = fn.train.dynamic_loss_scale(initial=4.0, growth_interval=3)
    step = train.make_step(model, optax.sgd(0.01), CE, compute_dtype=jnp.float16,
                           loss_scale=policy)
    ts = train.init_train_state(model, optax.sgd(0.01), x.shape, KEY)
    scales = []
    for _ in range(7):
        ts, metrics = step(ts, x / 100, y)
        assert int(metrics["skipped"]) == 0
        scales.append(float(ts.loss_scale.scale))
    assert scales == [4.0, 4.0, 8.0, 8.0, 8.0, 16.0, 16.0]


def test_the_policy_function():
    dynamic = mp.LossScalePolicy()
    assert dynamic == mp.resolve_loss_scale("dynamic", "t") == (2.0 ** 15, True, 2000)
    ls = mp.init_loss_scale(dynamic)
    good = mp.next_loss_scale(ls, jnp.asarray(True), dynamic)
    assert (float(good.scale), int(good.good_steps)) == (2.0 ** 15, 1)
    due = mp.next_loss_scale(ls._replace(good_steps=jnp.int32(1999)), jnp.asarray(True), dynamic)
    assert (float(due.scale), int(due.good_steps)) == (2.0 ** 16, 0)
    bad = mp.next_loss_scale(due._replace(good_steps=jnp.int32(7)), jnp.asarray(False), dynamic)
    assert (float(bad.scale), int(bad.good_steps)) == (2.0 ** 15, 0)
    floor = mp.next_loss_scale(mp.LossScale(jnp.float32(mp.MINIMUM), jnp.int32(0)),
                               jnp.asarray(False), dynamic)
    assert float(floor.scale) == mp.MINIMUM  # never down to 0
    fixed = mp.resolve_loss_scale(128, "t")
    kept = mp.next_loss_scale(mp.init_loss_scale(fixed), jnp.asarray(False), fixed)
    assert float(kept.scale) == 128.0 and kept.scale.dtype == jnp.float32


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("policy, message", [
    (dict(compute_dtype=jnp.int32), "compute_dtype must be a floating dtype.*got int32"),
    (dict(compute_dtype="float64"), "compute_dtype float64 needs 64-bit mode"),
    (dict(compute_dtype="half-ish"), "compute_dtype must be float32, bfloat16 or float16"),
    (dict(loss_scale=0), "loss_scale must be None, \"dynamic\" or a finite number > 0, got 0"),
    (dict(loss_scale=-2.0), "loss_scale must be .* got -2.0"),
    (dict(loss_scale=math.inf), "loss_scale must be .* got inf"),
    (dict(loss_scale=math.nan), "loss_scale must be .* got nan"),
    (dict(loss_scale="static"), "loss_scale must be None, .* got the string 'static'"),
    (dict(loss_scale=True), "loss_scale must be"),
])
def test_bad_policies_are_clear_errors(policy, message):
    with pytest.raises(fn.FuncnetError, match="make_step: " + message):
        train.make_step(BN_NET, GRADS, CE, **policy)
    x, y = np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int32)
    with pytest.raises(fn.FuncnetError, match="fit: " + message):
        train.fit(BN_NET, GRADS, (x, y), epochs=1, key=KEY, progress=False, **policy)
    params, state = BN_NET.init(KEY, x.shape)
    with pytest.raises(fn.FuncnetError, match="evaluate: " + message):
        train.evaluate(BN_NET, params, state, x, y, **policy)
