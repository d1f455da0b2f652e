"""Whole networks from the notes pass the three-way gradient check (float64, tiny sizes)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from funcnet import losses


def data(shape, classes, seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return (fr.normal(k1, shape, jnp.float64),
            fr.randint(k2, shape[:1], 0, classes))


def assert_passes(model, shape, labels_fn, loss, *, train=False, key=None, seed=0):
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(seed), shape, jnp.float64)
        x, labels = labels_fn(shape, seed)
    report = fn.check_gradients(model, params, state, x, labels, loss, train=train, key=key)
    assert report.ok, str(report)
    n_leaves = len(jax.tree_util.tree_leaves(params))
    assert len(report.rows) == n_leaves + 1
    # Real gradients, not vacuous zeros: the loss depends on the first layer's weights.
    assert report.rows[-1].path == "input"
    return report


def test_cs231n_fc_net_with_batch_norm_and_dropout():
    """{affine - batch norm - relu - dropout} x 2 - affine - softmax cross-entropy, training."""
    model = fn.serial(fn.dense(6), fn.batch_norm(), fn.relu, fn.dropout(0.25),
                      fn.dense(5), fn.batch_norm(), fn.relu, fn.dropout(0.25),
                      fn.dense(4))
    report = assert_passes(model, (5, 7), lambda s, seed: data(s, 4, seed),
                           losses.softmax_cross_entropy, train=True, key=jax.random.PRNGKey(3))
    paths = [r.path for r in report.rows]
    assert "1:batch_norm/gamma" in paths and "8:dense/w" in paths


@pytest.mark.parametrize("pool", [fn.max_pool, fn.avg_pool], ids=["max", "mean"])
def test_lenet_style_cnn(pool):
    model = fn.serial(fn.conv2d(2, (3, 3), padding="SAME"), fn.relu, pool((2, 2)),
                      fn.conv2d(3, (3, 3)), fn.relu, pool((2, 2)), fn.flatten,
                      fn.dense(5), fn.relu, fn.dense(3))
    assert_passes(model, (2, 10, 10, 1), lambda s, seed: data(s, 3, seed),
                  losses.softmax_cross_entropy)


def test_sigmoid_mlp_with_mse():
    model = fn.serial(fn.dense(5), fn.sigmoid, fn.dense(4), fn.sigmoid, fn.dense(2))

    def targets(shape, seed):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        return (fr.normal(k1, shape, jnp.float64),
                fr.normal(k2, (shape[0], 2), jnp.float64))

    assert_passes(model, (4, 3), targets, losses.mse)


def test_deep_relu_net_with_he_init():
    layers = []
    for _ in range(5):
        layers += [fn.dense(6, w_init=fn.initializers.he), fn.relu]
    model = fn.serial(*layers, fn.dense(3, w_init=fn.initializers.he))
    report = assert_passes(model, (4, 5), lambda s, seed: data(s, 3, seed),
                           losses.softmax_cross_entropy)
    with jax.enable_x64(True):
        params, _ = model.init(jax.random.PRNGKey(0), (4, 5), jnp.float64)
    # He init: Var(w) = 2 / fan_in for every layer (loose bound for 36-entry samples).
    for p in params[::2]:
        w = np.asarray(p["w"])
        assert 0.3 < w.var() * w.shape[0] / 2 < 3
    assert len(report.rows) == 13
