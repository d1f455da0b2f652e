"""global_avg_pool: NHWC -> (N, C), forward against loops, backward three ways."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from tests.reference import normal


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 2), h=st.integers(1, 4),
       w=st.integers(1, 4), c=st.integers(1, 3))
def test_forward_matches_loops(seed, n, h, w, c):
    x = normal(seed, (n, h, w, c))
    expected = np.zeros((n, c))
    for i in range(h):
        for j in range(w):
            expected += x[:, i, j, :]
    expected /= h * w
    params, state = fn.global_avg_pool.init(jax.random.PRNGKey(0), x.shape)
    assert params == {} and state == {}
    with jax.enable_x64(True):
        y, _ = fn.global_avg_pool.apply(params, state, jnp.asarray(x))
    assert y.shape == fn.global_avg_pool.output_shape(x.shape) == (n, c)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


def test_backward_three_ways_and_the_value():
    with jax.enable_x64(True):
        x = jnp.asarray(normal(1, (2, 3, 2, 3)))
        report = fn.check_gradients(fn.global_avg_pool, {}, {}, x)
        assert report.ok, report
        _, dx = fn.backprop(fn.global_avg_pool, {}, {}, x, jnp.ones((2, 3)))
    np.testing.assert_allclose(np.asarray(dx), np.full((2, 3, 2, 3), 1 / 6))


def test_wrong_rank_names_the_layer():
    with pytest.raises(fn.LayerError, match=r"layer 1 \(global_avg_pool\): .*NHWC.*\(2, 5\)"):
        fn.serial(fn.dense(5), fn.global_avg_pool).init(jax.random.PRNGKey(0), (2, 3))
