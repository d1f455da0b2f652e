"""Loss values against NumPy definitions (torch-style means), stability of the
cross-entropies, the l2 penalty, accuracy, and the label / shape errors; bfloat16 / float16
predictions computed in float32 and rounded once."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from funcnet import losses

finite = st.floats(-20, 20)


def np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


@given(data=st.data(), n=st.sampled_from([1, 3]), k=st.sampled_from([1, 2, 5]))
def test_softmax_cross_entropy_is_mean_negative_log_probability(data, n, k):
    z = data.draw(hnp.arrays(np.float64, (n, k), elements=finite))
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    with jax.enable_x64(True):
        loss = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))
    expected = -np.mean([np.log(np.exp(z[i, y[i]]) / np.exp(z[i]).sum()) for i in range(n)])
    assert loss.shape == () and float(loss) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_softmax_cross_entropy_hand_values_and_stability():
    # uniform logits: log(classes)
    assert float(losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 3]))) \
        == pytest.approx(np.log(4), rel=1e-6)
    z = jnp.array([[1000.0, 0.0], [0.0, 1000.0], [-1000.0, 1000.0]])
    loss = losses.softmax_cross_entropy(z, jnp.array([0, 0, 0]))
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx((0 + 1000 + 2000) / 3, rel=1e-6)


@given(data=st.data(), shape=st.sampled_from([(3,), (2, 3), (4, 1)]))
def test_binary_cross_entropy_matches_the_probability_form(data, shape):
    z = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    y = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    with jax.enable_x64(True):
        loss = losses.binary_cross_entropy(jnp.asarray(z), jnp.asarray(y))
    p = 1 / (1 + np.exp(-z))
    per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    # summed over the labels of an example, averaged over the examples (the leading axis)
    assert float(loss) == pytest.approx(per.sum() / shape[0], rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_binary_cross_entropy_is_finite_and_exact_for_huge_logits(dtype):
    z = np.array([1000.0, -1000.0, 3000.0, -3000.0, 1000.0, -2500.0])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.25])
    # the exact per-example losses: softplus(z) − y z with softplus(±a) = a or 0 at this size
    exact = np.array([0.0, 0.0, 3000.0, 3000.0, 500.0, 625.0])
    with jax.enable_x64(dtype == jnp.float64):
        loss = losses.binary_cross_entropy(jnp.asarray(z, dtype), jnp.asarray(y, dtype))
        assert np.isfinite(float(loss))
        assert float(loss) == pytest.approx(exact.mean(), rel=1e-6)
        g = jax.grad(losses.binary_cross_entropy)(jnp.asarray(z, dtype), jnp.asarray(y, dtype))
        assert np.isfinite(np.asarray(g)).all()


@given(data=st.data(), shape=st.sampled_from([(5,), (2, 3), (2, 2, 3)]))
def test_mse_mae_rmse_average_over_all_elements(data, shape):
    pred = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    target = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    with jax.enable_x64(True):
        p, t = jnp.asarray(pred), jnp.asarray(target)
        values = {f: float(getattr(losses, f)(p, t)) for f in ("mse", "mae", "rmse")}
    n = pred.size
    # torch.nn.functional.mse_loss / l1_loss with reduction="mean", written out
    mse = sum((a - b) ** 2 for a, b in zip(pred.ravel(), target.ravel())) / n
    mae = sum(abs(a - b) for a, b in zip(pred.ravel(), target.ravel())) / n
    assert values["mse"] == pytest.approx(mse, rel=1e-12, abs=1e-12)
    assert values["mae"] == pytest.approx(mae, rel=1e-12, abs=1e-12)
    assert values["rmse"] == pytest.approx(np.sqrt(mse), rel=1e-12, abs=1e-12)


def test_regression_losses_hand_values():
    pred, target = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([[0.0, 2.0], [5.0, 4.0]])
    assert float(losses.mse(pred, target)) == pytest.approx(5 / 4)
    assert float(losses.mae(pred, target)) == pytest.approx(3 / 4)
    assert float(losses.rmse(pred, target)) == pytest.approx(np.sqrt(5 / 4))


def test_l2_penalizes_only_leaves_named_w():
    model = fn.serial(fn.conv2d(2, 3), fn.batch_norm(), fn.learned_pool(2), fn.flatten, fn.dense(3),
                      fn.relu, fn.serial(fn.dense(2), fn.batch_norm()))
    shapes, _ = jax.eval_shape(lambda k: model.init(k, (2, 8, 8, 1)), jax.random.PRNGKey(0))
    # every leaf non-zero (0.5), so that a penalized bias, γ or β would show
    params = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    n_w = 3 * 3 * 1 * 2 + 2 * 2 * 2 + 18 * 3 + 3 * 2  # conv, learned_pool, dense, dense
    expected = 0.5 * 0.3 * 0.25 * n_w
    assert float(losses.l2(params, 0.3)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.l2(({"b": jnp.ones(3)}, {"gamma": jnp.ones(2), "beta": jnp.ones(2)}, {}), 1.0)) == 0
    assert float(losses.l2({"w": jnp.array([1.0, -2.0, 3.0])}, 2.0)) == pytest.approx(14.0)


def test_accuracy_is_the_fraction_of_correct_arg_max():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [-1.0, 5.0]])
    assert float(fn.accuracy(logits, jnp.array([1, 0, 0, 1, 1]))) == pytest.approx(3 / 5)
    assert float(fn.accuracy(logits, jnp.array([1, 0, 1, 0, 1]))) == 1.0


@pytest.mark.parametrize("labels, message", [
    ([0, 3, 1], r"label 3 is out of range for 3 classes \(labels must lie in \[0, 2\]\)"),
    ([0, -1, 1], r"label -1 is out of range for 3 classes"),
    ([0, 1], r"logits \(3, 3\) and labels \(2,\)"),
    ([[0], [1], [2]], r"logits \(3, 3\) and labels \(3, 1\)"),
    ([0.0, 1.0, 2.0], r"labels must be integer class indices, got dtype float32"),
])
def test_softmax_cross_entropy_label_errors(labels, message):
    with pytest.raises(fn.FuncnetError, match=message):
        losses.softmax_cross_entropy(jnp.zeros((3, 3)), jnp.asarray(labels))


def test_loss_shape_mismatch_errors_name_the_loss_and_shapes():
    with pytest.raises(fn.FuncnetError, match=r"softmax_cross_entropy: .*logits \(3,\)"):
        losses.softmax_cross_entropy(jnp.zeros(3), jnp.array([0, 1, 2]))
    for f in ("mse", "mae", "rmse", "binary_cross_entropy"):
        with pytest.raises(fn.FuncnetError, match=rf"{f}: .*same shape, got \(4, 1\) and \(4,\)"):
            getattr(losses, f)(jnp.zeros((4, 1)), jnp.zeros(4))


def test_softmax_cross_entropy_and_accuracy_average_over_every_position():
    with jax.enable_x64(True):
        logits = fr.normal(jax.random.PRNGKey(0), (3, 4, 5), jnp.float64)
        labels = fr.randint(jax.random.PRNGKey(1), (3, 4), 0, 5)
        flat = losses.softmax_cross_entropy(logits.reshape(12, 5), labels.reshape(12))
        np.testing.assert_allclose(float(losses.softmax_cross_entropy(logits, labels)),
                                   float(flat), rtol=1e-14)
        logp = np.asarray(jax.nn.log_softmax(logits))
        by_hand = -np.mean([logp[b, t, int(labels[b, t])] for b in range(3) for t in range(4)])
        np.testing.assert_allclose(float(flat), by_hand, rtol=1e-12)
        grad = losses.softmax_cross_entropy.grad(logits, labels)
        auto = jax.grad(losses.softmax_cross_entropy)(logits, labels)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(auto), rtol=1e-12, atol=1e-15)
        hits = np.argmax(np.asarray(logits), -1) == np.asarray(labels)
        assert float(fn.accuracy(logits, labels)) == pytest.approx(hits.mean())
    with pytest.raises(fn.FuncnetError, match=r"logits \(3, 4, 5\) and labels \(3,\)"):
        losses.softmax_cross_entropy(logits, labels[:, 0])
    with pytest.raises(fn.FuncnetError, match="label 5 is out of range for 5 classes"):
        losses.softmax_cross_entropy(logits, labels.at[2, 3].set(5))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_predictions_are_computed_in_float32_and_rounded_once(dtype):
    """Each loss and gradient in the predictions' dtype, within one rounding (half an ulp at
    the largest entry) of the float64 value at the same rounded inputs. The cross-entropy's
    logits are confident (the label 8 above the rest): softmax − 1 taken in the narrow dtype
    would keep no digit of the gradient at the label."""
    labels = jnp.arange(6) % 5
    logits = jnp.asarray(fr.normal(jax.random.PRNGKey(1), (6, 5)) + 8.0 * jax.nn.one_hot(labels, 5),
                         dtype)
    target = jnp.asarray(fr.normal(jax.random.PRNGKey(2), (6, 5)), dtype)
    bits = jnp.asarray(jax.random.uniform(jax.random.PRNGKey(3), (6, 5)), dtype)
    cases = [(losses.softmax_cross_entropy, (logits, labels)),
             (losses.binary_cross_entropy, (logits, bits)),
             (losses.mse, (logits, target)), (losses.mae, (logits, target)),
             (losses.rmse, (logits, target))]
    half_ulp = float(jnp.finfo(dtype).eps) / 2
    for loss, args in cases:
        value, grad = loss(*args), loss.grad(*args)
        assert value.dtype == dtype and grad.dtype == dtype, loss.__name__
        with jax.enable_x64(True):
            wide = [jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
                    for a in args]
            value64, grad64 = np.asarray(loss(*wide)), np.asarray(loss.grad(*wide))
        assert abs(float(value) - value64) <= 1.01 * half_ulp * abs(value64), loss.__name__
        err = np.max(np.abs(np.asarray(grad, np.float64) - grad64))
        assert err <= 1.01 * half_ulp * np.max(np.abs(grad64)), loss.__name__
    # the l2 penalty of narrow weights: squares summed in float32, a float32 result
    w = {"w": target}
    assert losses.l2(w, 0.5).dtype == jnp.float32
    assert float(losses.l2(w, 0.5)) == pytest.approx(
        0.25 * float(np.sum(np.asarray(target, np.float64) ** 2)), rel=1e-6)
