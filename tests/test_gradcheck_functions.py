"""check_vjp, check_backward, check_hvp, check_layer: values, reports, kinks, precision and
bad input (the catalogue of wrong rules is tests/test_gradcheck_catalogue.py)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile


@jax.custom_vjp
def tanh_affine(x, w):
    return jnp.tanh(x @ w)


def _fwd(x, w):
    y = jnp.tanh(x @ w)
    return y, (x, w, y)


def _bwd(res, g):
    x, w, y = res
    d = g * (1 - y ** 2)
    return d @ w.T, x.T @ d


tanh_affine.defvjp(_fwd, _bwd)


def inputs(seed=0):
    k = jax.random.PRNGKey(seed)
    return fr.normal(k, (3, 4)), fr.normal(jax.random.fold_in(k, 1), (4, 2))


def test_check_vjp_passes_a_correct_rule_in_float64_and_restores_x64():
    x, w = inputs()
    assert x.dtype == jnp.float32 and not jax.config.jax_enable_x64
    report = fn.check_vjp(tanh_affine, x, w, reference=lambda x, w: jnp.tanh(x @ w))
    assert not jax.config.jax_enable_x64
    assert report.ok and [r.path for r in report.rows] == ["arg0", "arg1"]
    assert report.rows[1].shape == (4, 2)
    assert max(r.manual_vs_autodiff for r in report.rows) < 1e-6  # float64 differences
    assert max(r.autodiff_vs_numerical for r in report.rows) < 1e-12  # rule vs reference
    assert "check_vjp PASS" in str(report)


def test_check_vjp_names_the_worst_element_with_both_values():
    f = jax.custom_vjp(lambda x, w: jnp.tanh(x @ w))
    f.defvjp(_fwd, lambda res, g: (_bwd(res, g)[0], _bwd(res, g)[1].at[2, 1].add(0.5)))
    report = fn.check_vjp(f, *inputs(), cotangents=1)
    assert not report.ok and [r.path for r in report.failures] == ["arg1"]
    row = report.failures[0]
    assert row.worst_index == (2, 1)
    assert row.worst_values["rule"] - row.worst_values["numerical"] == pytest.approx(0.5, abs=1e-6)
    assert "arg1: FAIL at element (2, 1): rule" in str(report)
    with pytest.raises(fn.GradientCheckError):
        fn.check_vjp(f, *inputs(), cotangents=1, raise_on_failure=True)


def test_check_vjp_pytree_arguments_and_outputs_integer_constants():
    def f(p, x, n):
        h = x @ p["w"] + p["b"]
        return {"y": jnp.sin(h) * n, "z": jnp.sum(h ** 2)}

    x, w = inputs()
    report = fn.check_vjp(f, {"w": w, "b": jnp.ones(2)}, x, 3)
    assert report.ok and [r.path for r in report.rows] == ["arg0/b", "arg0/w", "arg1"]


def test_a_kink_is_counted_not_failed_and_avoid_kinks_redraws():
    x = jnp.array([0.0, 1.0, -1.0, 0.5])
    report = fn.check_vjp(jax.nn.relu, x)
    assert report.ok and report.kinks == 1 and "at a kink" in str(report)
    assert fn.check_vjp(jax.nn.relu, x, avoid_kinks=True).kinks == 0


def affine_forward(x, w, b):
    return x @ w + b, (x, w, b)


def affine_backward(dout, cache):
    x, w, _ = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def numpy_inputs(n=4):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)


def test_check_backward_numpy_coordinates_and_projected():
    report = fn.check_backward(affine_forward, affine_backward, *numpy_inputs())
    assert report.ok and [r.path for r in report.rows] == ["input0", "input1", "input2"]
    assert max(r.manual_vs_autodiff for r in report.rows) < 1e-6
    big = fn.check_backward(affine_forward, affine_backward, *numpy_inputs(40), max_elements=100)
    assert big.ok and big.rows[0].path.startswith("input0 (along 8 random directions)")
    one = fn.check_backward(lambda x: (np.tanh(x), x), lambda d, x: d * (1 - np.tanh(x) ** 2),
                            np.linspace(-1, 1, 6))
    assert one.ok and len(one.rows) == 1


def test_check_backward_bad_shapes_and_counts_are_named():
    x, w, b = numpy_inputs()
    with pytest.raises(fn.FuncnetError, match="gradient for input 1 has shape \\(3, 5\\), but "
                                              "input 1 has shape \\(5, 3\\)"):
        fn.check_backward(affine_forward, lambda d, c: (d @ c[1].T, (c[0].T @ d).T, d.sum(0)),
                          x, w, b)
    with pytest.raises(fn.FuncnetError, match="returned 2 gradient\\(s\\) for 3 input\\(s\\)"):
        fn.check_backward(affine_forward, lambda d, c: affine_backward(d, c)[:2], x, w, b)
    with pytest.raises(fn.FuncnetError, match="input 0 holds NaN"):
        fn.check_backward(affine_forward, affine_backward, x * np.nan, w, b)


def test_bad_input_to_check_vjp_is_a_clear_error():
    x, w = inputs()
    with pytest.raises(fn.FuncnetError, match="dtype int(32|64), which has no gradient"):
        fn.check_vjp(lambda x: jnp.argmax(x, axis=1), x)
    with pytest.raises(fn.FuncnetError, match="argument arg0 holds NaN"):
        fn.check_vjp(tanh_affine, x.at[0, 0].set(jnp.nan), w)
    calls = []

    def impure(x):
        calls.append(1)
        return x * len(calls)

    with pytest.raises(fn.FuncnetError, match="not pure"):
        fn.check_vjp(impure, x)
    f = jax.custom_vjp(lambda x, w: jnp.tanh(x @ w))
    f.defvjp(_fwd, lambda res, g: (_bwd(res, g)[0], _bwd(res, g)[1].T))
    with pytest.raises(fn.FuncnetError, match="check_vjp: f's VJP rule failed"):
        fn.check_vjp(f, x, w)


def _sin_x(bwd):
    f = jax.custom_vjp(lambda x: jnp.sum(jnp.sin(x) * x))
    f.defvjp(lambda x: (jnp.sum(jnp.sin(x) * x), x), lambda x, g: (g * bwd(x),))
    return f


def test_check_hvp_second_order_and_non_differentiable_rules_reported():
    x = jnp.array([0.3, -1.2, 2.0])
    good = _sin_x(lambda x: jnp.cos(x) * x + jnp.sin(x))
    assert fn.check_hvp(good, x, reference=lambda x: jnp.sum(jnp.sin(x) * x)).ok
    assert fn.check_hvp(lambda x: jnp.tanh(x) ** 2, x).ok  # vector output: projected
    frozen = _sin_x(lambda x: jax.lax.stop_gradient(jnp.cos(x) * x + jnp.sin(x)))
    assert fn.check_vjp(frozen, x).ok  # first order right ...
    report = fn.check_hvp(frozen, x)  # ... second order wrong
    assert not report.ok and "stop_gradient" in str(report)
    shape = jax.ShapeDtypeStruct(x.shape, jnp.float64)
    numpy = _sin_x(lambda x: jax.pure_callback(lambda a: np.cos(a) * a + np.sin(a), shape, x))
    report = fn.check_hvp(numpy, x)
    assert not report.ok and report.failed_properties == ["rule differentiable"]
    assert "non-differentiable pieces" in str(report)


def test_check_layer_passes_a_correct_layer_in_both_modes():
    report = fn.check_layer(fn.serial(fn.dense(3), fn.tanh, fn.batch_norm()), (4, 5))
    assert report.ok and not report.failed_properties
    assert {"init", "output_shape", "pure (eval)", "jit (train)", "vmap (train)"} <= set(report.properties)
    assert [r.path for r in report.rows][:2] == ["[eval] 0:dense/b", "[eval] 0:dense/w"]
    assert any(r.path == "[train] input" for r in report.rows)


def test_check_layer_names_the_failed_property():
    calls = []

    def forward(params, state, x, *, train=False, key=None):
        calls.append(1)
        return x * len(calls), state, None

    impure = fn.Layer(lambda key, shape, dtype=None: ({}, {}), forward,
                      lambda params, cache, dy: ({}, dy), "counter")
    report = fn.check_layer(impure, (2, 3))
    assert not report.ok and "pure (eval)" in report.failed_properties
    assert "property pure (eval): FAIL" in str(report)
    wrong_shape = fn.dense(3)._replace(output_shape=lambda s: (s[0], 4))
    report = fn.check_layer(wrong_shape, (2, 5))
    assert report.failed_properties == ["output_shape"] and "says (2, 4)" in str(report)
    dense = fn.dense(3)
    lazy = dense._replace(backward=lambda p, c, dy: ({"w": p["w"] * 0, "b": dy.sum(0)},
                                                     dense.backward(p, c, dy)[1]))
    report = fn.check_layer(lazy, (2, 5), modes=(False,))
    assert [r.path for r in report.failures] == ["[eval] dense/w"]


def test_without_float64_the_checks_run_in_float32_with_a_wider_floor(monkeypatch):
    """Simulated backend without float64: no spurious failure, the report says so, and a
    wrong rule is still caught."""
    from funcnet.gradcheck import _precision
    x, w = inputs()
    exact = fn.check_vjp(tanh_affine, x, w)
    monkeypatch.setattr(_precision, "float64_available", lambda: False)
    report = fn.check_vjp(tanh_affine, x, w)
    assert report.ok and report.tolerances["eps"] == 1e-3
    assert report.tolerances["atol"] > 300 * exact.tolerances["atol"]  # cotangents redrawn in f32
    assert report.rows[0].manual_vs_autodiff > 1e-5  # rule/numerical: float32 differences
    assert "float64 unavailable: checked in float32, floor widened to" in str(report)
    f = jax.custom_vjp(lambda x, w: jnp.tanh(x @ w))
    f.defvjp(_fwd, lambda res, g: (_bwd(res, g)[0], 1.1 * _bwd(res, g)[1]))
    assert not fn.check_vjp(f, x, w).ok
    model = fn.serial(fn.dense(3), fn.tanh)
    params, state = model.init(jax.random.PRNGKey(0), (2, 4))
    good = fn.check_gradients(model, params, state, x[:2])
    assert good.ok and "float64 unavailable" in good.notes[0]
    wrong = model._replace(backward=lambda p, c, dy: jax.tree_util.tree_map(
        lambda g: 1.1 * g, model.backward(p, c, dy)))
    assert not fn.check_gradients(wrong, params, state, x[:2]).ok
    assert not jax.config.jax_enable_x64


def test_a_large_leaf_is_checked_along_random_directions():
    """A 100x100 weight: projected check (4 random unit directions); small x element by
    element. A transposed weight gradient (same shape) is caught; the right rule passes."""
    x, w = fr.normal(jax.random.PRNGKey(3), (2, 100)), jnp.eye(100) / 2 + 0.01
    report = fn.check_vjp(tanh_affine, x, w, reference=lambda x, w: jnp.tanh(x @ w))
    assert report.ok and [r.path for r in report.rows] == ["arg0", "arg1 projected (4 directions)"]
    assert report.rows[1].shape == (100, 100) and report.rows[1].manual_vs_autodiff < 1e-6
    f = jax.custom_vjp(lambda x, w: jnp.tanh(x @ w))
    f.defvjp(_fwd, lambda res, g: (_bwd(res, g)[0], _bwd(res, g)[1].T))
    bad = fn.check_vjp(f, x, w)
    assert [r.path for r in bad.failures] == ["arg1 projected (4 directions)"]
    assert "arg1 projected (4 directions): FAIL at direction (" in str(bad)
    sampled = fn.check_vjp(f, x, w, samples=64)  # coordinate sampling stays available
    assert not sampled.ok and sampled.rows[1].path == "arg1"


def test_a_nan_gradient_fails_naming_the_element_and_the_leg():
    """jnp.where(x > 0, sqrt(x), 0): autodiff's derivative is NaN where x < 0 (0 · inf),
    the true one 0. It used to pass (NaN read as "not sampled")."""
    f = lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0)  # noqa: E731
    x = jnp.array([-2, -1, -0.5, 0.5, 1, 2.0])
    report = fn.check_vjp(f, x)
    assert not report.ok and report.verdict == "FAIL"
    row = report.failures[0]
    assert row.path == "arg0" and row.worst_index == (0,)
    assert "rule is nan at element (0,) where the numerical derivative is 0.0" in str(report)
    safe = lambda x: jnp.sqrt(jnp.where(x > 0, x, 1.0)) * (x > 0)  # noqa: E731 -- the fix
    assert fn.check_vjp(safe, x).ok
    inf = jax.custom_vjp(lambda x: x * 2.0)
    inf.defvjp(lambda x: (x * 2.0, None), lambda _, g: (g * jnp.inf,))
    assert re.search(r"rule is -?inf at element \(0,\)", str(fn.check_vjp(inf, x)))
    with pytest.raises(fn.FuncnetError, match="holds NaN or inf"):  # a bad input stays an error
        fn.check_vjp(f, x.at[1].set(jnp.inf))


def test_a_rule_drawing_randomness_fails_the_repeat_and_jit_rows():
    """Noise far below the tolerance passes the differences, but two evaluations of the rule
    differ: the row says so; nondet_tol relaxes it. Passing consistency rows are not shown."""
    draws = iter(range(10 ** 6))

    def noisy_bwd(x, g):
        key = jax.random.PRNGKey(next(draws))  # a fresh key per call: global state
        return (g * jnp.cos(x) + 1e-12 * fr.normal(key, x.shape, x.dtype),)

    noisy = jax.custom_vjp(jnp.sin)
    noisy.defvjp(lambda x: (jnp.sin(x), x), noisy_bwd)
    x = inputs()[0]
    report = fn.check_vjp(noisy, x)
    assert not report.ok and [r.path for r in report.failures] == ["rule evaluated twice"]
    assert "two evaluations of the rule differ (does it draw randomness" in str(report)
    assert report.rows[0].ok  # the rule itself agrees with the differences
    assert fn.check_vjp(noisy, x, nondet_tol=1e-9).ok
    good = fn.check_vjp(tanh_affine, *inputs())
    assert good.ok and [r.path for r in good.rows] == ["arg0", "arg1"]


def test_the_rule_under_jit_and_evaluated_twice():
    """A backward that counts its calls in a global changes between two evaluations; one
    that computes on the host (np.cos of its residual) runs eagerly but not under jax.jit,
    where f does: each fails its own row. jit="eager" skips the jit row."""
    calls = {"n": 0}

    def counting(x, g):
        calls["n"] += 1
        return (g * jnp.cos(x) * (1.0 + 1e-3 * (calls["n"] % 2)),)

    f = jax.custom_vjp(jnp.sin)
    f.defvjp(lambda x: (jnp.sin(x), x), counting)
    x = inputs()[0]
    report = fn.check_vjp(f, x, cotangents=1, rtol=1e-2)
    assert [r.path for r in report.failures] == ["rule evaluated twice"]
    host = jax.custom_vjp(jnp.sin)
    host.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * np.cos(np.asarray(x)),))
    report = fn.check_vjp(host, x)
    assert [r.path for r in report.failures] == ["rule under jax.jit"]
    assert "the rule fails under jax.jit where f runs: TracerArrayConversionError" in str(report)
    assert fn.check_vjp(host, x, jit="eager").ok
    assert fn.check_vjp(tanh_affine, *inputs(), jit="jit").ok
    with pytest.raises(fn.FuncnetError, match='jit must be "both", "eager" or "jit"'):
        fn.check_vjp(tanh_affine, *inputs(), jit="sometimes")


def test_every_checker_fails_a_nan_leg_with_its_name():
    """check_hvp, check_backward, check_gradients and check_layer: a NaN in any leg fails
    its row and says which leg, where."""
    x = jnp.array([-2, -1, -0.5, 0.5, 1, 2.0])
    sq = lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0)  # noqa: E731
    assert "rule is nan at element (0,)" in str(fn.check_hvp(lambda x: jnp.sum(sq(x)), x))

    def np_forward(x):
        return np.sqrt(np.maximum(x, 0.0)), x

    with np.errstate(all="ignore"):
        report = fn.check_backward(np_forward, lambda d, x: d * 0.5 / np.sqrt(x), np.asarray(x))
    assert "backward is nan at element (0,) where the numerical derivative is 0.0" in str(report)

    def forward(params, state, x, *, train=False, key=None):
        return sq(x), state, x

    layer = fn.Layer(lambda key, shape, dtype=None: ({}, {}), forward,
                     lambda p, x, dy: ({}, dy * jnp.where(x > 0, 0.5 / jnp.sqrt(jnp.abs(x)), 0.0)),
                     "root")
    report = fn.check_gradients(layer, {}, {}, x.reshape(2, 3))
    assert [r.path for r in report.failures] == ["input"]
    assert "input: FAIL autodiff is nan at element (0, 0) where manual is -0.0" in str(report)
    assert not fn.check_layer(layer, (2, 3), modes=(False,)).ok
