"""The benchmark competitors compute the same thing: on one batch, raw JAX, funcnet
(autodiff and hand formulas) and NumPy from scratch give the same loss and gradients, and
every conv path of the investigation the same gradient. (PyTorch, an optional peer, is
checked by the runner itself before it times anything: `benchmarks.run.check_pytorch`.)
Timings are not tested."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile
from benchmarks import lenet_paths, numpy_net, raw_jax, workloads

N = 8  # a small batch keeps this fast; the benchmark uses 128


def _funcnet_grads_as_dict(kind, dparams, weights):
    leaves = [p for p in dparams if set(p) == {"w", "b"}]
    return {name: {k: np.asarray(g[k]) for k in ("w", "b")} for name, g in zip(sorted(weights), leaves)}


def _assert_grads_close(a, b, rtol=2e-4, atol=2e-6):
    assert set(a) == set(b)
    for name in a:
        for k in ("w", "b"):
            np.testing.assert_allclose(np.asarray(a[name][k]), np.asarray(b[name][k]),
                                       rtol=rtol, atol=atol, err_msg=f"{name}/{k}")


@pytest.mark.parametrize("kind", ["mlp", "lenet"])
def test_competitors_agree_on_loss_and_gradients(kind):
    weights = workloads.init_weights(kind, seed=3)
    x, y = workloads.batch(kind, seed=4, n=N)
    params, _ = raw_jax.params_from(kind, weights)
    loss, grads = jax.jit(lambda p: raw_jax.loss_and_grads(kind, p, x, y))(params)
    ref = {k: {n: np.asarray(v) for n, v in g.items()} for k, g in grads.items()}

    model, fparams, fstate = workloads.funcnet_model(kind), *workloads.funcnet_params(kind, weights)[1:]

    def objective(m):
        return lambda p: fn.losses.softmax_cross_entropy(m.apply(p, fstate, x)[0], y)

    for m in (model, fn.with_manual_grads(model)):
        floss, fgrads = jax.jit(jax.value_and_grad(objective(m)))(fparams)
        assert abs(float(floss) - float(loss)) < 1e-5
        _assert_grads_close(_funcnet_grads_as_dict(kind, fgrads, weights), ref)
    # fn.backprop: the formulas directly, with the loss's hand gradient as dy
    logits = model.apply(fparams, fstate, x)[0]
    dparams, _ = fn.backprop(model, fparams, fstate, x,
                             fn.losses.softmax_cross_entropy.grad(logits, y))
    _assert_grads_close(_funcnet_grads_as_dict(kind, dparams, weights), ref)

    if kind == "lenet":
        nloss, ngrads = numpy_net.lenet_loss_and_grads(weights, x, y)
    else:
        nloss, ngrads, _ = numpy_net.mlp_loss_and_grads(weights, x, y)
    assert abs(nloss - float(loss)) < 1e-5
    _assert_grads_close(ngrads, ref)


def test_every_conv_and_pool_formulation_matches_xla():
    """The building blocks of the conv-path investigation, on tiny shapes: each conv gives
    lax.conv_general_dilated's output and vjp, each pool reduce_window's output, and the
    hand-written pool backward sends δ to the first arg-max cell."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(11), 3)
    for c_in, pad in ((1, lenet_paths.SAME5), (3, lenet_paths.VALID)):
        x = fr.normal(k1, (2, 7, 7, c_in))
        w = fr.normal(k2, (5, 5, c_in, 4))
        dy = fr.normal(k3, (2, 7, 7, 4) if c_in == 1 else (2, 3, 3, 4))

        @functools.partial(jax.jit, static_argnums=3)
        def value_and_vjp(x, w, dy, conv, pad=pad):  # one compilation instead of many eager ops
            y, vjp = jax.vjp(lambda x, w: conv(x, w, pad), x, w)
            return y, vjp(dy)

        y_ref, g_ref = value_and_vjp(x, w, dy, lenet_paths.conv_xla)
        for conv in (lenet_paths.conv_im2col, lenet_paths.conv_patches, lenet_paths.conv_shift_add,
                     lenet_paths.manual_col2im, lenet_paths.manual_full):
            y, g = value_and_vjp(x, w, dy, conv)
            np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
            for a, b in zip(g, g_ref):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    z = jnp.array([[1.0, 3.0, 3.0, 0.0], [2.0, 0.0, 1.0, 3.0]])[None, :, :, None]  # ties in window 2
    for pool in (lenet_paths.pool_reshape, lenet_paths.pool_max4, lenet_paths.pool_manual):
        np.testing.assert_array_equal(pool(z), lenet_paths.pool_reduce_window(z))
    dz = jax.vjp(lenet_paths.pool_manual, z)[1](jnp.array([[[[10.0], [20.0]]]]))[0]
    np.testing.assert_array_equal(dz[0, :, :, 0], [[0.0, 10.0, 20.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_sgd_momentum_step_is_the_textbook_update():
    weights = workloads.init_weights("mlp", seed=9)
    x, y = workloads.batch("mlp", seed=10, n=N)
    params, state = raw_jax.params_from("mlp", weights)
    _, grads = raw_jax.loss_and_grads("mlp", params, jnp.asarray(x), jnp.asarray(y))
    vel = jax.tree_util.tree_map(lambda a: jnp.full_like(a, 0.5), params)
    expect_v = jax.tree_util.tree_map(lambda g: workloads.MOMENTUM * 0.5 - workloads.LR * g, grads)
    expect_p = jax.tree_util.tree_map(lambda p, v: p + v, params, expect_v)
    step = raw_jax.make_step("mlp")
    new_p, new_v, _, _, _ = step(params, vel, state, jax.random.PRNGKey(0), x, y)
    _assert_grads_close(new_v, expect_v, rtol=1e-5, atol=1e-7)
    _assert_grads_close(new_p, expect_p, rtol=1e-5, atol=1e-7)
