"""The shared argument checks: one way to check a float (as_float), with the messages that
name where, what and the allowed range."""
import fractions

import jax
import numpy as np
import pytest

import funcnet as fn
from funcnet import _validate
from funcnet.data import DataError

# ----------------------------------------------------------------------------- as_float


@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.25), np.float64(0.25), np.int64(1),
                                   np.int8(1), fractions.Fraction(1, 4)])
def test_as_float_takes_python_and_numpy_reals_as_a_python_float(value):
    got = _validate.as_float(value, "x", "here")
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value", [True, np.bool_(True), float("nan"), float("inf"),
                                   np.float32("-inf"), "0.5", None, 1j, np.array(0.5)])
def test_as_float_refuses_bools_non_finite_and_non_numbers(value):
    with pytest.raises(fn.LayerError, match=r"^here: x must be a finite number, got "):
        _validate.as_float(value, "x", "here")


@pytest.mark.parametrize("bounds, inside, outside, words", [
    ({"low": 0}, [0, 3.5], [-1e-9], "a finite number >= 0"),
    ({"low": 0, "low_open": True}, [1e-9], [0, -1], "a finite number > 0"),
    ({"high": 2}, [2, -5], [2.5], "a finite number <= 2"),
    ({"high": 2, "high_open": True}, [1.9], [2], "a finite number < 2"),
    ({"low": 0, "high": 1, "high_open": True}, [0, 0.5], [1, -0.1], r"in \[0, 1\)"),
    ({"low": 0, "high": 1}, [0, 1], [1.5], r"in \[0, 1\]"),
    ({"low": 0.5, "high": 1, "low_open": True}, [1], [0.5], r"in \(0.5, 1\]"),
    ({"low": 0, "high": 1, "low_open": True, "high_open": True}, [0.5], [0, 1],
     "strictly between 0 and 1"),
])
def test_as_float_bounds_and_the_range_in_the_message(bounds, inside, outside, words):
    for v in inside:
        assert _validate.as_float(v, "x", "here", **bounds) == v
    for v in outside + [float("nan")]:
        with pytest.raises(fn.LayerError, match=rf"^here: x must be {words}, got {v!r}$"):
            _validate.as_float(v, "x", "here", **bounds)


def test_as_float_own_words_and_error_type():
    with pytest.raises(DataError, match=r"^data: f must be a positive number, got -1$"):
        _validate.as_float(-1, "f", "data", low=0, low_open=True, words="a positive number",
                           error=DataError)


@pytest.mark.parametrize("make, value, shape", [
    (lambda v: fn.dropout(v), np.float32(0.5), (2, 3)),
    (lambda v: fn.batch_norm(momentum=v), np.float32(0.75), (2, 3)),
    (lambda v: fn.batch_norm(eps=v), np.float32(0.5), (2, 3)),
    (lambda v: fn.layer_norm(v), np.float32(0.5), (2, 3)),
    (lambda v: fn.elu(v), np.int64(2), (2, 3)),
    (lambda v: fn.leaky_relu(v), np.float32(0.25), (2, 3)),
    (lambda v: fn.gaussian_pool(3, sigma=v), np.float32(1.5), (1, 3, 3, 1)),
    (lambda v: fn.dense(3, w_init=v), np.float32(0.5), (2, 3)),
])
def test_float_options_take_numpy_scalars(make, value, shape):
    """Every float option goes through as_float: a NumPy scalar (np.float32 and np.int64 are
    not Python floats; np.float64 is) builds the layer the Python float builds."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(jax.random.PRNGKey(1), shape) - 0.5
    out = []
    for v in (value, float(value)):
        layer = make(v)
        params, state = layer.init(key, shape)
        y, new_state = layer.apply(params, state, x, train=True, key=key)
        out.append((params, new_state, y))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), *out)


def test_gaussian_takes_a_numpy_std():
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(fn.initializers.gaussian(np.float32(0.5))(key, (4, 3)),
                                  fn.initializers.gaussian(0.5)(key, (4, 3)))
