"""Attention over key blocks with an online softmax, and its hand-written backward: the
flash-attention algorithm (Dao et al. 2022, "FlashAttention"; the backward as in Dao 2023,
"FlashAttention-2", Algorithm 2), as pure functions of the heads q, k, v of shape
(batch, heads, T, d_h).

The forward keeps, per query row i, the running max mᵢ, the running sum lᵢ = Σⱼ exp(Sᵢⱼ − mᵢ)
and the running output, rescaled by exp(m_old − m_new) whenever a block raises the max; it
returns O = acc / l and the row's logsumexp L = m + log l. The backward recomputes each
block's probabilities exactly as P = exp(S − L), so neither pass holds a T × T array: a
`lax.scan` over key blocks holds one (T × block) slab at a time, and the compiled program
is the same size for any number of blocks. A block size that does not divide T pads the
keys with zeros and masks the padded columns.

Dropout on the probabilities draws its mask by columns (`column_dropout_mask`), so a block
regenerates its columns' mask from the key, and the plain form, which draws all T columns
at once, applies exactly the same mask. The draws are 16-bit (two per 32-bit word), the
kept entries scaled by the inverse of the exact, quantised probability of keeping.

Low precision: every reduction (scores, running max and sum, logsumexp, P V, the
gradients' contractions, D = rowsum(dO ⊙ O)) runs in `accumulation_dtype` (float32 for
bfloat16 / float16 inputs); the caller casts the results back.
"""
import math

import jax
import jax.numpy as jnp

from .. import _random

__all__ = ["accumulation_dtype", "column_dropout_mask", "blockwise_attention",
           "blockwise_attention_backward"]


def accumulation_dtype(dtype):
    """The dtype sums are accumulated in: float32 for 16-bit floats, else `dtype` itself."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def column_dropout_mask(key, cols, shape, keep, dtype):
    """Inverted-dropout mask for the attention columns `cols` (key positions; None: all T),
    shape (*shape, len(cols)) with shape = (batch, heads, T): `_random.grid_keep_mask` over
    the (batch, heads, T, T) grid, so a block's columns are the same entries whatever block
    they are drawn in. Its 16-bit draws keep with probability p = round(keep·2¹⁶)/2¹⁶
    (`_random.keep_probability`: 0.8999939 for keep = 0.9); kept entries are scaled by
    that exact 1/p, so the expectation stays A."""
    mask = _random.grid_keep_mask(key, keep, (*shape, shape[-1]), cols)
    return mask.astype(dtype) * (1.0 / _random.keep_probability(keep, 16))


def _to_blocks(a, block_size, num_blocks):
    """(B, H, T, d) -> (num_blocks, B, H, block_size, d), zero-padded past T."""
    b, h, t, d = a.shape
    a = jnp.pad(a, ((0, 0), (0, 0), (0, num_blocks * block_size - t), (0, 0)))
    return jnp.moveaxis(a.reshape(b, h, num_blocks, block_size, d), 2, 0)


def _from_blocks(a, t):
    """(num_blocks, B, H, block_size, d) -> (B, H, T, d), the padding cut off."""
    n, b, h, bs, d = a.shape
    return jnp.moveaxis(a, 0, 2).reshape(b, h, n * bs, d)[:, :, :t]


def _block_scores(q, k_j, cols, causal, t):
    """S = q k_jᵀ / √d_h for the key columns `cols`, −∞ at padded columns (≥ T) and, when
    causal, above the diagonal (column > row)."""
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k_j) / math.sqrt(q.shape[-1])
    valid = cols[None, :] < t
    if causal:
        valid = valid & (cols[None, :] <= jnp.arange(q.shape[2])[:, None])
    return jnp.where(valid, s, -jnp.inf)


def blockwise_attention(q, k, v, *, causal, block_size, keep=1.0, key=None):
    """(O, L): O = drop(softmax(q kᵀ/√d_h)) v over key blocks with the online softmax, and
    L = logsumexp of each row's scores, both in the accumulation dtype. Per block j:
        m' = max(m, rowmax Sⱼ),  Pⱼ = exp(Sⱼ − m'),  c = exp(m − m')
        l ← c l + rowsum Pⱼ,     acc ← c acc + (Pⱼ ⊙ Mⱼ) vⱼ,   m ← m'
    then O = acc / l, L = m + log l. `keep` < 1 applies dropout with mask M (needs `key`)."""
    acc = accumulation_dtype(q.dtype)
    q, k, v = (a.astype(acc) for a in (q, k, v))
    b, h, t, _ = q.shape
    num_blocks = -(-t // block_size)

    def step(carry, xs):
        m, l, o = carry
        j, k_j, v_j = xs
        cols = j * block_size + jnp.arange(block_size)
        s = _block_scores(q, k_j, cols, causal, t)
        m_new = jnp.maximum(m, s.max(-1))
        # a row whose columns so far are all masked has m' = −∞: shift by 0 instead (its
        # P and c are 0 either way); every row has a valid column, so the final m is finite
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p, c = jnp.exp(s - shift[..., None]), jnp.exp(m - shift)
        l = c * l + p.sum(-1)
        if keep < 1.0:
            p = p * column_dropout_mask(key, cols, (b, h, t), keep, acc)
        o = c[..., None] * o + jnp.einsum("bhqk,bhkd->bhqd", p, v_j)
        return (m_new, l, o), None

    init = (jnp.full((b, h, t), -jnp.inf, acc), jnp.zeros((b, h, t), acc), jnp.zeros_like(q))
    blocks = (jnp.arange(num_blocks), _to_blocks(k, block_size, num_blocks),
              _to_blocks(v, block_size, num_blocks))
    (m, l, o), _ = jax.lax.scan(step, init, blocks)
    return o / l[..., None], m + jnp.log(l)


def blockwise_attention_backward(q, k, v, o, lse, do, *, causal, block_size, keep=1.0, key=None):
    """(dq, dk, dv) in the accumulation dtype, from the heads, the output O, its row
    logsumexp L and dO, one key block at a time (FlashAttention-2's backward):
        D = rowsum(dO ⊙ O)                 (= rowsum(dA ⊙ A), with or without dropout)
        Pⱼ = exp(Sⱼ − L)                   (the block's probabilities, recomputed)
        dvⱼ = (Pⱼ ⊙ Mⱼ)ᵀ dO,  dPⱼ = (dO vⱼᵀ) ⊙ Mⱼ,  dSⱼ = Pⱼ ⊙ (dPⱼ − D)
        dq += dSⱼ kⱼ / √d_h,  dkⱼ = dSⱼᵀ q / √d_h
    with the dropout mask Mⱼ regenerated from `key` (Mⱼ = 1 when keep = 1)."""
    acc = accumulation_dtype(q.dtype)
    q, k, v, o, do = (a.astype(acc) for a in (q, k, v, o, do))
    lse = lse.astype(acc)
    b, h, t, _ = q.shape
    num_blocks = -(-t // block_size)
    scale = 1.0 / math.sqrt(q.shape[-1])
    d = jnp.sum(do * o, -1)

    def step(dq, xs):
        j, k_j, v_j = xs
        cols = j * block_size + jnp.arange(block_size)
        p = jnp.exp(_block_scores(q, k_j, cols, causal, t) - lse[..., None])
        dp = jnp.einsum("bhqd,bhkd->bhqk", do, v_j)
        p_kept = p
        if keep < 1.0:
            mask = column_dropout_mask(key, cols, (b, h, t), keep, acc)
            p_kept, dp = p * mask, dp * mask
        dv_j = jnp.einsum("bhqk,bhqd->bhkd", p_kept, do)
        ds = p * (dp - d[..., None])
        dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds, k_j) * scale
        dk_j = jnp.einsum("bhqk,bhqd->bhkd", ds, q) * scale
        return dq, (dk_j, dv_j)

    blocks = (jnp.arange(num_blocks), _to_blocks(k, block_size, num_blocks),
              _to_blocks(v, block_size, num_blocks))
    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros_like(q), blocks)
    return dq, _from_blocks(dk, t), _from_blocks(dv, t)
