"""Every loss's hand-derived gradient `loss.grad` == jax.grad (1e-8) == finite differences
(1e-6), in float64, across hypothesis-drawn shapes and data; and the closed forms."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from funcnet import losses

SEEDS = st.integers(0, 2 ** 31 - 1)
SHAPES = st.sampled_from([(1, 2), (4, 3), (3, 5)])


def assert_close(a, b, rtol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    floor = rtol * 1e-3 * max(1.0, np.abs(a).max(), np.abs(b).max())
    bad = np.abs(a - b) > rtol * (np.abs(a) + np.abs(b)) + floor
    assert not bad.any(), f"{what}: worst |diff| {np.abs(a - b).max():.2e}\n{a}\n{b}"


@functools.cache
def grad_of(name):
    return jax.jit(jax.grad(getattr(losses, name)))


def data(name, shape, seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    pred = 3.0 * fr.normal(k1, shape, jnp.float64)
    if name == "softmax_cross_entropy":
        target = fr.randint(k2, shape[:1], 0, shape[1])
    elif name == "binary_cross_entropy":
        target = fr.uniform(k2, shape, jnp.float64)  # soft labels in [0, 1] too
    else:
        target = fr.normal(k2, shape, jnp.float64)
    return pred, target


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "binary_cross_entropy", "mse", "mae",
                                  "rmse"])
@given(shape=SHAPES, seed=SEEDS)
def test_loss_grad_three_ways(name, shape, seed):
    loss = getattr(losses, name)
    with jax.enable_x64(True):
        pred, target = data(name, shape, seed)
        manual = loss.grad(pred, target)
        auto = grad_of(name)(pred, target)
        num = fn.numerical_grad(loss, pred, args=(target,))
        assert manual.shape == pred.shape and manual.dtype == jnp.float64
        assert_close(manual, auto, 1e-8, f"{name} manual vs autodiff")
        assert_close(auto, num, 1e-6, f"{name} autodiff vs numerical")


def test_closed_forms():
    """The formulas themselves, on numbers worked by hand."""
    with jax.enable_x64(True):
        z = jnp.array([[0.0, jnp.log(3.0)], [jnp.log(4.0), 0.0]])  # softmax rows (1/4, 3/4), (4/5, 1/5)
        y = jnp.array([1, 1])
        np.testing.assert_allclose(losses.softmax_cross_entropy.grad(z, y),
                                   np.array([[0.25, -0.25], [0.8, -0.8]]) / 2, rtol=1e-12)
        bce_grad = losses.binary_cross_entropy.grad
        np.testing.assert_allclose(bce_grad(jnp.zeros((2, 1)), jnp.array([[1.0], [0.0]])),
                                   np.array([[-0.25], [0.25]]), rtol=1e-12)
        p, t = jnp.array([[1.0, 2.0], [3.0, 5.0]]), jnp.array([[0.0, 2.0], [4.0, 3.0]])
        np.testing.assert_allclose(losses.mse.grad(p, t), 2 * np.array([[1, 0], [-1, 2]]) / 4, rtol=1e-12)
        np.testing.assert_allclose(losses.mae.grad(p, t), np.array([[1, 0], [-1, 1]]) / 4, rtol=1e-12)
        r = np.sqrt((1 + 0 + 1 + 4) / 4)
        np.testing.assert_allclose(losses.rmse.grad(p, t), np.array([[1, 0], [-1, 2]]) / (4 * r),
                                   rtol=1e-12)


@given(seed=SEEDS, strength=st.sampled_from([0.0, 1e-3, 0.5, 2.0]))
def test_l2_grad_three_ways(seed, strength):
    """½ λ Σ w² over the leaves named w: gradient λ w there, 0 for biases, γ, β."""
    with jax.enable_x64(True):
        model = fn.serial(fn.dense(3), fn.batch_norm(), fn.relu, fn.dense(2))
        params, _ = model.init(jax.random.PRNGKey(seed), (2, 4), jnp.float64)
        params = jax.tree_util.tree_map(
            lambda p: p + fr.normal(jax.random.PRNGKey(seed + 1), p.shape, p.dtype), params)
        manual = losses.l2.grad(params, strength)
        auto = jax.grad(losses.l2)(params, strength)
        num = fn.numerical_grad(losses.l2, params, args=(strength,))
        for (path, m), a, n, p in zip(fn.core.param_paths(model, manual),
                                      jax.tree_util.tree_leaves(auto),
                                      jax.tree_util.tree_leaves(num),
                                      jax.tree_util.tree_leaves(params)):
            expected = strength * np.asarray(p) if path.endswith("/w") else np.zeros(p.shape)
            np.testing.assert_allclose(m, expected, rtol=1e-12, atol=0, err_msg=path)
            assert_close(m, a, 1e-8, path)
            assert_close(a, n, 1e-6, path)
