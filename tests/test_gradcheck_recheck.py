"""A failing comparison looked at again: error bars at ε/2 (pass with Richardson's estimate,
numerically unreliable, or fail), and projected rows bisected to the element behind them."""
import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from funcnet import _random as fr

X = jnp.linspace(-1.0, 1.0, 7)


def test_high_curvature_is_cleared_by_the_second_look_not_excused_as_a_kink():
    """sin(2000 x) / 2000: the centred difference at ε = 1e-5 is off by ~7e-5 relative and
    its one-sided ones disagree like a kink's; Richardson's estimate from ε/2 agrees."""
    report = fn.check_vjp(lambda x: jnp.sin(2000 * x) / 2000, X)
    assert report.ok and report.verdict == "PASS" and report.kinks == 0
    assert report.rows[0].manual_vs_autodiff < 1e-8


def test_an_element_the_differences_cannot_decide_is_numerically_unreliable():
    """f = sin(x) + 1e12: float64 differences of values near 1e12 carry round-off of ~10
    against a derivative of ~1 and an explicit atol of 1e-8: no verdict either way."""
    report = fn.check_vjp(lambda x: jnp.sin(x) + 1e12, X, atol=1e-8)
    assert report.ok and report.verdict == "UNRELIABLE" and report.unreliable == 7
    assert report.rows[0].verdict == "unreliable" and report.rows[0].ok
    text = str(report)
    assert "check_vjp UNRELIABLE (7 element(s) numerically unreliable, none failed)" in text
    assert "arg0: 7 element(s) numerically unreliable" in text
    assert fn.check_vjp(jnp.sin, X, atol=1e-8).verdict == "PASS"


def _wrong_at(index, delta):
    """tanh(x @ w) whose rule for w is off by `delta` at one element."""
    f = jax.custom_vjp(lambda x, w: jnp.tanh(x @ w))

    def bwd(res, g):
        x, w = res
        d = g * (1 - jnp.tanh(x @ w) ** 2)
        return d @ w.T, (x.T @ d).at[index].add(delta)

    f.defvjp(lambda x, w: (jnp.tanh(x @ w), (x, w)), bwd)
    return f


def test_a_failing_projected_row_names_the_element():
    x, w = fr.normal(jax.random.PRNGKey(3), (2, 100)), jnp.eye(100) / 2 + 0.01
    report = fn.check_vjp(_wrong_at((53, 7), 0.5), x, w, cotangents=1)
    row = report.failures[0]
    assert row.path == "arg1 projected (4 directions)" and row.worst_index == (53, 7)
    assert abs(row.worst_values["rule"] - row.worst_values["numerical"] - 0.5) < 1e-6
    assert "FAIL at direction (" in str(report)
    assert "the element behind it is (53, 7): rule" in str(report)


def test_check_backward_projected_rows_name_the_element_too():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 40)), rng.standard_normal((40, 5))

    def forward(x, w):
        return x @ w, (x, w)

    def backward(dout, cache):
        x, w = cache
        dw = x.T @ dout
        dw[17, 2] += 0.25
        return dout @ w.T, dw

    report = fn.check_backward(forward, backward, x, w, max_elements=100)
    assert [r.path for r in report.failures] == ["input1 (along 8 random directions)"]
    assert report.failures[0].worst_index == (17, 2)


def test_check_gradients_projected_autodiff_row_names_the_element():
    """A layer whose forward goes through a custom_vjp op with a wrong rule (and whose
    backward repeats it): manual agrees with autodiff, both disagree with the differences
    along the directions of the 30x40 weight; bisection names the element."""
    op = jax.custom_vjp(lambda x, w: x @ w)
    op.defvjp(lambda x, w: (x @ w, (x, w)),
              lambda r, g: (g @ r[1].T, (r[0].T @ g).at[11, 29].add(0.5)))

    def forward(params, state, x, *, train=False, key=None):
        return op(x, params["w"]), state, (x, params["w"])

    def backward(params, cache, dy):
        x, w = cache
        return {"w": (x.T @ dy).at[11, 29].add(0.5)}, dy @ w.T

    layer = fn.Layer(lambda key, shape, dtype=jnp.float32: (
        {"w": fr.normal(key, (shape[1], 40), dtype) / 6}, {}), forward, backward, "wrong_matmul")
    params, state = layer.init(jax.random.PRNGKey(0), (2, 30))
    x = fr.normal(jax.random.PRNGKey(1), (2, 30))
    report = fn.check_gradients(layer, params, state, x, project_above=256)
    row = {r.path: r for r in report.rows}["wrong_matmul/w projected (4 directions)"]
    assert not row.ok and row.worst_index == (11, 29)
    assert row.manual_vs_autodiff < 1e-12  # manual and autodiff agree (both wrong)
