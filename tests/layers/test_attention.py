"""self_attention and positional_embedding: forward against a NumPy per-head reference and
torch.nn.MultiheadAttention, backward three ways in float64, causal masking, errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import _random as fr
from tests.layers.three_way import randomize, three_way
from tests.reference import normal

B, T, D, HEADS = 2, 4, 6, 3


def numpy_attention(p, x, heads, causal):
    """Per example and per head, written with loops over heads."""
    p = {k: np.asarray(v) for k, v in p.items()}
    d = x.shape[-1]
    dh = d // heads
    qkv = x @ p["w_qkv"] + p["b_qkv"]
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            s = q[n, :, cols] @ k[n, :, cols].T / math.sqrt(dh)
            if causal:
                s = np.where(np.tril(np.ones(s.shape, bool)), s, -np.inf)
            a = np.exp(s - s.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            out[n, :, cols] = a @ v[n, :, cols]
    return out @ p["w_o"] + p["b_o"]


def _setup(layer, seed=0, shape=(B, T, D)):
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(seed), shape, jnp.float64)
        params = randomize(params, jax.random.PRNGKey(seed + 1))
    return params, state, jnp.asarray(normal(seed + 2, shape))


@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_numpy_per_head(causal):
    # (torch.nn.MultiheadAttention agreement: benchmarks/torch_agreement.py)
    layer = fn.self_attention(HEADS, causal=causal)
    with jax.enable_x64(True):
        params, state, x = _setup(layer)
        assert {k: v.shape for k, v in params.items()} == {
            "w_qkv": (D, 3 * D), "b_qkv": (3 * D,), "w_o": (D, D), "b_o": (D,)}
        y, new_state = layer.apply(params, state, x)
    assert new_state == {} and y.dtype == jnp.float64 and y.shape == (B, T, D)
    np.testing.assert_allclose(np.asarray(y), numpy_attention(params, np.asarray(x), HEADS, causal),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec, seed", [(("self_attention", 2), 0),
                                        (("self_attention", 1, True), 1),
                                        (("positional_embedding", 6), 2)])
def test_backward_three_ways(spec, seed):
    three_way(spec, (2, 4, 4), seed)


def test_causal_outputs_ignore_later_steps_and_their_gradient_is_exactly_zero():
    layer = fn.self_attention(2, causal=True)
    with jax.enable_x64(True):
        params, state, x = _setup(layer, seed=5, shape=(1, 5, 4))
        t = 3
        x2 = x.at[:, t:].add(jnp.asarray(normal(9, (1, 2, 4))))
        y, _ = layer.apply(params, state, x)
        y2, _ = layer.apply(params, state, x2)
        np.testing.assert_array_equal(np.asarray(y[:, :t]), np.asarray(y2[:, :t]))
        assert not np.allclose(np.asarray(y[:, t:]), np.asarray(y2[:, t:]))
        # the manual backward of a gradient on the outputs before t: zero on steps >= t
        dy = jnp.zeros_like(y).at[:, :t].set(jnp.asarray(normal(11, (1, t, 4))))
        _, _, cache = layer.forward(params, state, x)
        _, dx = layer.backward(params, cache, dy)
        np.testing.assert_array_equal(np.asarray(dx[:, t:]), 0.0)
        assert np.abs(np.asarray(dx[:, :t])).min() > 0
        auto = jax.grad(lambda x: jnp.sum(layer.apply(params, state, x)[0] * dy))(x)
        np.testing.assert_array_equal(np.asarray(auto[:, t:]), 0.0)


def test_positional_embedding_adds_the_first_rows_of_its_table():
    layer = fn.positional_embedding(7)
    with jax.enable_x64(True):
        params, state, x = _setup(layer, shape=(2, 3, 4))
        assert params["w"].shape == (7, 4)
        y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) + np.asarray(params["w"])[None, :3],
                               rtol=1e-14)
    fresh, _ = fn.positional_embedding(512).init(jax.random.PRNGKey(0), (1, 8, 64))
    assert fresh["w"].dtype == jnp.float32
    np.testing.assert_allclose(float(jnp.std(fresh["w"])), 0.02, rtol=0.05)


def test_errors_name_the_layer():
    key = jax.random.PRNGKey(0)
    with pytest.raises(fn.LayerError, match=r"self_attention: num_heads=4 must divide .*dim 6"):
        fn.self_attention(4).init(key, (1, 3, 6))
    with pytest.raises(fn.LayerError, match=r"self_attention: expects rank-3 .*time axis"):
        fn.self_attention(2).init(key, (3, 6))
    with pytest.raises(fn.LayerError, match=r"self_attention: num_heads must be a positive int"):
        fn.self_attention(0)
    with pytest.raises(fn.LayerError, match=r"positional_embedding: sequence of length 9 is "
                                            r"longer than max_len=8"):
        fn.positional_embedding(8).init(key, (1, 9, 4))
    params, state = fn.positional_embedding(8).init(key, (1, 8, 4))
    with pytest.raises(fn.LayerError, match="longer than max_len=8"):
        fn.positional_embedding(8).apply(params, state, jnp.zeros((1, 10, 4)))
    with pytest.raises(fn.LayerError, match=r"layer 1 \(self_attention\): .*num_heads=5"):
        fn.serial(fn.positional_embedding(8), fn.self_attention(5)).init(key, (1, 4, 6))


def test_dropout_on_the_probabilities_three_ways_and_none_in_evaluation():
    layer = fn.self_attention(2, causal=True, dropout=0.5)
    key = jax.random.PRNGKey(7)
    with jax.enable_x64(True):
        params, state, x = _setup(layer, seed=3, shape=(2, 4, 4))
        report = fn.check_gradients(fn.serial(layer), (params,), (state,), x, train=True, key=key)
        y_eval, _ = layer.apply(params, state, x)
        plain = fn.self_attention(2, causal=True)
        np.testing.assert_array_equal(y_eval, plain.apply(params, state, x)[0])
        y1, _ = layer.apply(params, state, x, train=True, key=key)
        y2, _ = layer.apply(params, state, x, train=True, key=jax.random.PRNGKey(8))
        _, _, cache = layer.forward(params, state, x, train=True, key=key)
        with pytest.raises(fn.LayerError, match="dropout needs a PRNG key"):
            layer.apply(params, state, x, train=True)
    assert report.ok, report
    assert not np.allclose(y1, y_eval) and not np.allclose(y1, y2)
    mask = np.asarray(cache["mask"])
    assert mask.shape == (2, 2, 4, 4) and set(np.unique(mask)) <= {0.0, 2.0}
    with pytest.raises(fn.LayerError, match=r"self_attention: dropout \(the probability of "
                                            r"dropping\) must be in \[0, 1\), got 1"):
        fn.self_attention(2, dropout=1)


def test_dropout_mask_column_j_is_the_grid_masks_column_j_drawn_alone():
    # the blockwise form regenerates a block's columns this way, so both forms drop alike
    layer = fn.self_attention(2, dropout=0.25)
    key = jax.random.PRNGKey(4)
    params, state = layer.init(jax.random.PRNGKey(0), (2, 5, 4))
    forward = jax.jit(lambda x, key: layer.forward(params, state, x, train=True, key=key)[2])
    mask = np.asarray(forward(jnp.ones((2, 5, 4)), key)["mask"])
    p = 49152 / 65536  # 0.75 is exact in 16 bits
    assert fr.keep_probability(0.75, 16) == p
    column = jax.jit(lambda j: fr.grid_keep_mask(key, 0.75, (2, 2, 5, 5), j[None])[..., 0])
    for j in range(5):
        keep = column(jnp.asarray(j))
        np.testing.assert_array_equal(mask[..., j], np.asarray(keep, np.float32) / p)
