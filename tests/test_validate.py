"""The shared argument checks: one way to check a float (as_float), with the messages that
name where, what and the allowed range; one way to carry ints through a cache (tokens)."""
import fractions

import jax
import jax.numpy as jnp
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


# ----------------------------------------------------------------------------- ints through a cache

def test_int_token_carries_an_int_in_an_empty_arrays_shape():
    t = _validate.int_token(np.int64(5))
    assert t.shape == (5, 0) and t.size == 0
    n = _validate.token_int(t)
    assert n == 5 and type(n) is int


def test_ints_token_carries_a_shape():
    t = _validate.ints_token((3, 1, 4))
    assert t.size == 0 and _validate.token_ints(t) == (3, 1, 4)
    assert _validate.token_ints(_validate.ints_token(())) == ()


def test_tokens_come_back_as_ints_through_jit_and_vmap():
    """A cache leaves a jitted forward and enters a jitted backward: the ints stay static."""
    @jax.jit
    def forward(x):
        return {"like": _validate.ints_token(x.shape[1:]), "n": _validate.int_token(x.shape[0])}

    @jax.jit
    def backward(cache, dy):
        assert _validate.token_ints(cache["like"]) == (2, 3)  # Python ints at trace time
        return dy.reshape((_validate.token_int(cache["n"]),) + _validate.token_ints(cache["like"]))

    cache = forward(jnp.zeros((4, 2, 3)))
    np.testing.assert_array_equal(backward(cache, jnp.arange(24.0)), np.arange(24.0).reshape(4, 2, 3))
    # vmap: the backward sees each example's token, as the forward made it
    per_example = jax.vmap(lambda x: {"like": _validate.ints_token(x.shape)})(jnp.zeros((4, 2, 3)))
    assert per_example["like"].shape == (4, 2, 3, 0)
    sizes = jax.vmap(lambda c: jnp.ones(_validate.token_ints(c["like"])).sum())(per_example)
    np.testing.assert_array_equal(sizes, np.full(4, 6.0))


# ----------------------------------------------------------------------------- NumPy ints

def _numpy_ints(value):
    """Every Python int inside `value` (nested tuples, dict values) as an np.int64."""
    if isinstance(value, bool) or not isinstance(value, (int, tuple, dict)):
        return value
    if isinstance(value, tuple):
        return tuple(_numpy_ints(v) for v in value)
    if isinstance(value, dict):
        return {k: _numpy_ints(v) for k, v in value.items()}
    return np.int64(value)


# (constructor, positional args, keyword args, input shape): every int argument of each layer
INT_ARGUMENTS = [
    (fn.dense, (3,), {}, (2, 4)),
    (fn.conv2d, (2, 3), {"stride": 2, "padding": 1}, (1, 6, 6, 1)),
    (fn.conv2d, (2, (3, 2)), {"stride": (1, 2), "padding": ((1, 0), (0, 1))}, (1, 5, 5, 2)),
    (fn.conv1d, (2, 3), {"stride": 2, "padding": 1}, (1, 7, 2)),
    (fn.conv1d, (2, 3), {"padding": (2, 1)}, (1, 5, 1)),
    (fn.conv_transpose2d, (2, 3), {"stride": 2, "padding": 1}, (1, 3, 3, 1)),
    (fn.conv_transpose2d, (2, (2, 3)), {"stride": (2, 1), "padding": ((0, 1), (1, 0))}, (1, 3, 3, 1)),
    (fn.max_pool, (2,), {"stride": 1, "padding": 1}, (1, 4, 4, 2)),
    (fn.avg_pool, ((2, 3),), {"stride": (2, 1), "padding": ((1, 0), (0, 1))}, (1, 5, 5, 1)),
    (fn.gaussian_pool, (3,), {"stride": 2, "padding": 1}, (1, 5, 5, 1)),
    (fn.learned_pool, (2,), {"stride": 2, "padding": 1}, (1, 5, 5, 2)),
    (fn.embedding, (6, 3), {}, (2, 4)),
    (fn.self_attention, (2,), {}, (1, 3, 4)),
    (fn.positional_embedding, (5,), {}, (1, 3, 4)),
    (fn.rnn, (3,), {}, (1, 4, 2)),
    (fn.lstm, (3,), {}, (1, 4, 2)),
]


@pytest.mark.parametrize("make, args, kwargs, shape", INT_ARGUMENTS,
                         ids=lambda v: v.__name__ if callable(v) else None)
def test_every_int_argument_takes_numpy_ints(make, args, kwargs, shape):
    """np.int64 wherever a layer takes an int (a size, a kernel, a stride, a padding) builds
    the layer the Python int builds: same output shape, params and output."""
    key = jax.random.PRNGKey(0)
    if make is fn.embedding:
        x = jnp.asarray(np.arange(np.prod(shape)).reshape(shape) % args[0])
    else:
        x = jax.random.normal(jax.random.PRNGKey(1), shape)
    out = []
    for a, kw in ((args, kwargs), (_numpy_ints(args), _numpy_ints(kwargs))):
        layer = make(*a, **kw)
        params, state = layer.init(key, shape)
        y, _ = layer.apply(params, state, x)
        out.append((layer.output_shape(shape), params, y))
    assert out[0][0] == out[1][0] == tuple(out[1][2].shape)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 out[0][1:], out[1][1:])
