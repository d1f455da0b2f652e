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
from .attention_blockwise import (accumulation_dtype, blockwise_attention,
                                  blockwise_attention_backward, column_dropout_mask)

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


def _dot(spec, a, b, dtype):
    """einsum(spec, a, b) accumulated in float32 when `dtype` is a 16-bit float (in `dtype`
    itself otherwise), the result in the accumulation dtype."""
    return jnp.einsum(spec, a, b, preferred_element_type=accumulation_dtype(dtype))


def _project_qkv(params, x, num_heads):
    """[q | k | v] = x W_qkv + b_qkv, each split into heads, in the compute dtype."""
    dtype = jnp.result_type(x, params["w_qkv"])
    d = params["w_o"].shape[0]
    qkv = (_dot("btd,de->bte", x, params["w_qkv"], dtype) + params["b_qkv"]).astype(dtype)
    return tuple(_split_heads(qkv[..., i * d:(i + 1) * d], num_heads) for i in range(3))


def _projections_backward(params, cache, dy, dq, dk, dv):
    """The two projections' backward, from the heads' gradients (accumulation dtype):
    dW_o = Σ oᵀ dy,  db_o = Σ dy,  d[q|k|v] = the heads merged back,
    dW_qkv = Σ xᵀ d[q|k|v],  db_qkv = Σ d[q|k|v],  dx = d[q|k|v] W_qkvᵀ
    (Σ over batch and time, accumulated in float32 for 16-bit floats, cast back to each
    parameter's dtype and to x's)."""
    x, o = cache["x"], cache["o"]
    dqkv = jnp.concatenate([_merge_heads(g) for g in (dq, dk, dv)], -1)
    acc = dqkv.dtype
    grads = {"w_qkv": _dot("btd,bte->de", x, dqkv, acc), "b_qkv": jnp.sum(dqkv, (0, 1)),
             "w_o": _dot("btd,bte->de", o, dy, o.dtype), "b_o": jnp.sum(dy, (0, 1), dtype=acc)}
    dparams = {n: g.astype(params[n].dtype) for n, g in grads.items()}
    return dparams, _dot("bte,de->btd", dqkv, params["w_qkv"], acc).astype(x.dtype)


def _plain_attention(causal, rate):
    """(attend, attend_backward) of the plain form: the (T × T) probabilities A are cached."""

    def attend(q, k, v, key):
        """O = drop(A) v, A = softmax(q kᵀ/√d_h) (row max and sums in the accumulation
        dtype); the cache keeps A and the dropout mask (the whole grid at once; the
        blockwise form draws the same entries block by block)."""
        b, h, t, dh = q.shape
        s = _dot("bhqd,bhkd->bhqk", q, k, q.dtype) / math.sqrt(dh)
        if causal:
            s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        a = jax.nn.softmax(s, axis=-1)
        extras = {"a": a.astype(q.dtype)}
        if key is not None:
            extras["mask"] = column_dropout_mask(key, None, (b, h, t), 1.0 - rate, q.dtype)
            a = a * extras["mask"]
        return _dot("bhqk,bhkd->bhqd", a, v, q.dtype), extras

    def attend_backward(cache, do):
        """With Ã = A ⊙ M the probabilities after dropout (M = mask / (1 − rate); 1 in
        evaluation): dÃ = do vᵀ,  dv = Ãᵀ do,  dA = dÃ ⊙ M,
        dS = A ⊙ (dA − rowsum(dA ⊙ A))   (the Jacobian diag(s) − s sᵀ of each row s, in
        row form; masked entries have A = 0),  dq = dS k / √d_h,  dk = dSᵀ q / √d_h."""
        q, k, v = cache["q"], cache["k"], cache["v"]
        acc = do.dtype
        a, mask = cache["a"].astype(acc), cache.get("mask")
        scale = 1.0 / math.sqrt(q.shape[-1])
        da = _dot("bhqd,bhkd->bhqk", do, v, acc)
        dv = _dot("bhqk,bhqd->bhkd", a if mask is None else a * mask, do, acc)
        da = da if mask is None else da * mask
        ds = a * (da - jnp.sum(da * a, axis=-1, keepdims=True))
        return (_dot("bhqk,bhkd->bhqd", ds, k, acc) * scale,
                _dot("bhqk,bhqd->bhkd", ds, q, acc) * scale, dv)

    return attend, attend_backward


def _blockwise_attention(causal, rate, block_size):
    """(attend, attend_backward) of the blockwise form (attention_blockwise.py): the cache
    keeps only the row logsumexp L (and the dropout key), O(T) beside q, k, v and o."""

    def attend(q, k, v, key):
        keep = 1.0 if key is None else 1.0 - rate
        o, lse = blockwise_attention(q, k, v, causal=causal, block_size=block_size, keep=keep,
                                     key=key)
        return o, ({"lse": lse} if key is None else {"lse": lse, "key": key})

    def attend_backward(cache, do):
        key = cache.get("key")
        keep = 1.0 if key is None else 1.0 - rate
        q, k, v = cache["q"], cache["k"], cache["v"]
        o = _split_heads(cache["o"], q.shape[1])
        return blockwise_attention_backward(q, k, v, o, cache["lse"], do, causal=causal,
                                            block_size=block_size, keep=keep, key=key)

    return attend, attend_backward


def self_attention(num_heads: int, causal: bool = False, *, dropout: float = 0.0,
                   block_size=None, w_init=glorot_uniform) -> Layer:
    """y = concat_h(drop(softmax(q_h k_hᵀ / √d_h)) v_h) W_o + b_o, with [q | k | v] = x W_qkv +
    b_qkv (three consecutive dim-wide column blocks) and −∞ above the diagonal when `causal`.
    `drop` is inverted dropout at rate `dropout` on the attention probabilities in training
    (GPT-2's attn_dropout; a key is needed then), the identity in evaluation. Its mask's
    column j (key position j) is `_random.keep_mask(fold_in(key, j), 1 − rate, (batch, heads,
    T), bits=16)`, its kept entries scaled by 1 / p with p = round((1 − rate)·2¹⁶)/2¹⁶ the
    exact probability of keeping (column_dropout_mask).

    `block_size` (an int >= 1) runs the attention over key blocks of that size with an online
    softmax and a backward that recomputes each block (flash attention,
    attention_blockwise.py): the same outputs and gradients to round-off, dropout included,
    with a cache of O(T·dim) (x, q, k, v, o and each row's logsumexp) instead of the plain
    form's (heads · T²) probabilities and mask. Sums run in float32 for 16-bit inputs.

    Params {"w_qkv": (dim, 3·dim), "b_qkv": (3·dim,), "w_o": (dim, dim), "b_o": (dim,)};
    `num_heads` must divide dim (checked at init, when dim is known).

    Backward: dW_o = Σ oᵀ dy, db_o = Σ dy, and do = dy W_oᵀ split into heads; per head, with
    A the attention probabilities (under dropout, A ⊙ M in dv and dA masked by M):

        dv = Aᵀ do,   dA = do vᵀ,   dS = A ⊙ (dA − rowsum(dA ⊙ A))
        dq = dS k / √d_h,   dk = dSᵀ q / √d_h

    then dW_qkv = Σ xᵀ d[q | k | v], db_qkv = Σ d[q | k | v], dx = d[q | k | v] W_qkvᵀ. The
    blockwise form recomputes A block by block.

    Returns the Layer. Raises a LayerError for a num_heads or block_size that is not a
    positive int or a dropout rate outside [0, 1) (at construction), for an input that is not
    (batch, T, dim), a dim num_heads does not divide or that differs from the weights' (at
    `init` or in `forward`), and for dropout in training without a key.
    """
    num_heads = as_int(num_heads, "num_heads", "self_attention")
    rate = as_float(dropout, "dropout (the probability of dropping)", "self_attention", low=0.0,
                    high=1.0, high_open=True)
    if block_size is not None:
        block_size = as_int(block_size, "block_size", "self_attention")
    w_init = _resolve(w_init, "self_attention", "w_init")
    shape_check = _sequence_shape("self_attention")
    attend, attend_backward = (_plain_attention(causal, rate) if block_size is None
                               else _blockwise_attention(causal, rate, block_size))

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
        dropping = train and rate > 0
        check(key is not None or not dropping, "self_attention: dropout needs a PRNG key in "
              "training: pass key=... to apply/forward")
        q, k, v = _project_qkv(params, x, num_heads)
        o, extras = attend(q, k, v, key if dropping else None)
        o = _merge_heads(o).astype(q.dtype)
        y = _dot("btd,de->bte", o, params["w_o"], q.dtype) + params["b_o"]
        return y.astype(q.dtype), state, {"x": x, "q": q, "k": k, "v": v, "o": o, **extras}

    def backward(params, cache, dy):
        """do = dy W_oᵀ split into heads; the attention's backward (the plain form's or the
        blockwise one's) gives dq, dk, dv; then the projections' (_projections_backward)."""
        do = _split_heads(_dot("bte,de->btd", dy, params["w_o"], cache["o"].dtype), num_heads)
        dq, dk, dv = attend_backward(cache, do)
        return _projections_backward(params, cache, dy, dq, dk, dv)

    return Layer(init, forward, backward, "self_attention", output_shape,
                 decode=_causal_decode(num_heads) if causal else None)


def positional_embedding(max_len: int, w_init=gaussian(0.02)) -> Layer:
    """y = x + W[:T] for x of shape (batch, T, dim), T <= max_len: a learned (max_len, dim)
    table, params {"w": (max_len, dim)} (N(0, 0.02²) at init, as in GPT-2).

    Backward: dW[:T] = Σ_batch dy (rows T … max_len − 1 get 0), dx = dy.

    Returns the Layer. Raises a LayerError for a max_len that is not a positive int (at
    construction), and for an input that is not (batch, T, dim), longer than max_len, or of
    another dim than the table's (at `init` or in `forward`).
    """
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
# rules of the two time-mixing layers above (see `core.Decode`), on the forward's helpers
# (projections, sums in float32 for 16-bit floats); the tests hold every step equal to the
# forward's rows.

def _causal_decode(num_heads: int) -> Decode:
    """Causal self-attention with a key/value cache. The carry holds K and V, each (batch,
    heads, length, d_h); a chunk x at positions t … t + s − 1 writes its keys and values at
    rows t … t + s − 1, and its query at position p attends to rows ≤ p (later rows, written
    or still zero, get −∞ before the softmax, exactly as `forward`'s causal mask):

        y_p = concat_h(softmax(q_p K_hᵀ / √d_h + mask_p) V_h) W_o + b_o

    The plain form whatever `block_size` (a chunk's scores are (s × length), small when s is
    1); attention dropout is the identity (generation is evaluation)."""
    return Decode(functools.partial(_kv_buffers, num_heads), functools.partial(_attend_cached, num_heads))


def _kv_buffers(num_heads, params, x, length):
    """Zero K and V buffers (batch, heads, length, d_h) in the compute dtype."""
    d = params["w_o"].shape[0]
    shape = (x.shape[0], num_heads, length, d // num_heads)
    dtype = jnp.result_type(x, params["w_qkv"])
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def _attend_cached(num_heads, params, carry, x, t):
    """The chunk's outputs (batch, s, dim) and the buffers with its keys and values written."""
    q, k, v = _project_qkv(params, x, num_heads)                       # (b, h, s, d_h)
    keys = jax.lax.dynamic_update_slice_in_dim(carry["k"], k, t, axis=2)
    values = jax.lax.dynamic_update_slice_in_dim(carry["v"], v, t, axis=2)
    scores = _dot("bhqd,bhkd->bhqk", q, keys, q.dtype) / math.sqrt(q.shape[-1])
    seen = jnp.arange(keys.shape[2])[None, :] <= t + jnp.arange(q.shape[2])[:, None]
    a = jax.nn.softmax(jnp.where(seen, scores, -jnp.inf), axis=-1)
    o = _merge_heads(_dot("bhqk,bhkd->bhqd", a, values, q.dtype)).astype(q.dtype)
    y = _dot("btd,de->bte", o, params["w_o"], q.dtype) + params["b_o"]
    return y.astype(q.dtype), {"k": keys, "v": values}


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
