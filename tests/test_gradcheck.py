"""numerical_grad, rel_error, directional_check and check_gradients: values, modes, the
report, float64 handling, and that wrong backward formulas are caught."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet._validate import token_ints
from funcnet import losses
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile


def f_known(t):
    """f = Σ a² b + sin(c): ∂a = 2ab, ∂b = Σ a², ∂c = cos(c)."""
    return jnp.sum(t["a"] ** 2) * t["b"] + jnp.sum(jnp.sin(t["c"]))


def tree():
    return {"a": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array(0.7),
            "c": jnp.linspace(-1.0, 2.0, 5)}


def test_numerical_grad_matches_known_gradient():
    with jax.enable_x64(True):
        t = tree()
        g = fn.numerical_grad(f_known, t)
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(t)
        np.testing.assert_allclose(g["a"], 2 * t["a"] * t["b"], rtol=1e-9)
        np.testing.assert_allclose(g["b"], jnp.sum(t["a"] ** 2), rtol=1e-9)
        np.testing.assert_allclose(g["c"], jnp.cos(t["c"]), rtol=1e-9)
        assert g["a"].dtype == jnp.float64 and g["b"].shape == ()
        # Chunks smaller than a leaf, and args held fixed, give the same answer.
        g2 = fn.numerical_grad(lambda t, s: s * f_known(t), t, chunk=3, args=(2.0,))
        for u, v in zip(jax.tree_util.tree_leaves(g2), jax.tree_util.tree_leaves(g)):
            np.testing.assert_allclose(u, 2 * v, rtol=1e-9)


def test_numerical_grad_sampled_mode():
    with jax.enable_x64(True):
        t = {"w": jnp.arange(30.0).reshape(5, 6) / 10, "v": jnp.arange(3.0)}
        f = lambda t: jnp.sum(t["w"] ** 3) + jnp.sum(t["v"] ** 2)
        g = fn.numerical_grad(f, t, samples=4, key=jax.random.PRNGKey(1))
        w, v = np.asarray(g["w"]), np.asarray(g["v"])
        assert np.sum(~np.isnan(w)) == 4 and np.sum(~np.isnan(v)) == 3  # k per leaf, at most all
        np.testing.assert_allclose(w[~np.isnan(w)], (3 * np.asarray(t["w"]) ** 2)[~np.isnan(w)],
                                   rtol=1e-8)
        np.testing.assert_allclose(v, 2 * np.arange(3.0), rtol=1e-8)
        # Another key samples other coordinates.
        g2 = fn.numerical_grad(f, t, samples=4, key=jax.random.PRNGKey(2))
        assert not np.array_equal(np.isnan(np.asarray(g2["w"])), np.isnan(w))
        # Any integer type counts (a NumPy integer from a config); a bool or 0 does not.
        g3 = fn.numerical_grad(f, t, samples=np.int64(4), key=jax.random.PRNGKey(1))
        np.testing.assert_array_equal(np.asarray(g3["w"]), w)
        for bad in (True, 0, 2.0):
            with pytest.raises(fn.FuncnetError, match="samples must be a positive int or None"):
                fn.numerical_grad(f, t, samples=bad)


def test_directional_check_agrees_with_jvp():
    with jax.enable_x64(True):
        fd, exact = fn.directional_check(f_known, tree(), key=jax.random.PRNGKey(3))
        assert abs(fd - exact) <= 1e-8 * abs(exact) and abs(exact) > 1e-3
        flat = jnp.concatenate([jnp.ravel(l) for l in jax.tree_util.tree_leaves(tree())])
        assert abs(exact) <= float(jnp.linalg.norm(jnp.concatenate(
            [jnp.ravel(l) for l in jax.tree_util.tree_leaves(jax.grad(f_known)(tree()))]))) + 1e-12
        assert flat.size == 10


def test_rel_error():
    assert fn.rel_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 2.0])) == 0.0
    assert fn.rel_error(jnp.array([1.0, 0.0]), jnp.array([3.0, 0.0])) == pytest.approx(0.5)
    assert fn.rel_error(jnp.array([0.0]), jnp.array([1e-10])) == pytest.approx(1e-2)  # 1e-8 floor
    assert fn.rel_error({"a": jnp.array([np.nan, 1.0])}, {"a": jnp.array([5.0, 1.0])}) == 0.0


def small_cnn(pool):
    return fn.serial(fn.conv2d(2, (3, 3), padding="SAME"), fn.relu, pool, fn.flatten, fn.dense(3))


def setup(model, shape=(3, 4, 4, 1), dtype=jnp.float64, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params, state = model.init(k1, shape, dtype)
    x = fr.normal(k2, shape, dtype)
    return params, state, x, fr.randint(k3, shape[:1], 0, 3)


def copy_to_all_cells(params, cache, dy):
    """The notes' wrong max-pool rule: every cell of the window gets δ."""
    n, h, w, c = dy.shape
    return {}, fn.ops.upsample(dy, (2, 2), shape=token_ints(cache["like"])[:2])  # (H, W, C)


def test_max_pool_copy_to_all_cells_is_caught():
    model = small_cnn(fn.max_pool((2, 2)))
    wrong = fn.serial(*[l._replace(backward=copy_to_all_cells) if l.name == "max_pool" else l
                        for l in model.layers])
    with jax.enable_x64(True):
        params, state, x, y = setup(model)
    good = fn.check_gradients(model, params, state, x, y, losses.softmax_cross_entropy)
    bad = fn.check_gradients(wrong, params, state, x, y, losses.softmax_cross_entropy)
    assert good.ok and not bad.ok
    failed = {r.path for r in bad.failures}
    assert "0:conv2d/w" in failed and "input" in failed and "4:dense/w" not in failed
    row = {r.path: r for r in bad.rows}["input"]
    assert row.manual_vs_autodiff > 0.1 and row.autodiff_vs_numerical < 1e-6


def test_doubled_backward_is_caught():
    model = small_cnn(fn.avg_pool((2, 2)))
    layers = list(model.layers)
    dense = layers[4]
    layers[4] = dense._replace(backward=lambda p, c, dy: jax.tree_util.tree_map(
        lambda g: 2 * g, dense.backward(p, c, dy)))
    with jax.enable_x64(True):
        params, state, x, y = setup(model)
    report = fn.check_gradients(fn.serial(*layers), params, state, x, y, losses.softmax_cross_entropy)
    assert not report.ok
    assert {r.path for r in report.failures} == {r.path for r in report.rows}


def diagonal_softmax_backward(params, cache, dy):
    """The notes' wrong softmax derivative s − s²: only the Jacobian's diagonal."""
    s = cache["y"]
    return {}, dy * (s - s ** 2)


def test_softmax_diagonal_only_jacobian_is_caught():
    model = fn.serial(fn.dense(4), fn.softmax)
    wrong = fn.serial(fn.dense(4), fn.softmax._replace(backward=diagonal_softmax_backward))
    with jax.enable_x64(True):
        params, state, x, _ = setup(model, (3, 5))
        target = fr.uniform(jax.random.PRNGKey(4), (3, 4), jnp.float64)
    assert fn.check_gradients(model, params, state, x, target, losses.mse).ok
    bad = fn.check_gradients(wrong, params, state, x, target, losses.mse)
    assert not bad.ok and {r.path for r in bad.failures} == {"0:dense/b", "0:dense/w", "input"}


def test_report_float64_rows_and_table():
    """Float32 inputs with x64 off: the check runs in float64 and restores the setting."""
    model = small_cnn(fn.max_pool((2, 2)))
    assert not jax.config.jax_enable_x64
    params, state, x, y = setup(model, dtype=jnp.float32)
    assert x.dtype == jnp.float32
    report = fn.check_gradients(model, params, state, x, y, losses.softmax_cross_entropy)
    assert not jax.config.jax_enable_x64
    assert report.ok
    # float32 finite differences could not reach 1e-4 (~1e-2): these are float64 numbers
    # (step 1e-7: round-off ~1e-6 relative on the smallest elements).
    assert max(r.autodiff_vs_numerical for r in report.rows) < 1e-4
    assert [r.path for r in report.rows] == ["0:conv2d/b", "0:conv2d/w", "4:dense/b", "4:dense/w",
                                             "input"]
    assert report.rows[1].shape == (3, 3, 1, 2) and report.rows[-1].shape == (3, 4, 4, 1)
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["leaf", "shape"]
    for r in report.rows:
        assert sum(line.startswith(r.path + " ") for line in lines) == 1
    assert len(lines) == len(report.rows) + 4 and "PASS" in lines[-1]
    assert report.loss == pytest.approx(float(losses.softmax_cross_entropy(
        model.apply(params, state, x)[0], y)), rel=1e-5)


def test_raise_on_failure():
    model = fn.serial(fn.dense(2), fn.tanh)
    wrong = fn.serial(fn.dense(2), fn.sigmoid._replace(forward=fn.tanh.forward))  # σ' used for tanh
    with jax.enable_x64(True):
        params, state, x, _ = setup(model, (2, 3))
    assert fn.check_gradients(model, params, state, x, raise_on_failure=True).ok
    with pytest.raises(fn.GradientCheckError) as err:
        fn.check_gradients(wrong, params, state, x, raise_on_failure=True)
    assert "FAIL" in str(err.value) and "0:dense/w" in str(err.value)


def test_no_loss_uses_non_uniform_random_upstream_gradient():
    """With loss=None the objective is Σ y ⊙ g for a random g. A uniform g (all ones) would
    let a wrong softmax backward pass: Σ softmax = 1 has zero gradient whatever the rule."""
    wrong = fn.serial(fn.dense(3), fn.softmax._replace(backward=diagonal_softmax_backward))
    with jax.enable_x64(True):
        params, state, x, _ = setup(wrong, (2, 4))
    report = fn.check_gradients(wrong, params, state, x)
    assert not report.ok
    assert report.loss != pytest.approx(2.0)  # not Σ y with g = 1 (rows of softmax sum to 1)
    # Different seeds, different g, same verdict.
    assert not fn.check_gradients(wrong, params, state, x, seed=3).ok


def test_sampled_check_and_zero_gradient_bias():
    """samples=k checks k coordinates per leaf; a bias feeding batch norm has a true zero
    gradient and passes (the absolute floor), whereas a doubled backward still fails."""
    model = fn.serial(fn.dense(5), fn.batch_norm(), fn.relu, fn.dense(3))
    with jax.enable_x64(True):
        params, state, x, y = setup(model, (6, 4))
    report = fn.check_gradients(model, params, state, x, y, losses.softmax_cross_entropy,
                                train=True, samples=3, sample_key=jax.random.PRNGKey(1))
    assert report.ok
    with jax.enable_x64(True):
        auto = jax.grad(lambda p: losses.softmax_cross_entropy(
            model.apply(p, state, x, train=True)[0], y))(params)
    assert np.abs(np.asarray(auto[0]["b"])).max() < 1e-12  # zero in truth
    doubled = model._replace(backward=lambda p, c, dy: jax.tree_util.tree_map(
        lambda g: 2 * g, model.backward(p, c, dy)))
    bad = fn.check_gradients(doubled, params, state, x, y, losses.softmax_cross_entropy,
                             train=True, samples=3)
    assert not bad.ok and "0:dense/b" not in {r.path for r in bad.failures}


def test_a_large_weight_is_checked_along_directions_and_integer_ids_are_constants():
    """check_gradients' default: a 100x100 weight is compared element by element manual vs
    autodiff and along 4 random directions numerically (one compiled program); a backward
    whose dW is transposed is caught. Integer ids into an embedding are a constant input."""
    dense = fn.dense(100)
    model = fn.serial(dense, fn.tanh, fn.dense(3))
    params, state = model.init(jax.random.PRNGKey(0), (2, 100))
    x = fr.normal(jax.random.PRNGKey(1), (2, 100))
    report = fn.check_gradients(model, params, state, x)
    assert report.ok and report.rows[1].path == "0:dense/w projected (4 directions)"
    assert report.rows[1].shape == (100, 100) and report.rows[1].manual_vs_autodiff < 1e-11
    # (float64 round-off: 100-term sums summed in a different order, a few 1e-12)

    def transposed(p, cache, dy):
        dp, dx = dense.backward(p, cache, dy)
        return {"w": dp["w"].T, "b": dp["b"]}, dx

    wrong = fn.serial(dense._replace(backward=transposed), fn.tanh, fn.dense(3))
    bad = fn.check_gradients(wrong, params, state, x)
    assert [r.path for r in bad.failures] == ["0:dense/w projected (4 directions)"]
    emb = fn.serial(fn.embedding(7, 3), fn.flatten, fn.dense(2))
    ids = jnp.array([[0, 6, 2], [3, 3, 1]])
    p, s = emb.init(jax.random.PRNGKey(2), (2, 3))
    report = fn.check_gradients(emb, p, s, ids, jnp.array([0, 1]), losses.softmax_cross_entropy)
    assert report.ok and "input" not in [r.path for r in report.rows]
    assert "input: constant (int" in str(report)
