"""self_attention(..., block_size=n), the flash-attention form (attention_blockwise.py):
equal to the plain form in values and every gradient (dropout included), checked three
ways, a cache and a program with no T × T array, bfloat16 as close to the truth as autodiff,
and its argument's errors."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet import _random as fr
from tests.layers.three_way import SEEDS, assert_close, configs, randomize

D = 4  # model dim; batch 2
# (T, block_size, causal, heads, dropout): block sizes that do not divide T, one larger
# than T, T = 1; a fixed list so each program compiles once (the full space under --slow)
CURATED = [(1, 3, False, 1, 0.0), (5, 2, True, 2, 0.3), (7, 3, False, 2, 0.5),
           (13, 4, True, 1, 0.0), (20, 6, True, 2, 0.25), (4, 16, False, 2, 0.0)]
FULL = st.tuples(st.integers(1, 20), st.integers(1, 8), st.booleans(), st.sampled_from([1, 2]),
                 st.sampled_from([0.0, 0.3]))


@functools.cache
def _both_forms(case):
    """A jitted (params, x, dy, key) -> ((y, dparams, dx) plain, (…) blockwise), train=True."""
    _, block_size, causal, heads, rate = case
    forms = (fn.self_attention(heads, causal, dropout=rate),
             fn.self_attention(heads, causal, dropout=rate, block_size=block_size))

    def run(params, x, dy, key):
        out = []
        for layer in forms:
            y, _, cache = layer.forward(params, {}, x, train=True, key=key)
            out.append((y, *layer.backward(params, cache, dy)))
        return tuple(out)

    return forms[0], jax.jit(run)


@given(case=configs(CURATED, FULL), seed=SEEDS)
def test_blockwise_equals_plain_in_values_and_every_gradient(case, seed):
    t = case[0]
    plain, run = _both_forms(case)
    with jax.enable_x64(True):
        k_init, k_p, k_x, k_g, k_drop = jax.random.split(jax.random.PRNGKey(seed), 5)
        params, _ = plain.init(k_init, (2, t, D), jnp.float64)
        params = randomize(params, k_p)
        x, dy = fr.normal(k_x, (2, t, D), jnp.float64), fr.normal(k_g, (2, t, D), jnp.float64)
        expected, got = run(params, x, dy, k_drop)
    assert got[0].dtype == jnp.float64
    assert_close(got, expected, 1e-10, f"{case} blockwise vs plain")


def test_blockwise_backward_three_ways_with_dropout_and_a_ragged_last_block():
    layer = fn.self_attention(2, causal=True, dropout=0.3, block_size=3)
    with jax.enable_x64(True):
        params, state = layer.init(jax.random.PRNGKey(0), (2, 7, 4), jnp.float64)
        params = randomize(params, jax.random.PRNGKey(1))
        x = fr.normal(jax.random.PRNGKey(2), (2, 7, 4), jnp.float64)
        report = fn.check_gradients(fn.serial(layer), (params,), (state,), x, train=True,
                                    key=jax.random.PRNGKey(3))
    assert report.ok, report
    assert len(report.rows) == 5  # four parameters and the input


def _intermediate_sizes(jaxpr):
    """The element count of every value a program computes, inside scans and calls too."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield from (math.prod(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _intermediate_sizes(sub)


def test_cache_and_program_hold_no_time_by_time_array():
    t, block = 64, 16
    key = jax.random.PRNGKey(1)
    x = fr.normal(jax.random.PRNGKey(2), (1, t, 8))
    sizes = {}
    for block_size in (block, None):
        layer = fn.self_attention(2, causal=True, dropout=0.1, block_size=block_size)
        params, state = layer.init(jax.random.PRNGKey(0), (1, t, 8))

        def step(params, x, key, layer=layer, state=state):
            y, _, cache = layer.forward(params, state, x, train=True, key=key)
            return layer.backward(params, cache, y), cache

        cache = jax.eval_shape(step, params, x, key)[1]
        program = jax.make_jaxpr(step)(params, x, key)
        sizes[block_size] = ({n: math.prod(a.shape) for n, a in cache.items()},
                             max(_intermediate_sizes(program)))
    cache, largest = sizes[block]
    # x, q, k, v, o: T·dim each; the row logsumexp: heads·T; the dropout key
    assert cache == {"x": t * 8, "q": t * 8, "k": t * 8, "v": t * 8, "o": t * 8,
                     "lse": 2 * t, "key": 2}
    assert largest == 2 * t * block < t * t  # one (heads, T, block) slab at a time
    plain_cache, plain_largest = sizes[None]
    assert plain_cache["a"] == plain_cache["mask"] == 2 * t * t and plain_largest >= t * t


def test_bfloat16_forward_and_backward_of_both_forms_are_as_close_to_the_truth_as_autodiff():
    shape, dtype = (2, 24, 16), jnp.bfloat16
    plain = fn.self_attention(2, causal=True)
    forms = {"plain": plain, "blockwise": fn.self_attention(2, causal=True, block_size=5)}

    @jax.jit
    def results(params, x, dy):
        out = {}
        for name, layer in forms.items():
            y, _, cache = layer.forward(params, {}, x)
            out[name] = (y, *layer.backward(params, cache, dy))
        y, vjp = jax.vjp(lambda p, x: plain.apply(p, {}, x)[0], params, x)
        return out, (y, *vjp(dy))

    with jax.enable_x64(True):
        params, _ = plain.init(jax.random.PRNGKey(0), shape, jnp.float64)
        params = randomize(params, jax.random.PRNGKey(1))
        x, dy = (fr.normal(jax.random.PRNGKey(i), shape, jnp.float64) for i in (2, 3))
        _, truth = results(params, x, dy)  # float64: autodiff of the plain form
        low = jax.tree_util.tree_map(lambda a: a.astype(dtype), (params, x, dy))
        manual, autodiff = results(*low)

    def errors(tree):  # per leaf: max |error| / max |truth|
        return [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))) / np.max(np.abs(b)))
                for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(truth))]

    reference = errors(autodiff)
    for name, out in manual.items():
        assert all(a.dtype == dtype for a in jax.tree_util.tree_leaves(out)), name
        # no better than bfloat16's own rounding (2⁻⁸ relative) can be asked of either
        for leaf, (mine, theirs) in enumerate(zip(errors(out), reference)):
            assert mine <= 3 * max(theirs, 2.0 ** -8), (name, leaf, mine, theirs)


def test_block_size_must_be_a_positive_int_named_in_the_error():
    for bad in (0, -2, 2.5, "16"):
        with pytest.raises(fn.LayerError, match=r"self_attention: block_size must be a "
                                                r"positive int, got"):
            fn.self_attention(2, block_size=bad)
    assert fn.self_attention(2, block_size=np.int64(4)).name == "self_attention"
