"""Autoregressive generation with a key/value cache, compiled once.

    ids = fn.models.generate(model, params, prompt, max_new_tokens, key=key,
                             temperature=1.0, top_k=None)

For a causal language model (token ids (batch, T) in, next-token logits (batch, T, vocab)
out: `fn.models.transformer`, GPT-2, or any model built from layers with a decode rule),
append `max_new_tokens` tokens to `prompt` (batch, T0), each drawn from the model's
distribution for the next position given everything before it:

    x_{t+1} ~ softmax(top_k(logits_t) / temperature)      (argmax when temperature = 0)

Nothing is recomputed. Each layer says how it runs one chunk of time steps (`Layer.decode`):
a pointwise layer runs on the chunk as it is; causal self-attention keeps its keys and
values in fixed-size buffers (batch, heads, T0 + max_new_tokens, d_h), writes the chunk's
at their positions and attends to the positions up to each query's own; the positional
table adds its rows t … . Containers are walked by `Layer.combine`.

Prefill: the prompt goes through in ONE chunk (positions 0 … T0 − 1, one pass of full
matrix products that fills the caches), not token by token: the same step rule serves both,
and a prompt of 16 costs one step's latency instead of 16. Then a `lax.scan` of
max_new_tokens − 1 single-token steps. Prefill, sampling and the scan are one jitted
program, compiled once per (model, batch, T0, max_new_tokens, greedy or not, top_k) and
reused for any params, key and temperature of those shapes; the buffers are T0 +
max_new_tokens long (not max_len), so no step attends over rows that can never be filled.

Reference: Radford et al. 2019 (GPT-2); the cache is the usual incremental decoding of
Vaswani et al. 2017's decoder (as in Hugging Face's `generate(use_cache=True)`); top-k
sampling as Fan et al. 2018 (ties with the k-th largest logit are kept, as HF's
TopKLogitsWarper does).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._validate import as_float, as_int, dtype_of
from .core import (EACH_STEP, PARALLEL, POINTWISE, Decode, Layer, LayerError, check_model_input,
                   child_trees, is_container)
from .errors import FuncnetError
from .sharing import fill_shared

__all__ = ["generate"]


def generate(model: Layer, params, prompt, max_new_tokens: int, *, key, temperature: float = 1.0,
             top_k: int | None = None, state=None):
    """Ids (batch, T0 + max_new_tokens): `prompt`'s ids unchanged, then the generated ones.

    `prompt`: integer ids (batch, T0), T0 ≥ 1, in [0, vocab_size). `key`: a PRNG key (one for
    the whole batch; the rows draw independently). `temperature` ≥ 0 divides the logits
    before sampling; 0 is greedy (the argmax, token for token what a full forward over the
    prefix picks). `top_k`: keep the k largest logits (1 ≤ k ≤ vocab_size) before sampling.
    `state`: the model's state (running statistics, ...), needed only if it has any.
    T0 + max_new_tokens must fit the model's positions (max_len), each check a FuncnetError
    or LayerError naming the argument.
    """
    where = "generate"
    if not isinstance(model, Layer):
        raise LayerError(f"{where}: model must be a Layer, got {model!r}")
    new = as_int(max_new_tokens, "max_new_tokens", where)
    temperature = as_float(temperature, "temperature", where, low=0.0)
    top_k = None if top_k is None else as_int(top_k, "top_k", where)
    ids = _prompt_ids(prompt, where)
    _check_key(key, where)
    if state is None:
        state = _stateless(model, ids.shape)
    vocab = _vocab_size(model, _spec(params), _spec(state), ids.shape, new)
    if ids.max() >= vocab:
        raise LayerError(f"{where}: prompt ids must be in [0, vocab_size={vocab}), got id "
                         f"{int(ids.max())}")
    if top_k is not None and top_k > vocab:
        raise LayerError(f"{where}: top_k must be at most vocab_size={vocab}, got {top_k}")
    check_model_input(model, params, ids, f"{where}: prompt")  # e.g. an embedding's own ids check
    return _program(params, state, ids, key, temperature, model=model, new_tokens=new,
                    greedy=temperature == 0, top_k=top_k)


def _prompt_ids(prompt, where) -> np.ndarray:
    """The prompt as int32 NumPy ids (batch, T0), checked: 2-D, integers, non-empty, ≥ 0."""
    ids = np.asarray(prompt)
    if ids.ndim != 2 or ids.size == 0:
        raise LayerError(f"{where}: prompt must be token ids of shape (batch, T0) with batch, T0 "
                         f"≥ 1, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise LayerError(f"{where}: prompt must hold integer token ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() > np.iinfo(np.int32).max:
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise LayerError(f"{where}: prompt ids must be in [0, vocab_size), got id {int(bad)}")
    return ids.astype(np.int32)


def _check_key(key, where):
    """A PRNG key: a typed key (jax.random.key) or a raw uint32 pair (jax.random.PRNGKey)."""
    dtype, shape = getattr(key, "dtype", None), tuple(getattr(key, "shape", (None,)))
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and shape == ()
    raw = dtype == np.uint32 and shape == (2,)
    if not (typed or raw):
        raise FuncnetError(f"{where}: key must be one PRNG key (jax.random.key(0) or "
                           f"jax.random.PRNGKey(0)), got {key!r}")


# ----- checks by abstract evaluation, cached per model and shapes (no compilation) -----

def _spec(tree):
    """A hashable signature of a pytree of arrays: its structure and each leaf's shape and dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(leaf)), dtype_of(leaf)) for leaf in leaves)


def _abstract(spec):
    treedef, leaves = spec
    return jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])


@functools.lru_cache(maxsize=64)
def _stateless(model, shape):
    """The model's state when it has none (its init's tree of empty containers); a model
    with state must be given it."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # abstract: making a real key compiles a program
    spec = jax.eval_shape(lambda k: model.init(k, shape)[1], key)
    if jax.tree_util.tree_leaves(spec):
        raise LayerError("generate: the model has state (e.g. batch_norm's running statistics): "
                         "pass state=... (the state its apply takes)")
    return spec


@functools.lru_cache(maxsize=64)
def _vocab_size(model, params_spec, state_spec, shape, new_tokens) -> int:
    """The logits' last axis, from an abstract run of the prompt's chunk: it also raises each
    layer's refusal (no decode rule, more positions than max_len) as a LayerError."""
    prompt = jax.ShapeDtypeStruct(shape, jnp.int32)
    length = shape[1] + new_tokens
    try:
        logits = jax.eval_shape(lambda p, s, x: _run(model, p, s, None, x, _At(0, length, True))[0],
                                _abstract(params_spec), _abstract(state_spec), prompt)
    except LayerError as e:
        raise LayerError(f"generate: {e}") from None
    if not (hasattr(logits, "shape") and len(logits.shape) == 3 and logits.shape[:2] == shape):
        raise LayerError(f"generate: the model must map ids (batch, T0) = {shape} to logits "
                         f"(batch, T0, vocab), got {logits}")
    return logits.shape[2]


# ----- one chunk of time steps through the model, by the layers' decode rules -----

class _At(NamedTuple):
    """Where a chunk sits: its first position `t` (an int or a tracer), the buffers'
    `length` (T0 + max_new_tokens), and whether it is the prompt's chunk (`start`: the
    rules make their buffers first)."""

    t: object
    length: int
    start: bool


def _rule(layer: Layer):
    """POINTWISE, a Decode, or None for a container walked by its kind; a LayerError for a
    leaf with no rule."""
    if layer.decode is not None:
        if layer.decode != POINTWISE and not isinstance(layer.decode, Decode):
            raise LayerError(f"{layer.name}: decode must be POINTWISE, a Decode or None, got "
                             f"{layer.decode!r}")
        return layer.decode
    if layer.combine == EACH_STEP:  # time folded into the batch: pointwise by construction
        return POINTWISE
    if is_container(layer):
        return None
    raise LayerError(f"{layer.name} has no decode rule (Layer.decode is None), so it cannot run "
                     f"one time step at a time: a layer that treats each step alone is marked "
                     f"decode=POINTWISE, one that mixes steps needs a Decode with a cache (causal "
                     f"self_attention has one; non-causal attention, which sees later steps, cannot)")


def _run(layer: Layer, params, state, carry, x, at: _At):
    """(y, carry) of `layer` on the chunk x (batch, s, ...) at positions at.t … at.t + s − 1;
    the carry mirrors the model's structure (a tuple per container, () for a pointwise
    leaf). LayerErrors name the path, as `serial` names it."""
    rule = _rule(layer)
    if rule == POINTWISE:
        return layer.apply(params, state, x)[0], ()
    params = fill_shared(layer, params)  # the children see every use of a shared parameter
    if rule is not None:
        return rule.step(params, rule.init(params, x, at.length) if at.start else carry, x, at.t)
    kids, branching = layer.layers, layer.combine == PARALLEL
    if branching and not (isinstance(x, (tuple, list)) and len(x) == len(kids)):
        raise LayerError(f"{layer.name} of {len(kids)} branches expects a tuple of {len(kids)} arrays")
    ps, ss = child_trees(layer, params), child_trees(layer, state)
    carries = (None,) * len(kids) if at.start else carry
    y, outs, new = x, [], []
    for i, child in enumerate(kids):
        try:
            y, c = _run(child, ps[i], ss[i], carries[i], x[i] if branching else y, at)
        except LayerError as e:
            raise e.inside(f"{'branch' if branching else 'layer'} {i} ({child.name})") from None
        outs.append(y)
        new.append(c)
    return (tuple(outs) if branching else y), tuple(new)


# ----- the program: prefill, then a scan of single-token steps, sampling each -----

def _sample(logits, key, temperature, greedy: bool, top_k):
    """The next token per row of logits (batch, vocab): the argmax when greedy, else a draw
    from softmax(logits / temperature) over the top_k largest logits (all when None)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "greedy", "top_k"))
def _program(params, state, prompt, key, temperature, *, model, new_tokens, greedy, top_k):
    """prompt (batch, T0) -> (batch, T0 + new_tokens): the prompt's chunk fills the caches and
    gives the first token; each scan step feeds the last token at its position and samples
    the next. One key per new token, split from `key`."""
    t0 = prompt.shape[1]
    length = t0 + new_tokens
    logits, carry = _run(model, params, state, None, prompt, _At(0, length, True))
    keys = jax.random.split(key, new_tokens)
    first = _sample(logits[:, -1], keys[0], temperature, greedy, top_k)

    def step(c, inputs):
        carry, token = c
        t, k = inputs
        logits, carry = _run(model, params, state, carry, token[:, None], _At(t, length, False))
        token = _sample(logits[:, -1], k, temperature, greedy, top_k)
        return (carry, token), token

    positions = t0 + jnp.arange(new_tokens - 1, dtype=jnp.int32)
    _, rest = jax.lax.scan(step, (carry, first), (positions, keys[1:]))
    return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)
