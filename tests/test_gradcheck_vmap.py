"""check_vmap: value, VJP and JVP under jax.vmap against f on each example, stacked; legs a
function does not support are skipped and said (the catalogue of wrong rules is
tests/test_gradcheck_catalogue.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.custom_batching import custom_vmap

import funcnet as fn
from funcnet import _random as fr


def scaled_sin(batched_rule):
    """2 sin(x) with the custom_vmap rule (x batched) -> batched_rule(x)."""
    f = custom_vmap(lambda x: 2 * jnp.sin(x))
    f.def_vmap(lambda axis_size, in_batched, x: (batched_rule(x), in_batched[0]))
    return f


X = fr.normal(jax.random.PRNGKey(0), (3, 4))


def test_a_plain_function_passes_every_leg():
    def f(x, w):
        return jnp.tanh(x @ w), jnp.sum(x ** 2)

    w = fr.normal(jax.random.PRNGKey(1), (4, 2))
    report = fn.check_vmap(f, X, w, in_axes=(0, None))
    assert report.ok and not report.notes
    assert [r.path for r in report.rows] == ["value out/0", "value out/1", "VJP arg0",
                                             "VJP arg1", "JVP out/0", "JVP out/1"]
    assert report.rows[3].shape == (4, 2)  # an unbatched argument: summed over examples
    assert "check_vmap PASS" in str(report) and not jax.config.jax_enable_x64
    assert fn.check_vmap(lambda x: x.T @ x, X, in_axes=1).ok  # another batch axis


def test_a_wrong_custom_vmap_rule_fails_and_its_missing_vjp_is_said():
    good = fn.check_vmap(scaled_sin(lambda x: 2 * jnp.sin(x)), X)
    assert good.ok and [r.path for r in good.rows] == ["value out", "JVP out"]
    assert good.notes[0].startswith("VJP: not checked, f does not support it (")
    bad = fn.check_vmap(scaled_sin(lambda x: 2 * jnp.sin(x[::-1])), X)  # examples mixed up
    assert [r.path for r in bad.failures] == ["value out", "JVP out"]
    assert "value out: FAIL at element (0, " in str(bad)


def test_a_host_callback_declared_vectorized_that_is_not():
    def host_sum(x):  # written for one example: sums everything
        return np.asarray(np.sum(x ** 2), x.dtype)

    def vectorized_sum(x):  # what vmap_method="broadcast_all" promises
        return np.sum(x ** 2, axis=-1).astype(x.dtype)

    def via(host):
        return lambda x: jax.pure_callback(host, jax.ShapeDtypeStruct((), x.dtype), x,
                                           vmap_method="broadcast_all")

    assert fn.check_vmap(via(vectorized_sum), X).ok
    bad = fn.check_vmap(via(host_sum), X)
    assert [r.path for r in bad.failures] == ["value under jax.vmap"]
    assert "value fails under jax.vmap but not on one example" in str(bad)
    assert "JVP: not checked" in str(bad)


def test_bad_input_is_a_clear_error():
    with pytest.raises(fn.FuncnetError, match="share one batch size"):
        fn.check_vmap(lambda x, y: x + y, X, X[:2])
    with pytest.raises(fn.FuncnetError, match="in_axes has 1 entries for 2 arguments"):
        fn.check_vmap(lambda x, y: x + y, X, X, in_axes=(0,))
    with pytest.raises(fn.FuncnetError, match="argument arg0 holds NaN"):
        fn.check_vmap(jnp.sin, X.at[0, 0].set(jnp.nan))


def test_a_nan_gradient_fails_under_vmap_too():
    sq = lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0)  # noqa: E731 -- NaN VJP where x < 0
    report = fn.check_vmap(sq, X)
    assert [r.path for r in report.failures] == ["VJP arg0"]
    assert "VJP arg0: FAIL vmap is nan at element (" in str(report)
