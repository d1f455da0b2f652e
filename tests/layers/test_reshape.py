"""flatten: (batch, ...) -> (batch, features) in row-major (C) order."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from tests.layers.three_way import SEEDS, configs, three_way


@given(shape=st.sampled_from([(1, 1), (2, 3), (3, 1, 2), (2, 2, 3, 1), (1, 3, 2, 2), (2, 1, 1, 1, 3)]))
def test_flatten_is_a_row_major_reshape_keeping_the_batch(shape):
    x = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
    with jax.enable_x64(True):
        params, state = fn.flatten.init(jax.random.PRNGKey(0), shape)
        assert params == {} and state == {}
        y, new_state = fn.flatten.apply(params, state, jnp.asarray(x))
        expected = x.reshape(shape[0], -1)
        assert y.shape == fn.flatten.output_shape(shape) == (shape[0], math.prod(shape[1:]))
        np.testing.assert_array_equal(np.asarray(y), expected)
        assert new_state == {}


def test_flatten_order_matches_nhwc_rasterization():
    x = jnp.arange(8.0).reshape(1, 2, 2, 2)  # x[0, h, w, c] = 4h + 2w + c
    y, _ = fn.flatten.apply({}, {}, x)
    np.testing.assert_array_equal(np.asarray(y), [[0, 1, 2, 3, 4, 5, 6, 7]])
    assert fn.flatten.name == "flatten"


def test_flatten_without_batch_axis_fails_naming_the_layer():
    with pytest.raises(fn.LayerError, match=r"layer 1 \(flatten\): flatten: expects input with a "
                                            r"batch axis, got shape \(7,\)"):
        fn.serial(fn.relu, fn.flatten).init(jax.random.PRNGKey(0), (7,))


# ----------------------------------------------------------------------------- three ways
# manual backward vs jax.vjp vs finite differences (tests/layers/three_way.py)

@given(shape=configs([(2, 3, 4), (1, 2, 3, 2)], st.sampled_from([(2, 3), (2, 3, 4), (1, 2, 3, 2)])),
       seed=SEEDS)
def test_flatten(shape, seed):
    m, _ = three_way(("flatten",), shape, seed)
    assert m[1].shape == shape
