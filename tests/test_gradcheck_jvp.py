"""check_jvp: a custom_jvp rule against differences along random tangents, and the
transpose identity ⟨c, J t⟩ = ⟨Jᵀc, t⟩ (the catalogue of wrong rules is
tests/test_gradcheck_catalogue.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import _random as fr


def softplus_with(tangent_rule):
    """softplus with the custom_jvp rule (x, t) -> tangent_rule(x, t)."""
    f = jax.custom_jvp(lambda x: jnp.logaddexp(x, 0.0))
    f.defjvp(lambda p, t: (jnp.logaddexp(p[0], 0.0), tangent_rule(p[0], t[0])))
    return f


X = jnp.linspace(-2.0, 2.0, 6)


def test_a_correct_custom_jvp_rule_passes_in_float64_and_a_wrong_one_fails():
    good = softplus_with(lambda x, t: jax.nn.sigmoid(x) * t)
    report = fn.check_jvp(good, X.astype(jnp.float32))
    assert not jax.config.jax_enable_x64
    assert report.ok and [r.path for r in report.rows] == ["arg0", "transpose ⟨c, J t⟩ = ⟨Jᵀc, t⟩"]
    assert report.rows[0].manual_vs_autodiff < 1e-8  # float64 differences
    assert report.rows[1].autodiff_vs_numerical < 1e-12 and "check_jvp PASS" in str(report)
    wrong = softplus_with(lambda x, t: jax.nn.sigmoid(-x) * t)  # σ(−x) for σ(x)
    bad = fn.check_jvp(wrong, X)
    assert [r.path for r in bad.failures] == ["arg0"]
    assert "arg0: FAIL at output element (" in str(bad)
    with pytest.raises(fn.GradientCheckError):
        fn.check_jvp(wrong, X, raise_on_failure=True)


def test_a_rule_not_linear_in_its_tangent_fails_the_transpose_row():
    """t + 1e-3 t²: right to first order along small tangents' differences? No: the
    differences see J t only, and jax.vjp cannot transpose t² — the transpose row says so."""
    bent = softplus_with(lambda x, t: jax.nn.sigmoid(x) * t + 1e-3 * t ** 2)
    report = fn.check_jvp(bent, X, rtol=1e-2)
    assert [r.path for r in report.failures] == ["transpose ⟨c, J t⟩ = ⟨Jᵀc, t⟩"]
    assert "cannot be formed" in str(report) and "linear in its" in str(report)


def test_pytrees_several_arguments_integer_constants_and_kinks():
    def f(p, x, n):
        return {"y": jnp.tanh(x @ p["w"]) * n, "z": jnp.sum(x ** 2)}

    x, w = fr.normal(jax.random.PRNGKey(0), (3, 4)), fr.normal(jax.random.PRNGKey(1), (4, 2))
    report = fn.check_jvp(f, {"w": w}, x, 2, tangents=3)
    assert report.ok and [r.path for r in report.rows][:2] == ["arg0/w", "arg1"]
    relu = fn.check_jvp(jax.nn.relu, jnp.array([0.0, 1.0, -1.0]))
    assert relu.ok and relu.kinks >= 1


def test_without_forward_mode_or_with_bad_input_a_clear_error():
    vjp_only = jax.custom_vjp(jnp.sin)
    vjp_only.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    with pytest.raises(fn.FuncnetError, match="check_jvp: jax.jvp\\(f\\) failed: TypeError"):
        fn.check_jvp(vjp_only, X)
    with pytest.raises(fn.FuncnetError, match="argument arg0 holds NaN"):
        fn.check_jvp(jnp.sin, X.at[0].set(jnp.nan))


def test_a_nan_tangent_fails_naming_the_element():
    nan_rule = softplus_with(lambda x, t: jnp.where(x > 1.5, jnp.nan, jax.nn.sigmoid(x) * t))
    report = fn.check_jvp(nan_rule, X)
    assert not report.ok
    assert "arg0: FAIL rule is nan at output element (5,) where the numerical derivative is" \
        in str(report)
    assert np.isinf(report.rows[0].manual_vs_autodiff)
