"""fn.backprop (the manual reverse pass) and fn.with_manual_grads (jax.grad on the formulas)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from funcnet import losses


def net():
    return fn.serial(fn.conv2d(3, (3, 3), padding="SAME"), fn.batch_norm(), fn.relu,
                     fn.max_pool((2, 2)), fn.flatten, fn.dropout(0.3), fn.dense(3))


def setup(seed=0, n=6):
    k_init, k_x, k_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    model = net()
    params, state = model.init(k_init, (n, 6, 6, 2), jnp.float64)
    x = fr.normal(k_x, (n, 6, 6, 2), jnp.float64)
    y = fr.randint(k_y, (n,), 0, 3)
    return model, params, state, x, y


def test_backprop_is_forward_then_backward():
    with jax.enable_x64(True):
        model, params, state, x, _ = setup()
        key = jax.random.PRNGKey(5)
        dy = fr.normal(jax.random.PRNGKey(6), (x.shape[0], 3), jnp.float64)

        @jax.jit
        def three(params, x, dy):
            _, _, cache = model.forward(params, state, x, train=True, key=key)
            _, vjp = jax.vjp(lambda p, x: model.apply(p, state, x, train=True, key=key)[0],
                             params, x)
            return (fn.backprop(model, params, state, x, dy, train=True, key=key),
                    model.backward(params, cache, dy), vjp(dy))

        got, expected, auto = three(params, x, dy)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(a, b)
        # ... and it equals jax.vjp of apply with the same dropout mask.
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(auto)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_replaced_backward_runs_as_replaced():
    with jax.enable_x64(True):
        model, params, state, x, _ = setup()
        doubled = model._replace(backward=lambda p, c, dy: jax.tree_util.tree_map(
            lambda g: 2 * g, model.backward(p, c, dy)))
        dy = jnp.ones((x.shape[0], 3), jnp.float64)
        honest = fn.backprop(model, params, state, x, dy)
        got = fn.backprop(doubled, params, state, x, dy)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(honest)):
            np.testing.assert_allclose(a, 2 * b, rtol=1e-15)
        # with_manual_grads runs the replaced formulas too: jax.grad now doubles.
        f = lambda m, p: jnp.sum(m.apply(p, state, x)[0])
        g_manual = jax.grad(lambda p: f(fn.with_manual_grads(doubled), p))(params)
        g_auto = jax.grad(lambda p: f(model, p))(params)
        for a, b in zip(jax.tree_util.tree_leaves(g_manual), jax.tree_util.tree_leaves(g_auto)):
            np.testing.assert_allclose(a, 2 * b, rtol=1e-8, atol=1e-14)


def train(model, params, state, x, y, steps=20):
    opt = optax.sgd(0.1, momentum=0.5)

    def loss_fn(p, s, key):
        out, s = model.apply(p, s, x, train=True, key=key)
        return losses.softmax_cross_entropy(out, y) + losses.l2(p, 1e-3), s

    @jax.jit
    def step(p, s, o, key):
        (value, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, key)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), s, o, value

    o, values = opt.init(params), []
    for i in range(steps):
        params, state, o, value = step(params, state, o, jax.random.fold_in(jax.random.PRNGKey(9), i))
        values.append(float(value))
    return params, state, values


def test_with_manual_grads_follows_autodiff_training():
    """20 jit-compiled SGD steps on conv + batch norm + max pool + dropout, float64: the
    formulas and jax.grad give the same parameters to 1e-8, and batch-norm state flows."""
    with jax.enable_x64(True):
        model, params, state, x, y = setup()
        p_auto, s_auto, v_auto = train(model, params, state, x, y)
        p_man, s_man, v_man = train(fn.with_manual_grads(model), params, state, x, y)
        for a, b in zip(jax.tree_util.tree_leaves(p_man), jax.tree_util.tree_leaves(p_auto)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(v_man, v_auto, rtol=1e-10)
        assert v_auto[-1] < v_auto[0]  # it trained
        # Running statistics moved away from (0, 1), identically on both paths.
        bn_auto, bn_man = s_auto[1], s_man[1]
        for k in ("mean", "var"):
            np.testing.assert_allclose(bn_man[k], bn_auto[k], rtol=1e-10)
        assert np.abs(np.asarray(bn_auto["mean"])).min() > 0
        assert np.abs(np.asarray(bn_auto["var"]) - 1).min() > 1e-3


def test_with_manual_grads_keeps_forward_and_structure():
    with jax.enable_x64(True):
        model, params, state, x, _ = setup()
        manual = fn.with_manual_grads(model)
        key = jax.random.PRNGKey(2)
        y1, s1 = model.apply(params, state, x, train=True, key=key)
        y2, s2 = manual.apply(params, state, x, train=True, key=key)
        np.testing.assert_array_equal(y1, y2)
        for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
            np.testing.assert_array_equal(a, b)
        assert manual.name == model.name and manual.layers == model.layers


def test_with_manual_grads_differentiates_from_outside_a_jit_too():
    """jax.grad(jax.jit(loss)) as well as jax.jit(jax.grad(loss)): the custom rule takes the
    state and the key as arguments (a rule closing over a jit's tracers cannot be
    differentiated from outside it)."""
    model = fn.with_manual_grads(fn.serial(fn.dense(3), fn.batch_norm(), fn.dropout(0.5), fn.tanh,
                                           fn.dense(2)))
    params, state = model.init(jax.random.PRNGKey(0), (4, 5))
    x = jnp.arange(20.0).reshape(4, 5) / 10

    def loss(p, s, k):
        return jnp.sum(model.apply(p, s, x, train=True, key=k)[0] ** 2)

    for key in (jax.random.PRNGKey(1), jax.random.key(1)):
        inside = jax.jit(jax.grad(loss))(params, state, key)
        outside = jax.grad(jax.jit(loss))(params, state, key)
        for a, b in zip(jax.tree_util.tree_leaves(inside), jax.tree_util.tree_leaves(outside)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
