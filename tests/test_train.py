"""funcnet/train.py: make_step, evaluate, batch_order, the task of a loss (fit's own tests,
accuracy, resume, NaN, progress, errors, are tests/test_fit.py).

Real training runs on scikit-learn's digits; every run is seeded from an explicit key.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from funcnet import train
from tests.nets import MLP16, SGD, small_bn_net

KEY = jax.random.PRNGKey(0)
CE = fn.losses.softmax_cross_entropy


# ----------------------------------------------------------------------------- make_step

def reference_step(model, loss, optimizer, l2, ts, x, y):
    """The update written out directly, to compare make_step with."""
    key, dropout_key = jax.random.split(ts.key)

    def objective(p):
        out, new_state = model.apply(p, ts.state, x, train=True, key=dropout_key)
        return loss(out, y) + fn.losses.l2(p, l2), new_state

    grads, new_state = jax.grad(objective, has_aux=True)(ts.params)
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    return train.TrainState(optax.apply_updates(ts.params, updates), new_state, opt_state,
                            ts.step + 1, key)


def test_make_step_matches_the_update_written_out(digits):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    model = small_bn_net()
    schedule = optax.exponential_decay(0.05, transition_steps=1, decay_rate=0.5)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    step = train.make_step(model, opt, CE, l2=1e-3)
    ref = jax.jit(lambda ts, x, y: reference_step(model, CE, opt, 1e-3, ts, x, y))
    ts = train.init_train_state(model, opt, x.shape, KEY)
    expect = train.init_train_state(model, opt, x.shape, KEY)  # step donates ts's buffers
    for i in range(3):
        before_key = np.asarray(ts.key)
        ts, metrics = step(ts, x[i * 16:(i + 1) * 16 + 16], y[i * 16:(i + 1) * 16 + 16])
        expect = ref(expect, x[i * 16:(i + 1) * 16 + 16], y[i * 16:(i + 1) * 16 + 16])
        # the carried key is the first half of the split; the step counts updates
        assert np.array_equal(ts.key, jax.random.split(before_key)[0])
        assert int(ts.step) == i + 1
    for a, b in zip(jax.tree_util.tree_leaves(ts), jax.tree_util.tree_leaves(expect)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # batch-norm running statistics moved away from their start (0 mean, 1 variance)
    assert float(jnp.abs(ts.state[2]["mean"]).max()) > 1e-3
    assert set(metrics) == {"loss", "accuracy"}
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_make_step_donates_the_input_state(digits):
    (x, y), _ = digits
    ts = train.init_train_state(MLP16, SGD, (16,) + x.shape[1:], KEY)
    old = ts.params[1]["w"]
    new, _ = train.make_step(MLP16, SGD, CE)(ts, x[:16], y[:16])
    assert old.is_deleted()  # its buffer was reused for the new state
    assert not new.params[1]["w"].is_deleted()


# (adam, a schedule and global-norm clipping are checked exactly above)


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_is_exact_on_a_partial_last_batch(digits):
    (x, y), _ = digits
    x, y = x[:50], y[:50]
    model = small_bn_net()
    params, state = model.init(KEY, x.shape)
    logits, _ = model.apply(params, state, x)
    want_loss = float(CE(logits, y))
    want_acc = float(np.mean(np.argmax(logits, -1) == y))
    for bs in (7, 50, 1000):  # 7 leaves a last batch of 1
        got = train.evaluate(model, params, state, x, y, batch_size=bs)
        assert got["loss"] == pytest.approx(want_loss, rel=1e-6)
        assert got["accuracy"] == pytest.approx(want_acc)
    # the padded last batch reuses the full batch's compilation
    compiled = train._eval_function(model, CE, "classification")
    sizes_before = compiled._cache_size()
    train.evaluate(model, params, state, x[:23], y[:23], batch_size=7)
    assert compiled._cache_size() == sizes_before


def test_evaluate_regression_metrics():
    (x, y), _ = fn.data.load("diabetes")
    x, y = x[:45], y[:45]
    model = fn.serial(fn.dense(4), fn.relu, fn.dense(1))
    params, state = model.init(KEY, x.shape)
    pred = np.asarray(model.apply(params, state, x)[0], np.float64)
    err = pred - y
    got = train.evaluate(model, params, state, x, y, batch_size=8, loss=fn.losses.rmse)
    assert got["mse"] == pytest.approx(np.mean(err ** 2), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)
    assert got["loss"] == got["rmse"]
    assert set(got) == {"loss", "mse", "mae", "rmse"}


def test_evaluate_checks_class_labels_as_the_losses_do():
    """One check of class labels (fn.losses.check_labels), named for the caller."""
    model = fn.serial(fn.dense(3))
    params, state = model.init(KEY, (1, 2))
    x = np.zeros((4, 2), np.float32)
    with pytest.raises(fn.FuncnetError, match=r"evaluate: label 3 is out of range for 3 classes "
                                              r"\(labels must lie in \[0, 2\]\)"):
        train.evaluate(model, params, state, x, np.array([0, 1, 2, 3]))
    with pytest.raises(fn.FuncnetError, match=r"evaluate: labels must have shape \(batch,\), .*"
                                              r"got logits \(4, 3\) and labels \(4, 1\)"):
        train.evaluate(model, params, state, x, np.zeros((4, 1), np.int32))
    with pytest.raises(fn.FuncnetError, match="evaluate: labels must be integer class indices"):
        train.evaluate(model, params, state, x, np.zeros(4, np.float32), loss=CE)


# ----------------------------------------------------------------------------- batch order

def test_each_epoch_is_reshuffled_from_the_key():
    orders = [train.batch_order(KEY, e, 100) for e in range(3)]
    assert all(sorted(o) == list(range(100)) for o in orders)
    assert not np.array_equal(orders[0], orders[1])
    assert np.array_equal(orders[2], train.batch_order(KEY, 2, 100))  # a pure function
    assert not np.array_equal(orders[0], train.batch_order(jax.random.PRNGKey(1), 0, 100))


def test_fit_and_batches_shuffle_alike():
    n, key = 50, jax.random.PRNGKey(3)
    data_key = jax.random.split(key, 3)[1]
    for epoch in (0, 2):
        expected = fn.data.shuffle(jax.random.fold_in(data_key, epoch), n)
        assert np.array_equal(train.batch_order(key, epoch, n), expected)
    xs = np.arange(n)
    seen = np.concatenate([xb for xb, _ in fn.data.batches(xs, None, 8, key=data_key)])
    assert np.array_equal(seen, fn.data.shuffle(data_key, n))


# ----------------------------------------------------------------------------- explicit choices

def test_the_task_is_the_losses_attribute_seen_through_partial():
    """A functools.partial of a loss reports the same metrics as the loss itself."""
    import functools
    assert train._task(CE, jnp.int32, 2) == "classification"
    bce = fn.losses.binary_cross_entropy
    for loss in (bce, functools.partial(bce), functools.partial(functools.partial(bce))):
        assert train._task(loss, jnp.float32, 2) == "binary"
    assert train._task(functools.partial(fn.losses.mse), jnp.int32, 2) == "regression"
    assert train._task(lambda p, t: jnp.sum(p), jnp.int32, 2) == "classification"  # inferred
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    model = fn.serial(fn.dense(1))
    rows = [train.fit(model, SGD, (x, y), loss=loss, epochs=1, batch_size=8, key=KEY,
                      progress=False)[1][0] for loss in (bce, functools.partial(bce))]
    assert rows[0]["train_accuracy"] == rows[1]["train_accuracy"]
    assert set(rows[0]) == set(rows[1])


def test_make_step_takes_fits_order_and_the_old_one_with_a_warning(digits):
    (x, y), _ = digits
    ts = train.init_train_state(MLP16, SGD, (16,) + x.shape[1:], KEY)
    new, m_new = train.make_step(MLP16, SGD, CE, donate=False)(ts, x[:16], y[:16])
    with pytest.warns(DeprecationWarning, match="make_step\\(model, optimizer, loss\\)"):
        old_step = train.make_step(MLP16, CE, SGD, donate=False)
    old, m_old = old_step(ts, x[:16], y[:16])
    assert float(m_new["loss"]) == float(m_old["loss"])
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)):
        assert np.array_equal(a, b)


def test_fit_and_evaluate_take_sequence_logits_with_labels_per_step():
    # (batch, time, classes) logits and (batch, time) labels: the label at step t is
    # whether the running sum of x up to t is positive, learnt by an rnn whose h is the logits
    x = np.asarray(fr.normal(jax.random.PRNGKey(0), (64, 5, 1)), np.float32)
    y = (np.cumsum(x[..., 0], 1) > 0).astype(np.int32)
    model = fn.serial(fn.rnn(8), fn.rnn(2))
    state, history = fn.train.fit(model, optax.adam(0.05), (x, y), epochs=15, batch_size=16,
                                  key=jax.random.PRNGKey(1), val_data=(x, y), progress=False)
    metrics = fn.train.evaluate(model, state.params, state.state, x, y, batch_size=24)
    out, _ = model.apply(state.params, state.state, x)
    assert metrics["accuracy"] == pytest.approx(float(fn.accuracy(out, y)), abs=1e-6)
    assert metrics["loss"] == pytest.approx(float(fn.losses.softmax_cross_entropy(out, y)), rel=1e-5)
    assert history[-1]["val_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-6)
    assert metrics["accuracy"] > 0.85 and history[-1]["train_loss"] < history[0]["train_loss"]
    with pytest.raises(fn.FuncnetError, match=r"labels must have shape \(batch,\) \+ \(5,\)"):
        fn.train.evaluate(model, state.params, state.state, x, y[:, 0])
