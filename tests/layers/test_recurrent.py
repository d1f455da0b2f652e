"""rnn and lstm: forward against a NumPy per-step loop and torch.nn.RNN / LSTM, backward
(hand BPTT) three ways in float64, a wrong BPTT caught, errors naming the layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from tests.layers.three_way import randomize, three_way
from tests.reference import normal

B, T, D, H = 2, 4, 3, 5


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def numpy_rnn(p, x):
    h, out = np.zeros((x.shape[0], p["w_h"].shape[0])), []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ p["w_x"] + h @ p["w_h"] + p["b"])
        out.append(h)
    return np.stack(out, 1)


def numpy_lstm(p, x):
    n = p["w_h"].shape[0]
    h, c, out = np.zeros((x.shape[0], n)), np.zeros((x.shape[0], n)), []
    for t in range(x.shape[1]):
        a = x[:, t] @ p["w_x"] + h @ p["w_h"] + p["b"]
        i, f, o = _sigmoid(a[:, :n]), _sigmoid(a[:, n:2 * n]), _sigmoid(a[:, 2 * n:3 * n])
        g = np.tanh(a[:, 3 * n:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, 1)


def _setup(layer, seed=0, shape=(B, T, D)):
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(seed), shape, jnp.float64)
        params = randomize(params, jax.random.PRNGKey(seed + 1))
    return params, state, jnp.asarray(normal(seed + 2, shape))


@pytest.mark.parametrize("name, reference", [("rnn", numpy_rnn), ("lstm", numpy_lstm)])
def test_forward_matches_a_numpy_loop_over_time_steps(name, reference):
    width = H if name == "rnn" else 4 * H
    with jax.enable_x64(True):
        params, state, x = _setup(getattr(fn, name)(H))
        assert {k: v.shape for k, v in params.items()} == {
            "w_x": (D, width), "w_h": (H, width), "b": (width,)}
        assert all(v.dtype == jnp.float64 for v in params.values())
        expected = reference({k: np.asarray(v) for k, v in params.items()}, np.asarray(x))
        y, new_state = getattr(fn, name)(H).apply(params, state, x)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
        last, _ = getattr(fn, name)(H, return_sequences=False).apply(params, state, x)
        np.testing.assert_allclose(np.asarray(last), expected[:, -1], rtol=1e-12, atol=1e-12)
        assert new_state == {} and y.shape == (B, T, H) and last.shape == (B, H)
        assert fn.serial(getattr(fn, name)(H, False)).output_shape((B, T, D)) == (B, H)


@pytest.mark.parametrize("spec, seed", [(("rnn", 3), 0), (("lstm", 2, False), 1)])
def test_bptt_three_ways(spec, seed):
    # return_sequences=True for the lstm and False for the rnn are checked three ways
    # (by check_gradients) in the test below, inside a model
    three_way(spec, (2, 5, 3), seed)


def _truncated(layer):
    """A wrong BPTT: backward with W_h zeroed drops the h_{t+1} → h_t term (da_{t+1} W_hᵀ)
    and the c_{t+1} path stays, so only the recurrence through h is cut."""
    def backward(params, cache, dy):
        return layer.backward({**params, "w_h": jnp.zeros_like(params["w_h"])}, cache, dy)
    return layer._replace(backward=backward)


@pytest.mark.parametrize("name, sequences", [("rnn", False), ("lstm", True)])
def test_check_gradients_passes_bptt_and_fails_without_the_recurrent_term(name, sequences):
    def model(cell):
        return fn.serial(cell, fn.flatten, fn.dense(4)) if sequences else fn.serial(cell, fn.dense(4))
    layer = getattr(fn, name)(3, sequences)
    with jax.enable_x64(True):
        params, state, x = _setup(model(layer), seed=3, shape=(2, 4, 2))
        labels, ce = jnp.array([1, 3]), fn.losses.softmax_cross_entropy
        assert fn.check_gradients(model(layer), params, state, x, labels, ce).ok
        bad = fn.check_gradients(model(_truncated(layer)), params, state, x, labels, ce)
        assert not bad.ok


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_rank_2_input_says_to_add_a_time_axis(name):
    with pytest.raises(fn.LayerError, match=rf"{name}: expects rank-3 input .*\(4, 3\).*time axis"):
        getattr(fn, name)(5).init(jax.random.PRNGKey(0), (4, 3))
    params, state = getattr(fn, name)(5).init(jax.random.PRNGKey(0), (4, 2, 3))
    with pytest.raises(fn.LayerError, match=rf"{name}: expects 3 input features"):
        getattr(fn, name)(5).apply(params, state, jnp.zeros((4, 2, 6)))


@pytest.mark.parametrize("name", ["rnn", "lstm"])
@pytest.mark.parametrize("hidden", [0, -2, 1.5, None])
def test_bad_hidden_fails_at_construction(name, hidden):
    with pytest.raises(fn.LayerError, match=rf"{name}: hidden must be a positive int, got"):
        getattr(fn, name)(hidden)


def test_numpy_int_hidden_and_float32_default():
    params, _ = fn.lstm(np.int64(4)).init(jax.random.PRNGKey(0), (1, 2, 3))
    assert params["w_h"].shape == (4, 16) and params["w_x"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(params["b"]), np.zeros(16))
