"""Multi-head self-attention and a learned positional embedding over (batch, time, dim).

self_attention is torch.nn.MultiheadAttention(dim, num_heads, batch_first=True) with
in_proj_weight = W_qkvᵀ, in_proj_bias = b_qkv, out_proj.weight = W_oᵀ, out_proj.bias = b_o.
"""
import functools
import math

import jax
import jax.numpy as jnp

from .. import _random
from .._validate import as_float, as_int, check, float_dtype, nonempty_shape
from ..core import Decode, Layer, LayerError
from ..initializers import _resolve, gaussian, glorot_uniform, zeros

__all__ = ["self_attention", "positional_embedding"]


def _sequence_shape(name):
    def output_shape(shape):
        hint = "; add a time axis, e.g. x[:, None, :] for one step" if len(shape) == 2 else ""
        check(len(shape) == 3, f"{name}: expects rank-3 input (batch, time, dim), "
              f"got shape {tuple(shape)}{hint}")
        return tuple(shape)
    return output_shape


def _split_heads(a, num_heads):
    """(batch, time, dim) -> (batch, heads, time, d_h): head h takes columns h·d_h …"""
    b, t, d = a.shape
    return a.reshape(b, t, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def _merge_heads(a):
    """(batch, heads, time, d_h) -> (batch, time, dim), heads concatenated in order."""
    b, n, t, dh = a.shape
    return a.transpose(0, 2, 1, 3).reshape(b, t, n * dh)


def self_attention(num_heads: int, causal: bool = False, *, dropout: float = 0.0,
                   w_init=glorot_uniform) -> Layer:
    """y = concat_h(drop(softmax(q_h k_hᵀ / √d_h)) v_h) W_o + b_o, with [q | k | v] = x W_qkv +
    b_qkv (three consecutive dim-wide column blocks) and −∞ above the diagonal when `causal`.
    `drop` is inverted dropout at rate `dropout` on the attention probabilities in training
    (GPT-2's attn_dropout; a key is needed then), the identity in evaluation.

    Params {"w_qkv": (dim, 3·dim), "b_qkv": (3·dim,), "w_o": (dim, dim), "b_o": (dim,)};
    `num_heads` must divide dim (checked at init, when dim is known).
    """
    num_heads = as_int(num_heads, "num_heads", "self_attention")
    rate = as_float(dropout, "dropout (the probability of dropping)", "self_attention", low=0.0,
                    high=1.0, high_open=True)
    w_init = _resolve(w_init, "self_attention", "w_init")
    shape_check = _sequence_shape("self_attention")

    def output_shape(shape):
        shape = shape_check(shape)
        check(shape[2] % num_heads == 0, f"self_attention: num_heads={num_heads} must divide "
              f"the input's dim, got shape {shape} (dim {shape[2]})")
        return shape

    def init(key, input_shape, dtype=None):
        input_shape = output_shape(nonempty_shape(input_shape, "self_attention"))
        d, dtype = input_shape[2], float_dtype(dtype)
        k1, k2 = _random.split(key)
        return {"w_qkv": w_init(k1, (d, 3 * d), dtype), "b_qkv": zeros(None, (3 * d,), dtype),
                "w_o": w_init(k2, (d, d), dtype), "b_o": zeros(None, (d,), dtype)}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        d = params["w_o"].shape[0]
        check(x.shape[2] == d, f"self_attention: expects dim {d} (w_o is {(d, d)}), got input "
              f"of shape {tuple(x.shape)}")
        qkv = x @ params["w_qkv"] + params["b_qkv"]
        q, k, v = (_split_heads(qkv[..., i * d:(i + 1) * d], num_heads) for i in range(3))
        scores = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(d // num_heads)
        if causal:
            t = x.shape[1]
            scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
        a = jax.nn.softmax(scores, axis=-1)
        cache = {"x": x, "q": q, "k": k, "v": v, "a": a}
        if train and rate > 0:
            check(key is not None, "self_attention: dropout needs a PRNG key in training: pass "
                  "key=... to apply/forward")
            cache["mask"] = _random.bernoulli(key, 1.0 - rate, a.shape).astype(a.dtype) / (1.0 - rate)
        o = _merge_heads((a * cache["mask"] if "mask" in cache else a) @ v)
        cache["o"] = o
        return o @ params["w_o"] + params["b_o"], state, cache

    def backward(params, cache, dy):
        """With o the concatenated heads, S = q kᵀ/√d_h, A = softmax(S) row by row and
        Ã = A ⊙ M the probabilities after dropout (M = mask / (1 − rate); M = 1 in evaluation):
          dW_o = Σ oᵀ dy,  db_o = Σ dy,  do = dy W_oᵀ (split into heads)
          dÃ = do vᵀ,  dv = Ãᵀ do,  dA = dÃ ⊙ M
          dS = A ⊙ (dA − rowsum(dA ⊙ A))    (the Jacobian diag(s) − s sᵀ of each row s,
                                             in row form; masked entries have A = 0)
          dq = dS k / √d_h,  dk = dSᵀ q / √d_h
          d[q|k|v] merged back; dW_qkv = Σ xᵀ d[q|k|v], db_qkv = Σ d[q|k|v],
          dx = d[q|k|v] W_qkvᵀ."""
        x, q, k, v, a, o = (cache[n] for n in ("x", "q", "k", "v", "a", "o"))
        scale = 1.0 / math.sqrt(q.shape[-1])
        mask = cache.get("mask")
        do = _split_heads(dy @ params["w_o"].T, num_heads)
        da = do @ jnp.swapaxes(v, -1, -2)
        dv = jnp.swapaxes(a if mask is None else a * mask, -1, -2) @ do
        da = da if mask is None else da * mask
        ds = a * (da - jnp.sum(da * a, axis=-1, keepdims=True))
        dq, dk = ds @ k * scale, jnp.swapaxes(ds, -1, -2) @ q * scale
        dqkv = jnp.concatenate([_merge_heads(g) for g in (dq, dk, dv)], -1)
        dparams = {"w_qkv": jnp.einsum("btd,bte->de", x, dqkv), "b_qkv": dqkv.sum((0, 1)),
                   "w_o": jnp.einsum("btd,bte->de", o, dy), "b_o": dy.sum((0, 1))}
        return dparams, dqkv @ params["w_qkv"].T

    return Layer(init, forward, backward, "self_attention", output_shape,
                 decode=_causal_decode(num_heads) if causal else None)


def positional_embedding(max_len: int, w_init=gaussian(0.02)) -> Layer:
    """y = x + W[:T] for x of shape (batch, T, dim), T <= max_len: a learned (max_len, dim)
    table, params {"w": (max_len, dim)} (N(0, 0.02²) at init, as in GPT-2)."""
    max_len = as_int(max_len, "max_len", "positional_embedding")
    w_init = _resolve(w_init, "positional_embedding", "w_init")
    shape_check = _sequence_shape("positional_embedding")

    def output_shape(shape):
        shape = shape_check(shape)
        check(shape[1] <= max_len, f"positional_embedding: sequence of length {shape[1]} is "
              f"longer than max_len={max_len} (input shape {shape})")
        return shape

    def init(key, input_shape, dtype=None):
        input_shape = output_shape(nonempty_shape(input_shape, "positional_embedding"))
        return {"w": w_init(key, (max_len, input_shape[2]), float_dtype(dtype))}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        d = params["w"].shape[1]
        check(x.shape[2] == d, f"positional_embedding: expects dim {d} (w is "
              f"{tuple(params['w'].shape)}), got input of shape {tuple(x.shape)}")
        return x + params["w"][:x.shape[1]], state, {}

    def backward(params, cache, dy):
        """dW[:T] = Σ_batch dy (rows T … max_len − 1 unused: zero),  dx = dy."""
        dw = jnp.zeros_like(params["w"]).at[:dy.shape[1]].set(dy.sum(0).astype(params["w"].dtype))
        return {"w": dw}, dy

    return Layer(init, forward, backward, "positional_embedding", output_shape, decode=_POSITIONS)


# Generation (fn.models.generate) runs a model one chunk of time steps at a time: the decode
# rules of the two time-mixing layers above (see `core.Decode`). They read the layers' params
# only, written out here in full rather than through the forward's helpers, so the forward
# can change how it computes; the tests hold every step equal to the forward's rows.

def _causal_decode(num_heads: int) -> Decode:
    """Causal self-attention with a key/value cache. The carry holds K and V, each (batch,
    heads, length, d_h); a chunk x at positions t … t + s − 1 writes its keys and values at
    rows t … t + s − 1, and its query at position p attends to rows ≤ p (later rows, written
    or still zero, get −∞ before the softmax, exactly as `forward`'s causal mask):

        y_p = concat_h(softmax(q_p K_hᵀ / √d_h + mask_p) V_h) W_o + b_o

    Attention dropout is the identity (generation is evaluation)."""
    return Decode(functools.partial(_kv_buffers, num_heads), functools.partial(_attend_cached, num_heads))


def _kv_buffers(num_heads, params, x, length):
    """Zero K and V buffers (batch, heads, length, d_h) in the dtype x W_qkv has."""
    d = params["w_o"].shape[0]
    dtype = jnp.result_type(x.dtype, params["w_qkv"].dtype)
    shape = (x.shape[0], num_heads, length, d // num_heads)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _attend_cached(num_heads, params, carry, x, t):
    """The chunk's outputs (batch, s, dim) and the buffers with its keys and values written."""
    (b, s, d), dh = x.shape, x.shape[2] // num_heads
    qkv = x @ params["w_qkv"] + params["b_qkv"]
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, s, num_heads, dh).transpose(0, 2, 1, 3)
               for i in range(3))
    keys = jax.lax.dynamic_update_slice_in_dim(carry["k"], k.astype(carry["k"].dtype), t, axis=2)
    values = jax.lax.dynamic_update_slice_in_dim(carry["v"], v.astype(carry["v"].dtype), t, axis=2)
    scores = q @ jnp.swapaxes(keys, -1, -2) / math.sqrt(dh)             # (b, h, s, length)
    seen = jnp.arange(keys.shape[2])[None, :] <= t + jnp.arange(s)[:, None]
    a = jax.nn.softmax(jnp.where(seen, scores, -jnp.inf), axis=-1)
    o = (a @ values).transpose(0, 2, 1, 3).reshape(b, s, d)
    return o @ params["w_o"] + params["b_o"], {"k": keys, "v": values}


def _positions_fit(params, x, length):
    """No carry; refuses a generation longer than the table (max_len rows)."""
    rows = params["w"].shape[0]
    if length > rows:
        raise LayerError(f"positional_embedding: T0 + max_new_tokens = {length} positions do not "
                         f"fit its table of max_len={rows} rows; shorten the prompt or max_new_tokens")
    return ()


def _add_positions(params, carry, x, t):
    """y = x + W[t : t + s] for a chunk of s steps starting at position t."""
    return x + jax.lax.dynamic_slice_in_dim(params["w"], t, x.shape[1], axis=0), carry


_POSITIONS = Decode(_positions_fit, _add_positions)  # positional_embedding's decode rule
