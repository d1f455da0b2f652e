"""funcnet/_random.py: every draw has jax.random's values bit for bit, eager (bucketed) and
inside jit (exact size), so seeded results never depend on how the draw was compiled."""
import jax
import jax.numpy as jnp
import numpy as np

from funcnet import _random as fr

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
