"""funcnet/generate.py: incremental decoding with a key/value cache equals the full forward
(greedy, token for token; each chunk's logits, row for row), one compiled program reused
across keys and temperatures, sampling by the key, top_k and temperature, and every bad input
named. Tiny models; params drawn in NumPy from the init's shapes (wide enough that the
tokens vary), so nothing compiles but the programs under test."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import generate as gen
from funcnet.core import POINTWISE, Layer

VOCAB, MAX_LEN, DIM, HEADS, DEPTH = 13, 12, 8, 2, 2
KEY = jax.random.PRNGKey(0)
PROMPT = np.array([[1, 2, 3], [4, 5, 6]])


def random_params(model, shape, dtype, scale=1.0, seed=0):
    """Params of `model`'s init shapes, N(0, scale²) in NumPy (None where `fn.share` puts it)."""
    params, state = jax.eval_shape(lambda k: model.init(k, shape, dtype), KEY)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: scale * rng.standard_normal(s.shape).astype(s.dtype),
                                  params), state


def tied_gpt2(vocab=VOCAB, max_len=MAX_LEN, dim=DIM, heads=HEADS, depth=DEPTH):
    """fn.models.gpt2: the head tied to the token table by fn.share, dropout at its four places."""
    return fn.models.gpt2(vocab, max_len, dim, heads, depth, dropout=0.1)


def full_forward_argmax(model, params, state, ids):
    """The argmax of the full forward over each prefix ids[:, :i], i = T0 … T − 1: the
    forward's rows i − 1 over all of ids, the same numbers as over the prefix alone since
    the model is causal (tests/test_models.py holds that exactly), in one compilation where
    a forward per length costs one each."""
    forward = jax.jit(lambda p, x: model.apply(p, state, x)[0])
    return np.argmax(np.asarray(forward(params, ids))[:, PROMPT.shape[1] - 1:-1], -1)


@pytest.mark.parametrize("build, seed", [
    (lambda: fn.models.transformer(VOCAB, MAX_LEN, DIM, HEADS, DEPTH), 0), (tied_gpt2, 4)],
    ids=["transformer", "gpt2"])
def test_greedy_is_the_full_forward_argmax_at_every_step(build, seed):
    """(A tied head favours the token just seen: most random draws repeat one token; seed 4
    is one whose greedy tokens vary, so the comparison means something.)"""
    model = build()
    with jax.enable_x64(True):
        params, state = random_params(model, (1, MAX_LEN), jnp.float64, seed=seed)
        ids = np.asarray(fn.models.generate(model, params, PROMPT, 8, key=KEY, temperature=0))
        want = full_forward_argmax(model, params, state, ids)
    assert ids.shape == (2, 11) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[:, :3], PROMPT)      # the prompt, unchanged, in front
    np.testing.assert_array_equal(ids[:, 3:], want)
    assert len(set(ids[:, 3:].ravel())) > 1 and (ids[0, 3:] != ids[1, 3:]).any()  # not constant


def blockwise():
    """A one-block causal model whose attention runs by key blocks (flash attention)."""
    return fn.serial(fn.embedding(VOCAB, DIM), fn.positional_embedding(MAX_LEN),
                     fn.residual(fn.layer_norm(), fn.self_attention(HEADS, causal=True, block_size=2)),
                     fn.layer_norm(), fn.time_distributed(fn.dense(VOCAB)))


@pytest.mark.parametrize("build", [tied_gpt2, blockwise], ids=["gpt2", "blockwise"])
def test_each_chunk_equals_the_forward_rows(build):
    """Prefill 2 positions, then a chunk of 3 and one of 1: the carried caches give each
    chunk's logits, row for row, as the full forward over 6 ids (float64, 1e-12). The
    tied model holds None for its head, filled from the token table while walking."""
    model = build()
    ids = np.array([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8]], np.int32)
    with jax.enable_x64(True):
        params, state = random_params(model, (1, MAX_LEN), jnp.float64)
        assert build is blockwise or params[-1]["w"] is None

        @jax.jit
        def chunks_and_forward(params, ids):
            y, carry = gen._run(model, params, state, None, ids[:, :2], gen._At(0, 6, True))
            got = [y]
            for t, s in ((2, 3), (5, 1)):
                y, carry = gen._run(model, params, state, carry, ids[:, t:t + s], gen._At(t, 6, False))
                got.append(y)
            return jnp.concatenate(got, 1), model.apply(params, state, ids)[0]

        got, want = chunks_and_forward(params, ids)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def count_compiles(fn_):
    """How many XLA programs fn_() compiles."""
    events = []

    def listen(name, _duration, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn_()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(events)


def test_the_program_compiles_once_and_is_reused_for_other_keys_and_temperatures():
    model = fn.models.transformer(VOCAB, MAX_LEN, DIM, HEADS, 1)
    params, _ = random_params(model, (1, MAX_LEN), jnp.float32)
    k1, k2 = jax.random.split(jax.random.PRNGKey(5))
    box = []
    assert count_compiles(lambda: box.append(fn.models.generate(model, params, PROMPT, 6, key=k1,
                                                                temperature=1.0))) == 1
    first, size = box[0], gen._program._cache_size()

    def again():
        jax.block_until_ready(fn.models.generate(model, params, PROMPT, 6, key=k2, temperature=0.5))

    assert count_compiles(again) == 0
    assert gen._program._cache_size() == size
    np.testing.assert_array_equal(fn.models.generate(model, params, PROMPT, 6, key=k1), first)


def test_sampling_follows_the_key_top_k_and_temperature():
    model = fn.models.transformer(VOCAB, MAX_LEN, DIM, HEADS, 1)
    params, _ = random_params(model, (1, MAX_LEN), jnp.float32, scale=0.3)
    prompt = np.tile(PROMPT, (4, 1))  # 8 rows: the draws differ between rows too

    def run(key=KEY, **kw):
        return np.asarray(fn.models.generate(model, params, prompt, 8, key=key, **kw))

    greedy = run(temperature=0)
    hot = run(temperature=3.0)
    np.testing.assert_array_equal(run(temperature=3.0), hot)                 # same key, same ids
    assert (run(key=jax.random.PRNGKey(1), temperature=3.0) != hot).any()    # another key
    assert (hot[:, 3:] != greedy[:, 3:]).mean() > 0.3                        # hot: far from greedy
    np.testing.assert_array_equal(run(temperature=1e-6), greedy)             # cold: greedy
    np.testing.assert_array_equal(run(temperature=3.0, top_k=1), greedy)     # top_k=1: greedy


def test_sample_draws_softmax_of_logits_over_temperature_within_the_top_k():
    """_sample's frequencies over 20,000 rows match softmax(logits / T) (renormalised over
    the top k), to 3 standard errors."""
    logits = jnp.tile(jnp.array([0.0, 1.0, 2.0, -1.0]), (20_000, 1))
    for temperature, top_k in ((1.0, None), (0.5, None), (2.0, 2)):
        draws = jax.jit(gen._sample, static_argnums=(3, 4))(logits, KEY, temperature, False, top_k)
        freq = np.bincount(np.asarray(draws), minlength=4) / len(draws)
        z = np.array([0.0, 1.0, 2.0, -1.0]) / temperature
        if top_k is not None:
            z[np.argsort(z)[:-top_k]] = -np.inf
        want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(freq, want, atol=3 * np.sqrt(0.25 / len(draws)))


def test_bad_arguments_are_named():
    model = fn.models.transformer(VOCAB, MAX_LEN, DIM, HEADS, DEPTH)
    params, _ = random_params(model, (1, MAX_LEN), jnp.float32)

    def call(prompt=PROMPT, new=4, **kw):
        return fn.models.generate(model, params, prompt, new, **{"key": KEY, **kw})

    cases = [
        (dict(new=10), r"T0 \+ max_new_tokens = 13 positions do not fit its table of max_len=12"),
        (dict(new=0), "max_new_tokens must be a positive int, got 0"),
        (dict(new=2.0), "max_new_tokens must be a positive int"),
        (dict(temperature=-0.5), r"temperature must be a finite number >= 0, got -0.5"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(top_k=0), "top_k must be a positive int, got 0"),
        (dict(top_k=VOCAB + 1), f"top_k must be at most vocab_size={VOCAB}, got {VOCAB + 1}"),
        (dict(prompt=PROMPT[0]), r"prompt must be token ids of shape \(batch, T0\).*got shape \(3,\)"),
        (dict(prompt=PROMPT[:, :0]), r"prompt must be token ids .* got shape \(2, 0\)"),
        (dict(prompt=PROMPT.astype(np.float32)), "prompt must hold integer token ids, got dtype float32"),
        (dict(prompt=PROMPT + 10), rf"prompt ids must be in \[0, vocab_size={VOCAB}\), got id 16"),
        (dict(prompt=PROMPT - 2), r"prompt ids must be in \[0, vocab_size\), got id -1"),
        (dict(key=None), "key must be one PRNG key"),
        (dict(key=np.zeros(3, np.uint32)), "key must be one PRNG key"),
    ]
    for kw, message in cases:
        with pytest.raises(fn.FuncnetError, match="generate: (.*: )?" + message):
            call(**kw)


def test_a_layer_without_a_decode_rule_is_named_with_its_path():
    noncausal = fn.serial(fn.embedding(VOCAB, DIM), fn.positional_embedding(MAX_LEN),
                          fn.residual(fn.layer_norm(), fn.self_attention(HEADS)),
                          fn.time_distributed(fn.dense(VOCAB)))
    params, _ = random_params(noncausal, (1, MAX_LEN), jnp.float32)
    with pytest.raises(fn.LayerError, match=r"generate: layer 2 \(residual\) > layer 1 \(parallel\) "
                       r"> branch 0 \(serial\) > layer 1 \(self_attention\): self_attention has no "
                       r"decode rule .*non-causal attention"):
        fn.models.generate(noncausal, params, PROMPT, 2, key=KEY)
    # a dense on (batch, time, dim) would mix nothing, but it is not marked: never assumed
    bare = fn.serial(fn.embedding(VOCAB, DIM), fn.lstm(DIM), fn.time_distributed(fn.dense(VOCAB)))
    params, _ = random_params(bare, (1, 4), jnp.float32)
    with pytest.raises(fn.LayerError, match=r"generate: layer 1 \(lstm\): lstm has no decode rule"):
        fn.models.generate(bare, params, PROMPT, 2, key=KEY)


def test_walkers_follow_combine_and_decode_not_names():
    """A user's pointwise leaf named "self_attention" runs as marked (one new token: the
    prompt's chunk alone, an empty scan); a model with state must be given it."""
    double = Layer(lambda k, s, d=None: ({}, {}), lambda p, s, x, train=False, key=None: (2 * x, s, {}),
                   lambda p, c, dy: ({}, 2 * dy), "self_attention", lambda s: s, decode=POINTWISE)
    model = fn.serial(fn.embedding(VOCAB, DIM), double, fn.time_distributed(fn.dense(VOCAB)))
    with jax.enable_x64(True):
        params, state = random_params(model, (1, 4), jnp.float64)
        ids = np.asarray(fn.models.generate(model, params, PROMPT, 1, key=KEY, temperature=0))
        want = full_forward_argmax(model, params, state, ids)
    assert ids.shape == (2, 4)
    np.testing.assert_array_equal(ids[:, 3:], want)
    stateful = fn.serial(fn.embedding(VOCAB, DIM), fn.time_distributed(fn.batch_norm()),
                         fn.time_distributed(fn.dense(VOCAB)))
    params, _ = random_params(stateful, (1, 4), jnp.float32)
    with pytest.raises(fn.LayerError, match="generate: the model has state .* pass state="):
        fn.models.generate(stateful, params, PROMPT, 2, key=KEY)
