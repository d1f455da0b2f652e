"""Recurrent layers over (batch, time, features): a vanilla RNN and an LSTM.

Forward runs the time steps in a `lax.scan` (compile time does not grow with the sequence
length); backward is backpropagation through time written out by hand, a reverse
`lax.scan` whose carry is the gradient flowing from step t+1 back into step t. The input
projection x_t W_x + b of every step is one matmul before the scan, and the parameter
gradients are one matmul each after it: only the recurrence itself is sequential.

With bfloat16 / float16 arrays the reverse scan runs in float32 (its carry, the gradient
flowing back through time, would otherwise be rounded at every step) and the parameter
gradients accumulate their sums over batch and time in float32 (ops.einsum, ops.total).
"""
import jax
import jax.numpy as jnp
from jax import lax

from .. import _random
from .._validate import as_int, check, float_dtype, nonempty_shape
from ..core import Layer
from ..initializers import _resolve, lecun_normal, zeros
from ..ops import einsum, matmul, narrow, total, widen

__all__ = ["rnn", "lstm"]


def _shape_check(name, hidden, return_sequences):
    def output_shape(shape):
        hint = "; add a time axis, e.g. x[:, None, :] for one step" if len(shape) == 2 else ""
        check(len(shape) == 3, f"{name}: expects rank-3 input (batch, time, features), "
              f"got shape {tuple(shape)}{hint}")
        return (shape[0], shape[1], hidden) if return_sequences else (shape[0], hidden)
    return output_shape


def _recurrent_init(name, hidden, width, output_shape, w_init):
    """Params {"w_x": (d, width), "w_h": (hidden, width), "b": (width,)}."""
    def init(key, input_shape, dtype=None):
        input_shape = nonempty_shape(input_shape, name)
        output_shape(input_shape)
        kx, kh = _random.split(key)
        dtype = float_dtype(dtype)
        return {"w_x": w_init(kx, (input_shape[2], width), dtype),
                "w_h": w_init(kh, (hidden, width), dtype),
                "b": zeros(None, (width,), dtype)}, {}
    return init


def _input_projection(name, params, x, output_shape):
    """x_t W_x + b for every step at once, time-major: (time, batch, width)."""
    output_shape(tuple(x.shape))
    d = params["w_x"].shape[0]
    check(x.shape[2] == d, f"{name}: expects {d} input features (w_x is "
          f"{tuple(params['w_x'].shape)}), got input of shape {tuple(x.shape)}")
    return jnp.swapaxes(matmul(x, params["w_x"]) + params["b"], 0, 1)


def _output_grad(dy, cache, return_sequences):
    """∂L/∂h_t from the layer's output, time-major (zero before the last step when only
    the last h is returned)."""
    if return_sequences:
        return jnp.swapaxes(dy, 0, 1)
    T = cache["hs"].shape[0]
    return jnp.zeros((T,) + dy.shape, dy.dtype).at[-1].set(dy)


def _param_grads(params, cache, da):
    """With da_t = ∂L/∂a_t for a_t = x_t W_x + h_{t−1} W_h + b (time-major):
    dW_x = Σ_t x_tᵀ da_t,  dW_h = Σ_t h_{t−1}ᵀ da_t,  db = Σ_t Σ_batch da_t,
    dx_t = da_t W_xᵀ. A float32 da from a narrow scan is cast back to the cache's dtype
    first: the products take narrow operands and accumulate in float32."""
    x, hs = cache["x"], cache["hs"]
    da = narrow(da, hs.dtype)
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]], 0)
    dparams = {"w_x": einsum("btd,tbk->dk", x, da),
               "w_h": einsum("tbh,tbk->hk", h_prev, da),
               "b": total(da, (0, 1))}
    return dparams, einsum("tbk,dk->btd", da, params["w_x"])


def rnn(hidden: int, return_sequences: bool = True, w_init=lecun_normal) -> Layer:
    """Elman RNN: h_t = tanh(x_t W_x + h_{t−1} W_h + b), h_0 = 0.

    Params {"w_x": (d, hidden), "w_h": (hidden, hidden), "b": (hidden,)}. Output
    (batch, time, hidden), or the last h, (batch, hidden), with return_sequences=False.

    Backward (BPTT), for t = T … 1, a reverse scan carrying the gradient from step t+1:

        ∂L/∂h_t = dy_t + da_{t+1} W_hᵀ,   da_t = ∂L/∂h_t ⊙ (1 − h_t²)
        dW_x = Σ_t x_tᵀ da_t,   dW_h = Σ_t h_{t−1}ᵀ da_t,   db = Σ_t da_t,   dx_t = da_t W_xᵀ

    Returns the Layer. Raises a LayerError for a hidden size that is not a positive int (at
    construction) and for an input that is not (batch, time, features) (at `init` or in
    `forward`).
    """
    hidden = as_int(hidden, "hidden", "rnn")
    w_init = _resolve(w_init, "rnn", "w_init")
    output_shape = _shape_check("rnn", hidden, return_sequences)

    def forward(params, state, x, *, train=False, key=None):
        xw = _input_projection("rnn", params, x, output_shape)

        def step(h, xw_t):
            h = jnp.tanh(xw_t + matmul(h, params["w_h"]))
            return h, h

        _, hs = lax.scan(step, jnp.zeros(xw.shape[1:], xw.dtype), xw)
        y = jnp.swapaxes(hs, 0, 1) if return_sequences else hs[-1]
        return y, state, {"x": x, "hs": hs}

    def backward(params, cache, dy):
        """BPTT, for t = T … 1 (a reverse scan whose carry is the gradient from step t+1):
          ∂L/∂h_t = dy_t + da_{t+1} W_hᵀ     (output gradient + gradient from step t+1)
          da_t    = ∂L/∂h_t ⊙ (1 − h_t²)     (tanh' = 1 − tanh²)
        then dW_x = Σ_t x_tᵀ da_t, dW_h = Σ_t h_{t−1}ᵀ da_t, db = Σ da_t, dx_t = da_t W_xᵀ."""
        hs, w_h = widen(cache["hs"], params["w_h"])  # the scan in float32 if narrow

        def step(dh_next, inputs):
            dy_t, h_t = inputs
            da = (dy_t + dh_next) * (1 - h_t ** 2)
            return da @ w_h.T, da

        dh0 = jnp.zeros(hs.shape[1:], hs.dtype)
        dys = widen(_output_grad(dy, cache, return_sequences))
        _, da = lax.scan(step, dh0, (dys, hs), reverse=True)
        return _param_grads(params, cache, da)

    init = _recurrent_init("rnn", hidden, hidden, output_shape, w_init)
    return Layer(init, forward, backward, "rnn", output_shape)


def lstm(hidden: int, return_sequences: bool = True, w_init=lecun_normal) -> Layer:
    """LSTM (cs231n's gate order): a = x_t W_x + h_{t−1} W_h + b split into four blocks
    of `hidden` columns i, f, o, g; i, f, o = σ(·), g = tanh(·);
    c_t = f ⊙ c_{t−1} + i ⊙ g,  h_t = o ⊙ tanh(c_t),  h_0 = c_0 = 0.

    Params {"w_x": (d, 4·hidden), "w_h": (hidden, 4·hidden), "b": (4·hidden,)}; output as
    for `rnn`.

    Backward (BPTT), for t = T … 1, carrying ∂L/∂h and ∂L/∂c from step t+1:

        ∂L/∂h_t = dy_t + da_{t+1} W_hᵀ
        ∂L/∂c_t = ∂L/∂c_{t+1} ⊙ f_{t+1} + ∂L/∂h_t ⊙ o ⊙ (1 − tanh²(c_t))
        δo = ∂L/∂h_t ⊙ tanh(c_t),  δi = ∂L/∂c_t ⊙ g,  δf = ∂L/∂c_t ⊙ c_{t−1},  δg = ∂L/∂c_t ⊙ i
        da_t = [δi ⊙ i(1−i), δf ⊙ f(1−f), δo ⊙ o(1−o), δg ⊙ (1 − g²)]

    then dW_x, dW_h, db and dx from da_t as for `rnn`.

    Returns the Layer. Raises a LayerError for a hidden size that is not a positive int (at
    construction) and for an input that is not (batch, time, features) (at `init` or in
    `forward`).
    """
    hidden = as_int(hidden, "hidden", "lstm")
    w_init = _resolve(w_init, "lstm", "w_init")
    output_shape = _shape_check("lstm", hidden, return_sequences)
    H = hidden

    def forward(params, state, x, *, train=False, key=None):
        xw = _input_projection("lstm", params, x, output_shape)

        def step(carry, xw_t):
            h, c = carry
            a = xw_t + matmul(h, params["w_h"])
            ifo, g = jax.nn.sigmoid(a[:, :3 * H]), jnp.tanh(a[:, 3 * H:])
            c = ifo[:, H:2 * H] * c + ifo[:, :H] * g
            h = ifo[:, 2 * H:] * jnp.tanh(c)
            return (h, c), (h, c, jnp.concatenate([ifo, g], 1))

        zero = jnp.zeros((xw.shape[1], H), xw.dtype)
        _, (hs, cs, gates) = lax.scan(step, (zero, zero), xw)
        y = jnp.swapaxes(hs, 0, 1) if return_sequences else hs[-1]
        return y, state, {"x": x, "hs": hs, "cs": cs, "gates": gates}

    def backward(params, cache, dy):
        """BPTT, for t = T … 1 (a reverse scan carrying ∂L/∂h and ∂L/∂c from step t+1):
          ∂L/∂h_t = dy_t + da_{t+1} W_hᵀ                    (output + step t+1)
          ∂L/∂c_t = ∂L/∂c from t+1 (= δc_{t+1} ⊙ f_{t+1}) + ∂L/∂h_t ⊙ o ⊙ (1 − tanh²(c_t))
          δo = ∂L/∂h_t ⊙ tanh(c_t),  δi = ∂L/∂c_t ⊙ g,  δf = ∂L/∂c_t ⊙ c_{t−1},
          δg = ∂L/∂c_t ⊙ i
          da_t = [δi ⊙ i(1−i), δf ⊙ f(1−f), δo ⊙ o(1−o), δg ⊙ (1 − g²)]   (σ' = σ(1−σ))
          ∂L/∂c_{t−1} = ∂L/∂c_t ⊙ f
        then dW_x, dW_h, db and dx from da_t as for `rnn`."""
        cs, gates, w_h = widen(cache["cs"], cache["gates"], params["w_h"])  # float32 if narrow
        c_prev = jnp.concatenate([jnp.zeros_like(cs[:1]), cs[:-1]], 0)
        i, f, o, g = (gates[..., k * H:(k + 1) * H] for k in range(4))
        tc = jnp.tanh(cs)
        # Everything but the recurrence is computed for all steps at once, outside the
        # scan: da_t = [δc, δc, δh, δc] ⊙ coef_t, and δc_t gains δh_t ⊙ o(1 − tanh²(c_t)).
        coef = jnp.concatenate([g * i * (1 - i), c_prev * f * (1 - f), tc * o * (1 - o),
                                i * (1 - g ** 2)], -1)
        h_to_c = o * (1 - tc ** 2)
        w_h_t = w_h.T

        def step(carry, inputs):
            dh_next, dc_next = carry
            dy_t, h_to_c_t, f_t, coef_t = inputs
            dh = dy_t + dh_next
            dc = dc_next + dh * h_to_c_t
            da = jnp.concatenate([dc, dc, dh, dc], 1) * coef_t
            return (da @ w_h_t, dc * f_t), da

        zero = jnp.zeros(cs.shape[1:], cs.dtype)
        inputs = (widen(_output_grad(dy, cache, return_sequences)), h_to_c, f, coef)
        _, da = lax.scan(step, (zero, zero), inputs, reverse=True)
        return _param_grads(params, cache, da)

    init = _recurrent_init("lstm", hidden, 4 * hidden, output_shape, w_init)
    return Layer(init, forward, backward, "lstm", output_shape)
