"""funcnet/_random.py: every draw has jax.random's values bit for bit, eager (bucketed) and
inside jit (exact size), so seeded results never depend on how the draw was compiled."""
import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from funcnet import _random as fr
from tests.suite_xla import with_xla_fusion_emitters

SHAPES = [(3,), (2, 3), (3, 2, 2, 2), (130,)]


def _pairs(dtype=jnp.float32):
    """(funcnet's draw, jax.random's draw) for each distribution, both (key, shape) -> array."""
    return {
        "normal": (lambda k, s: fr.normal(k, s, dtype), lambda k, s: jax.random.normal(k, s, dtype)),
        "scaled normal": (lambda k, s: fr.normal(k, s, dtype, 0.37),
                          lambda k, s: 0.37 * jax.random.normal(k, s, dtype)),
        "uniform": (lambda k, s: fr.uniform(k, s, dtype, -2.0, 3.0),
                    lambda k, s: jax.random.uniform(k, s, dtype, -2.0, 3.0)),
        "bernoulli": (lambda k, s: fr.bernoulli(k, 0.3, s), lambda k, s: jax.random.bernoulli(k, 0.3, s)),
        "randint": (lambda k, s: fr.randint(k, s, -4, 9), lambda k, s: jax.random.randint(k, s, -4, 9)),
    }


def _assert_same(ours, theirs, what):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, what
    np.testing.assert_array_equal(ours, theirs, err_msg=what)


def test_eager_draws_equal_jax_random():
    key = jax.random.PRNGKey(7)
    pairs = _pairs()
    scaled = pairs.pop("scaled normal")[0]
    # jax.random's draws in one program (compiling 16 eager draws would take most of the test)
    want = jax.jit(lambda k: {(name, s): pair[1](k, s) for name, pair in pairs.items()
                              for s in SHAPES})(key)
    for (name, shape), theirs in want.items():
        _assert_same(pairs[name][0](key, shape), theirs, f"{name} {shape}")
        if name == "normal":
            _assert_same(scaled(key, shape), 0.37 * theirs, f"scaled normal {shape}")
    typed = jax.random.key(5)
    for dtype in (jnp.float16, jnp.bfloat16):
        shape = SHAPES[2]
        _assert_same(fr.normal(typed, shape, dtype), jax.random.normal(typed, shape, dtype),
                     f"normal {dtype} {shape}")


def test_jitted_draws_equal_jax_random_in_jit():
    """Inside jit the draw is exactly n; XLA may fold a scale into the draw's arithmetic, so
    jit is compared with jit (one program each)."""
    key = jax.random.PRNGKey(9)

    def all_draws(which):
        return jax.jit(lambda k: {(name, s): pair[which](k, s)
                                  for name, pair in _pairs().items() for s in SHAPES[1:3]})(key)

    ours, theirs = all_draws(0), all_draws(1)
    for what in theirs:
        _assert_same(ours[what], theirs[what], f"{what} jit")


def test_float64_draws_equal_jax_random():
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(3)
        want = jax.jit(lambda k: [jax.random.normal(k, s, jnp.float64) for s in SHAPES])(key)
        for shape, theirs in zip(SHAPES, want):
            _assert_same(fr.normal(key, shape, jnp.float64), theirs, f"float64 {shape}")


def test_eager_sizes_round_up_to_a_power_of_two_and_jit_draws_exactly_n():
    """Eager sizes 65..128 all draw 128 elements (one compiled draw); jit, large draws and
    other PRNGs draw exactly n."""
    key = jax.random.PRNGKey(0)
    assert fr._bucket(key, 65) == fr._bucket(key, 100) == fr._bucket(key, 128) == 128
    assert fr._bucket(key, 3) == 64 and fr._bucket(key, 129) == 256
    assert fr._bucket(key, (1 << 22) + 1) == (1 << 22) + 1  # large draws: exactly n
    traced = []
    jax.jit(lambda k: traced.append(fr._bucket(k, 100)) or k)(key)
    assert traced == [100]  # inside jit: exactly n, the program is unchanged
    assert fr._bucket(jax.random.key(0, impl="rbg"), 100) == 100  # another PRNG: exactly n


def test_split_equals_jax_random_split_and_eager_draws_stay_on_their_device():
    """fr.split is jax.random.split as a tuple (raw and typed keys, eager and in jit); an
    eager draw cut on the host comes back as a JAX array, committed where its key was."""
    for key in (jax.random.PRNGKey(5), jax.random.key(5)):
        want = jax.random.split(key, 3)
        data = jax.random.key_data if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else None
        for got in (fr.split(key, 3), jax.jit(lambda k: fr.split(k, 3))(key)):
            assert isinstance(got, tuple) and len(got) == 3
            for g, w in zip(got, want):
                _assert_same(*(data(a) if data else a for a in (g, w)), "split")
    key = jax.random.PRNGKey(1)
    draw = fr.normal(key, (2, 3))
    assert isinstance(draw, jax.Array) and not draw.committed
    device = jax.devices()[0]
    draw = fr.normal(jax.device_put(key, device), (2, 3))
    assert draw.committed and draw.devices() == {device}
    # a concrete key closed over by a jitted function: traced draws, the same values
    _assert_same(jax.jit(lambda: fr.normal(key, (2, 3)))(), fr.normal(key, (2, 3)), "closed over")
    model = fn.serial(fn.dense(3), fn.relu, fn.dense(2))
    # (a scaled draw in jit folds √2·scale into one constant: equal to the eager one to an ulp)
    for a, b in zip(*(jax.tree_util.tree_leaves(t) for t in
                      (jax.jit(lambda: model.init(key, (1, 4)))(), model.init(key, (1, 4))))):
        np.testing.assert_allclose(a, b, rtol=3e-7, atol=0)


def _leaves_equal(a, b, what):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), what
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        _assert_same(x, y, what)


# (size, dtype, scale): sizes from 1 to several thousand (groups of very different widths),
# no scale, an initializer's √(2/fan_in), a plain std, zero
DRAWS = [(1, jnp.float32, None), (150, jnp.float32, (2 / 25) ** 0.5), (3, jnp.float32, 0.0),
         (2400, jnp.float32, (2 / 150) ** 0.5), (130, jnp.float64, None), (7, jnp.float64, 0.05)]


@with_xla_fusion_emitters
def test_batched_normals_equal_the_draws_one_by_one_in_jit():
    """Batched draws are the per-call draws bit for bit, float32 and float64 (XLA folds
    √2·scale into one constant in the per-call program: the batch does the same), with raw
    and typed keys, nested, and under vmap (an ensemble's init)."""
    def draws(key):
        keys = jax.random.split(key, len(DRAWS))
        return [fr.normal(k, (n,), dtype, scale) for k, (n, dtype, scale) in zip(keys, DRAWS)]

    def nested(key):  # a batched function calling another: one batch, the outer one
        k1, k2 = jax.random.split(key)
        return fr.normal(k1, (5,), jnp.float32, 2.0), fr.batched_normals(draws)(k2)

    with jax.enable_x64(True):
        key = jax.random.PRNGKey(4)
        _leaves_equal(jax.jit(fr.batched_normals(nested))(key), jax.jit(nested)(key),
                      "batched normals, nested")
        keys = jax.random.split(jax.random.key(5), 3)  # typed keys
        _leaves_equal(jax.jit(jax.vmap(fr.batched_normals(draws)))(keys),
                      jax.jit(jax.vmap(draws))(keys), "batched normals under vmap, typed keys")


def test_batched_normals_draw_a_changed_call_on_its_own():
    """The second pass replays the first pass's draws in order; a call that differs (size
    here) is drawn directly, so the values stay jax.random's whatever fn does."""
    calls = []

    def fickle(key):
        calls.append(None)
        n = 5 if len(calls) % 2 else 9  # 5 on the recording pass, 9 on the second
        return fr.normal(key, (n,), jnp.float32, 0.5), fr.normal(key, (4,))

    got = jax.jit(fr.batched_normals(fickle))(jax.random.PRNGKey(1))
    assert len(calls) == 2 and got[0].shape == (9,)
    want = jax.jit(lambda k: (0.5 * jax.random.normal(k, (9,)), jax.random.normal(k, (4,))))(
        jax.random.PRNGKey(1))
    _leaves_equal(got, want, "a changed draw")


def test_batched_normals_take_only_the_cases_checked_equal():
    """Traced threefry keys, float32/64, a Python-number scale, a non-empty draw; anything
    else (an eager key, bfloat16, another PRNG, a traced scale) is drawn on its own."""
    seen = {}

    def probe(key, rbg_key, scale):
        takes = fr._Batch.takes
        f32 = jnp.float32
        seen.update(f32=takes(key, (3,), f32, 0.5), f64=takes(key, (3,), jnp.float64, None),
                    bf16=takes(key, (3,), jnp.bfloat16, None), empty=takes(key, (0, 3), f32, None),
                    rbg=takes(rbg_key, (3,), f32, None), traced_scale=takes(key, (3,), f32, scale),
                    flag=takes(key, (3,), f32, True))
        return key

    jax.make_jaxpr(probe)(jax.random.PRNGKey(0), jax.random.key(0, impl="rbg"), 0.5)  # traces only
    assert seen == dict(f32=True, f64=True, bf16=False, empty=False, rbg=False,
                        traced_scale=False, flag=False)
    assert not fr._Batch.takes(jax.random.PRNGKey(0), (3,), jnp.float32, None)  # eager key


@with_xla_fusion_emitters
def test_fit_init_program_equals_the_model_init_in_jit():
    """fit and init_train_state's one compiled init (batched draws) gives model.init's values
    in jit exactly (convolutions, batch norm, a residual branch, dense)."""
    import optax

    import funcnet as fn
    from funcnet import train
    model = fn.serial(fn.conv2d(3, (3, 3)), fn.batch_norm(), fn.relu,
                      fn.residual(fn.conv2d(3, (1, 1))), fn.flatten, fn.dense(4))
    k_init, k_step = jax.random.split(jax.random.PRNGKey(2))
    ts = train._jitted_init(model, optax.sgd(0.1), (2, 5, 5, 1), None)(k_init, k_step)
    want = jax.jit(lambda k: model.init(k, (2, 5, 5, 1)))(k_init)
    _leaves_equal((ts.params, ts.state), want, "fit's init")


# ----------------------------------------------------------------------------- dropout masks

def test_threefry2x32_is_jax_random_bits_hash():
    """jax.random.bits's element i is a ^ b of the hash of the counts (0, i), raw and typed
    keys (a key word past 2³¹ too)."""
    for key, data in ((jax.random.PRNGKey(2**40 + 17), None), (jax.random.key(3), jax.random.key_data)):
        k = data(key) if data else key
        count = jnp.asarray([0, 1, 2, 1000], jnp.uint32)
        a, b = jax.jit(fr.threefry2x32)(k[0], k[1], jnp.zeros_like(count), count)
        full = jax.jit(lambda k: jax.random.bits(k, (1001,), jnp.uint32))(key)
        np.testing.assert_array_equal(np.asarray(a ^ b), np.asarray(full)[[0, 1, 2, 1000]])


def test_keep_mask_is_jax_random_bits_below_the_threshold_eager_and_in_jit():
    key = jax.random.PRNGKey(11)
    k = round(0.7 * 2**32)
    want = np.asarray(jax.random.bits(key, (6 * 7,), jnp.uint32)).reshape(6, 7) < k
    np.testing.assert_array_equal(np.asarray(fr.keep_mask(key, 0.7, (6, 7))), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: fr.keep_mask(k, 0.7, (6, 7)))(key)), want)
    assert fr.keep_mask(key, 1 - 1e-12, (3,)).all()  # the threshold past 2³²: keep all
    rbg = jax.random.key(1, impl="rbg")  # another PRNG: its own bits
    np.testing.assert_array_equal(np.asarray(fr.keep_mask(rbg, 0.5, (50,))),
                                  np.asarray(jax.random.bits(rbg, (50,), jnp.uint32)) < 2**31)


def test_grid_keep_mask_entries_and_any_block_of_columns_drawn_alone():
    """Entry (r, c): half c mod 2 of the word a ^ b hashed from (r, c // 2); the whole grid
    (odd T too) equals its column blocks drawn one by one, raw and typed keys."""
    for key, shape in ((jax.random.PRNGKey(4), (2, 3, 5, 5)), (jax.random.key(9), (1, 2, 4, 6))):
        full = np.asarray(fr.grid_keep_mask(key, 0.6, shape))
        assert full.shape == shape and full.dtype == bool
        blocks = jax.jit(lambda cols, key=key, shape=shape: fr.grid_keep_mask(key, 0.6, shape, cols))
        got = np.concatenate([np.asarray(blocks(jnp.arange(j, min(j + 2, shape[-1]))))
                              for j in range(0, shape[-1], 2)], -1)
        np.testing.assert_array_equal(got, full)
        k0, k1 = fr._key_words(key)
        r, c = 7 % (full.size // shape[-1]), shape[-1] - 1
        a, b = fr.threefry2x32(k0, k1, jnp.uint32(r), jnp.uint32(c // 2))
        u = (int(a ^ b) >> (16 * (c % 2))) & 0xFFFF
        assert full.reshape(-1, shape[-1])[r, c] == (u < fr._threshold(0.6, 16))


def test_mask_fractions_match_the_keep_probability():
    """1M entries each: the kept fraction within 5 binomial standard errors of p."""
    key = jax.random.PRNGKey(0)
    for keep in (0.9, 0.25):
        p = fr.keep_probability(keep, 16)
        assert abs(p - keep) <= 2**-17
        sd = (p * (1 - p) / 2**20) ** 0.5
        assert abs(float(fr.grid_keep_mask(key, keep, (64, 128, 128)).mean()) - p) < 5 * sd
        assert abs(float(fr.keep_mask(key, keep, (1024, 1024)).mean()) - keep) < 5 * sd
