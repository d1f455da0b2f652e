"""funcnet/fit.py: fit (accuracy, budgets, resume, NaN, progress, errors) and its names
still read from funcnet.train.

Real training runs on scikit-learn's digits; every run is seeded from an explicit key.
"""
import collections
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import checkpoint, train
from tests.nets import MLP16, SGD, small_bn_net

KEY = jax.random.PRNGKey(0)
CE = fn.losses.softmax_cross_entropy
IRIS_MLP, MOMENTUM = fn.models.mlp(3, (16,)), optax.sgd(0.05, momentum=0.9)


# ----------------------------------------------------------------------------- accuracy

def test_mlp_reaches_95_percent_on_digits():
    (x, y), (xt, yt) = fn.data.load("digits", scale="standard")
    model = fn.models.mlp(10)
    ts, history = train.fit(model, optax.sgd(0.05, momentum=0.9), (x, y), loss=CE, epochs=10,
                            batch_size=32, key=KEY, val_data=(xt, yt), drop_remainder=True,
                            progress=False)
    result = train.evaluate(model, ts.params, ts.state, xt, yt)
    assert result["accuracy"] >= 0.95
    # The history's last validation row is the same evaluation.
    assert history["val_accuracy"][-1] == pytest.approx(result["accuracy"])
    assert history["val_loss"][-1] == pytest.approx(result["loss"], rel=1e-6)
    assert history["epoch"] == list(range(1, 11))
    assert history["step"][-1] == int(ts.step) == 10 * (len(x) // 32)
    assert history["loss"][-1] < history["loss"][0] / 5  # "loss" reads "train_loss"
    assert len(history.step_losses) == int(ts.step)


def test_cnn_reaches_95_percent_on_digits(digits):
    (x, y), (xt, yt) = digits
    model = fn.models.lenet(10, image_size=8)
    ts, history = train.fit(model, optax.adam(3e-3), (x, y), loss=CE, epochs=10, batch_size=32,
                            key=KEY, val_data=(xt, yt), drop_remainder=True, progress=False)
    assert train.evaluate(model, ts.params, ts.state, xt, yt)["accuracy"] >= 0.95
    assert history[-1]["train_accuracy"] > 0.98
    assert all(s > 0 for s in history["seconds"])


# ----------------------------------------------------------------------------- fit semantics

@pytest.mark.parametrize("name, optimizer", [
    ("momentum", MOMENTUM),
    ("clip+cosine schedule+nesterov", optax.chain(
        optax.clip(0.5), optax.sgd(optax.cosine_decay_schedule(0.2, 60), momentum=0.5,
                                   nesterov=True))),
])


def test_fit_trains_with_optax_optimizers(name, optimizer):
    (x, y), _ = fn.data.load("iris")
    ts, history = train.fit(IRIS_MLP, optimizer, (x, y), loss=CE, epochs=15, batch_size=30,
                            key=KEY, progress=False)
    assert history["loss"][-1] < 0.5 * history["loss"][0], name
    assert history["train_accuracy"][-1] > 0.8, name


def test_batch_gradient_descent_and_target_loss():
    (x, y), _ = fn.data.load("iris")
    model = fn.models.mlp(3, (16,))
    ts, history = train.fit(model, optax.sgd(0.5), (x, y), loss=CE, epochs=500,
                            batch_size=len(x), key=KEY, target_loss=0.2, progress=False)
    # one step per epoch (the whole training set), stopped by the loss, not the budget
    assert history["step"] == history["epoch"]
    assert int(ts.step) == len(history) < 500
    assert history["loss"][-1] < 0.2 <= history["loss"][-2]


def test_steps_budget_ends_mid_epoch_with_a_partial_row(digits):
    (x, y), _ = digits
    ts, history = train.fit(MLP16, SGD, (x[:256], y[:256]), loss=CE, steps=11, batch_size=32,
                            key=KEY, progress=False)
    assert int(ts.step) == 11
    assert [r.get("partial", False) for r in history] == [False, True]
    assert history["step"] == [8, 11]


@pytest.mark.parametrize("bad, message", [
    (dict(x=np.zeros((10, 64), np.float32)), "does not take inputs of shape"),
    (dict(y=np.full(20, 10, np.int32)), "label 10 is out of range"),
    (dict(y=np.full(20, -1, np.int32)), "label -1 is out of range"),
    (dict(y=np.zeros(19, np.int32)), "x has 20 examples but y has 19"),
    (dict(epochs=None), "give a budget"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(val_data=(np.zeros((5, 8, 8, 1), np.float32), np.full(5, 12, np.int32))),
     "label 12 is out of range"),
    (dict(optimizer="adam"), "optax GradientTransformation"),
])


def test_fit_checks_its_inputs_before_compiling(bad, message):
    args = dict(x=np.zeros((20, 8, 8, 1), np.float32), y=np.zeros(20, np.int32), epochs=1,
                batch_size=4, val_data=None, optimizer=optax.sgd(0.1))
    args.update(bad)
    x = args["x"]
    y = args["y"] if "y" in bad or len(x) == 20 else args["y"][:len(x)]
    with pytest.raises(fn.FuncnetError, match=message):
        train.fit(fn.models.lenet(10, 8), args["optimizer"], (x, y), loss=CE, epochs=args["epochs"],
                  batch_size=args["batch_size"], key=KEY, val_data=args["val_data"], progress=False)


def test_nan_in_the_data_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    (x, y), _ = digits
    x, y = x[:256].copy(), y[:256]
    order = train.batch_order(KEY, 0, len(x))
    x[order[5 * 32 + 3]] = np.nan  # in the 6th batch of the first epoch
    with pytest.raises(train.NonFiniteLossError, match=r"at step 6 \(epoch 1, batch 6 of 8\)") as err:
        train.fit(MLP16, SGD, (x, y), loss=CE, epochs=3,
                  batch_size=32, key=KEY, checkpoint_dir=tmp_path, checkpoint_every=1,
                  progress=False)
    assert isinstance(err.value, FloatingPointError) and err.value.step == 6
    assert err.value.checkpoint == checkpoint.latest(tmp_path) == str(tmp_path / "ckpt_00000005.npz")
    saved = checkpoint.restore(err.value.checkpoint)
    assert int(saved.step) == 5
    assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(saved.params))
    assert "last good checkpoint" in str(err.value)


# ----------------------------------------------------------------------------- progress bar

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, progress, shown", [
    (FakeTerminal, True, True), (io.StringIO, True, False), (FakeTerminal, False, False)])


def test_progress_bar_only_on_a_terminal(monkeypatch, stream, progress, shown):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    (x, y), _ = fn.data.load("iris")
    train.fit(IRIS_MLP, MOMENTUM, (x, y), loss=CE, epochs=2, batch_size=30, key=KEY,
              progress=progress)
    text = err.getvalue()
    if shown:
        assert "loss=" in text and "epoch" in text and "step" in text
    else:
        assert text == ""


# ----------------------------------------------------------------------------- resume

RUN = dict(epochs=4, batch_size=40, checkpoint_every=5)


BN_NET, ADAM = small_bn_net(), optax.adam(1e-2)


def resume_data():
    (x, y), _ = fn.data.load("digits")
    return x[:400], y[:400]


def run_fit(checkpoint_dir=None, **kw):
    x, y = resume_data()
    args = dict(RUN, **kw)
    return train.fit(BN_NET, ADAM, (x, y), loss=CE, key=KEY, progress=False,
                     checkpoint_dir=checkpoint_dir, **args)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run_fit(tmp_path_factory.mktemp("whole"))


def assert_same_run(a, b):
    (ts_a, h_a), (ts_b, h_b) = a, b
    for la, lb in zip(jax.tree_util.tree_leaves(ts_a), jax.tree_util.tree_leaves(ts_b)):
        assert np.array_equal(np.asarray(la), np.asarray(lb))  # bitwise
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(h_a) == strip(h_b)


def test_resume_after_a_steps_budget_is_exact(tmp_path, uninterrupted):
    first, _ = run_fit(tmp_path, epochs=None, steps=13)  # stops mid-epoch 2
    assert int(first.step) == 13 and checkpoint.latest(tmp_path).endswith("00000013.npz")
    assert_same_run(run_fit(tmp_path), uninterrupted)


CHILD = textwrap.dedent("""
    import sys, time, optax
    sys.path.insert(0, {tests!r})
    import test_fit as t
    # Slow each epoch down so the parent can kill the run in the middle.
    t.run_fit({directory!r}, callback=lambda row, state: time.sleep(0.5))
""")


def test_resume_after_sigkill_is_bitwise_equal(tmp_path, uninterrupted):
    code = CHILD.format(tests=os.path.dirname(__file__), directory=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            path = checkpoint.latest(tmp_path)
            if path is not None and int(path[-12:-4]) >= 15:
                break
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("the child wrote no checkpoint in 120 s")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    killed_at = int(checkpoint.latest(tmp_path)[-12:-4])
    assert 15 <= killed_at < 40  # 4 epochs of 10 steps: it was killed mid-run
    assert_same_run(run_fit(tmp_path), uninterrupted)


def test_resume_refuses_a_run_with_other_settings(tmp_path):
    run_fit(tmp_path, epochs=1)
    with pytest.raises(fn.FuncnetError, match="batch_size: checkpoint 40, now 20"):
        run_fit(tmp_path, batch_size=20)


def test_a_checkpoint_written_before_loss_scale_resumes(tmp_path, uninterrupted):
    """A TrainState checkpoint of five fields (before TrainState.loss_scale), its partial
    sums without "skipped": the run resumes from it exactly."""
    run_fit(tmp_path, epochs=None, steps=13)
    path = checkpoint.latest(tmp_path)
    meta = checkpoint.read_metadata(path)
    OldTrainState = collections.namedtuple("TrainState", "params state opt_state step key")
    old_meta = {k: v for k, v in meta.items() if k != "loss_scale"}
    old_meta["partial"] = {k: v for k, v in meta["partial"].items() if k != "skipped"}
    checkpoint.save(path, OldTrainState(*checkpoint.restore(path)[:5]), metadata=old_meta)
    assert checkpoint.restore(path)._fields == OldTrainState._fields
    assert_same_run(run_fit(tmp_path), uninterrupted)


# ----------------------------------------------------------------------------- mixed precision

MIXED = dict(compute_dtype=jnp.bfloat16, loss_scale="dynamic")


@pytest.fixture(scope="module")
def uninterrupted_bf16(tmp_path_factory):
    return run_fit(tmp_path_factory.mktemp("whole_bf16"), **MIXED)


def test_bfloat16_fit_with_batch_norm_trains_and_resumes_exactly(tmp_path, uninterrupted_bf16):
    ts, history = uninterrupted_bf16
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["train_accuracy"][-1] > 0.8
    leaves = jax.tree_util.tree_leaves((ts.params, ts.state))
    assert {np.dtype(a.dtype).name for a in leaves} == {"float32"}  # master params and state
    assert history["skipped"] == [0, 0, 0, 0] and int(ts.loss_scale.good_steps) == 40
    assert float(ts.loss_scale.scale) == 2.0 ** 15
    first, _ = run_fit(tmp_path, epochs=None, steps=13, **MIXED)
    assert int(first.step) == 13
    saved = checkpoint.restore(checkpoint.latest(tmp_path))
    assert int(saved.loss_scale.good_steps) == 13  # the scale is checkpointed with the state
    assert_same_run(run_fit(tmp_path, **MIXED), uninterrupted_bf16)


def test_fit_counts_the_steps_skipped_for_overflow():
    """float16 with dynamic loss scaling on inputs whose scaled dW overflows float16 (as in
    tests/test_mixed_precision.py): the first steps are skipped until the scale fits."""
    x = np.full((16, 3), 100.0, np.float32)
    y = np.arange(16, dtype=np.int32) % 2
    ts, history = train.fit(fn.serial(fn.dense(2)), optax.sgd(0.1), (x, y), epochs=2,
                            batch_size=4, key=KEY, progress=False, compute_dtype=jnp.float16,
                            loss_scale="dynamic")
    skipped = sum(history["skipped"])
    assert history["skipped"][0] >= 2 and skipped < 8
    assert float(ts.loss_scale.scale) == 2.0 ** (15 - skipped)  # halved once per skip
    assert int(ts.step) == 8 and len(history.step_losses) == 8
    assert all(np.isfinite(history["train_loss"]))


# ----------------------------------------------------------------------------- explicit choices

def test_numpy_ints_are_accepted_like_python_ints(digits):
    (x, y), _ = digits
    _, h = train.fit(MLP16, SGD, (x[:64], y[:64]), loss=CE, epochs=np.int64(1),
                     batch_size=np.int32(32), key=KEY, progress=False)
    assert h["step"] == [2]
    assert train.evaluate(MLP16, *train.init_train_state(MLP16, SGD, (1, 8, 8, 1), KEY)[:2],
                          x[:10], y[:10], batch_size=np.int64(4))["loss"] > 0


# ----------------------------------------------------------------------------- module

def test_fits_names_are_still_read_from_train():
    import funcnet.fit as fit_module
    assert fn.train.fit is train.fit is fit_module.fit
    assert train.History is fit_module.History
    assert train.NonFiniteLossError is fit_module.NonFiniteLossError
    from funcnet.train import History, NonFiniteLossError, fit
    assert (fit, History, NonFiniteLossError) == (fit_module.fit, fit_module.History,
                                                  fit_module.NonFiniteLossError)
    assert {"fit", "History", "NonFiniteLossError"} <= set(dir(train))
    with pytest.raises(AttributeError, match="funcnet.train' has no attribute 'fitt'"):
        assert train.fitt is None


def test_train_does_not_import_fit():
    """Data flows one way: fit imports train; train reads fit's names only when asked."""
    code = ("import sys, funcnet.train as t; assert 'funcnet.fit' not in sys.modules; "
            "assert t.fit is sys.modules['funcnet.fit'].fit; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr[-3000:]



def test_a_forward_that_overflows_float16_stops_the_run_even_with_loss_scaling():
    """Skipping is for gradients that overflow; a loss that is itself infinite (the forward
    overflowed, whatever the scale) stops the run and names the step, as without scaling."""
    x = np.full((8, 3), 60000.0, np.float32)  # x @ w overflows float16's 65504
    y = np.arange(8, dtype=np.int32) % 2
    model = fn.serial(fn.dense(2, w_init=fn.initializers.ones))
    stop = r"the training loss became (inf|nan) at step 1 \(epoch 1, batch 1"
    with pytest.raises(train.NonFiniteLossError, match=stop):
        train.fit(model, optax.sgd(0.1), (x, y), epochs=2, batch_size=4, key=KEY, progress=False,
                  compute_dtype=jnp.float16, loss_scale="dynamic")
