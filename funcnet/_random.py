"""Random draws with the values of `jax.random`'s, drawn flat and reshaped.

Bit for bit the same arrays as jax.random.normal / uniform / bernoulli / randint with the
shape given (threefry numbers element i of the flattened array the same way either way),
but XLA:CPU compiles a draw of rank 2 or more several times slower than a flat one: about
2 s against 0.3 s for a (3, 3, 16, 16) draw here, once per call site in a jitted program
and once per shape eagerly. Every random draw in funcnet (layers, initializers, the gradient
checks) goes through these.

Dropout masks (`keep_mask`, `grid_keep_mask`) compare unsigned integers with a threshold
instead of drawing floats, and hash with `threefry2x32` written out round by round: jax's
own CPU lowering of the hash is a five-iteration loop, a pass over the whole array each,
which made GPT-2's dropout cost as much as the rest of its training step.

Eager draws (a concrete key: `model.init(key, shape)` called outside jit) go further: they
draw a power-of-two number of elements and keep the first n. With JAX's (default)
partitionable threefry, element i depends only on the key and i, so the values are still
the same bit for bit; but one compiled draw now serves every size up to its bucket, where
each new shape used to cost a compile (~0.25 s on XLA:CPU, the largest part of an eager
init). Inside jit nothing changes: the program draws exactly n.

A jitted `model.init` has the opposite cost: each leaf's draw is its own threefry loop and
erf⁻¹ in the program, ~0.15 s of XLA:CPU compile a leaf (2.1 s for 12 draws, 0.6 s for the
same 12 as one vmapped draw). `batched_normals(init)` traces init twice: the first pass
only records its normal draws (key, size, dtype, scale), which are then drawn together, a
few vmapped draws over the stacked keys, and the second pass uses them. The values are the
per-leaf draws' bit for bit (tests/test_random.py compares them in jit; checked on XLA:CPU,
whose algebraic simplifier folds a per-leaf draw's √2·scale into one constant, which the
batch reproduces).
"""
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["normal", "uniform", "bernoulli", "randint", "keep_mask", "grid_keep_mask",
           "keep_probability", "threefry2x32", "split", "batched_normals"]


_SMALLEST, _LARGEST = 64, 1 << 22  # buckets; above 4M elements the compile is not the cost


def _partitionable_threefry(key) -> bool:
    """Whether element i of a draw with `key` depends only on the key and i (not on the
    count): JAX's default partitionable threefry. Both the bucketed eager draws and the
    batched ones rely on it."""
    return (jax.config.jax_threefry_partitionable
            and str(jax.random.key_impl(key)) == "threefry2x32")


def _bucket(key, n: int) -> int:
    """How many elements to draw for n: n itself inside jit, under another PRNG (whose
    element i may depend on the count), or when large; else n rounded up to a power of two."""
    if isinstance(key, jax.core.Tracer) or n > _LARGEST or not _partitionable_threefry(key):
        return n
    return max(_SMALLEST, 1 << (n - 1).bit_length())


def _draw(draw, key, shape, scale=None):
    """draw(key, (count,)) for the flat count (times `scale`), cut to prod(shape), reshaped."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    m = _bucket(key, n)
    out = draw(key, (m,))
    if scale is not None:  # before the cut: one compiled multiply per bucket, same values
        out = scale * out
    if not isinstance(out, jax.core.Tracer) and m <= _LARGEST:
        # Eager (a concrete key closed over by a jitted function still draws a tracer):
        # cut and reshape on the host and put the result back (two copies of at most 4M
        # elements), where an eager slice and reshape compile a program each per shape
        # (~25 ms apiece on XLA:CPU, most of what was left of an eager init).
        host = np.asarray(out)[:n].reshape(shape)
        return jax.device_put(host, out.sharding) if out.committed else jax.device_put(host)
    if m != n:
        out = jax.lax.slice(out, (0,), (n,))
    return out.reshape(shape)


def normal(key, shape, dtype=jnp.float32, scale=None):
    """jax.random.normal's values (times `scale`, a Python float, when given)."""
    batch = _BATCH.get()
    if batch is not None and batch.takes(key, shape, dtype, scale):
        return batch.normal(key, shape, dtype, scale)
    return _direct_normal(key, shape, dtype, scale)


def _direct_normal(key, shape, dtype, scale):
    return _draw(lambda k, s: jax.random.normal(k, s, dtype), key, shape, scale)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0):
    return _draw(lambda k, s: jax.random.uniform(k, s, dtype, minval, maxval), key, shape)


def bernoulli(key, p, shape):
    return _draw(lambda k, s: jax.random.bernoulli(k, p, s), key, shape)


def randint(key, shape, minval, maxval, dtype=jnp.int32):
    return _draw(lambda k, s: jax.random.randint(k, s, minval, maxval, dtype), key, shape)


def keep_probability(keep: float, bits: int) -> float:
    """The probability a mask of `bits`-bit draws (keep_mask: 32, grid_keep_mask: 16) keeps a
    unit with: round(keep·2^bits) / 2^bits, within 2^−(bits+1) of `keep` (16 bits, keep =
    0.9: 58982/65536 = 0.8999939)."""
    return _threshold(keep, bits) / 2 ** bits


def _threshold(keep, bits):
    return min(max(round(float(keep) * 2 ** bits), 0), 2 ** bits)


def keep_mask(key, keep: float, shape):
    """A boolean dropout mask, True with probability keep_probability(keep, 32) (`keep` to
    within 2⁻³³): element i of the flattened mask is kept where
    jax.random.bits(key, (n,), uint32)[i] < round(keep·2³²). A pure function of the key.
    Cheaper than `bernoulli` (which makes a float of each word to compare): for threefry
    keys the hash is written out round by round (`threefry2x32`), one fused kernel, and the
    mask goes through `_packed`, so it is hashed once however many times it is used."""
    k = _threshold(keep, 32)
    if k >= 2 ** 32:
        return jnp.ones(shape, bool)
    return _draw(lambda key, s: _packed(_bits32(key, 8 * -(-s[0] // 8)) < np.uint32(k))[:s[0]],
                 key, shape)


def _packed(keep):
    """`keep` (a multiple of 8 long) packed eight to a byte and unpacked: the same values,
    but the packing is a reduction, which XLA computes into a buffer; an elementwise mask
    is fused into each of its users and hashed again in each (a dropout mask: the forward's
    product and the backward's), and the backward's fusions (so their float rounding) then
    differ from those of the same backward run apart from its forward. XLA:CPU removes
    optimization_barrier before fusion, so a barrier does not hold the mask."""
    shifts = jnp.arange(8, dtype=np.uint8)
    packed = jnp.sum(keep.reshape(-1, 8).astype(np.uint8) << shifts, axis=1, dtype=np.uint8)
    return ((packed[:, None] >> shifts) & 1).reshape(-1).astype(bool)


def _halves(words):
    """[w₀ mod 2¹⁶, w₀ >> 16, w₁ mod 2¹⁶, …] as uint16."""
    return jnp.stack([words & 0xFFFF, words >> 16], -1).reshape(-1).astype(np.uint16)


def _bits32(key, n):
    """jax.random.bits(key, (n,), uint32)'s values; for a threefry key (JAX's partitionable
    layout: element i hashes the counts (0, i) and XORs the two words) by `threefry2x32`."""
    if not _partitionable_threefry(key):
        return jax.random.bits(key, (n,), np.uint32)
    count = jax.lax.iota(np.uint32, n)
    a, b = threefry2x32(*_key_words(key), jnp.zeros_like(count), count)
    return a ^ b


def grid_keep_mask(key, keep: float, shape, cols=None):
    """A boolean dropout mask over a grid of shape (*rows, T), True with probability
    keep_probability(keep, 16), whose any block of columns can be drawn alone: entry (r, c)
    (r the flattened row index) is kept where u < round(keep·2¹⁶), with u the low half of
    w = a ^ b for even c and its high half for odd c, (a, b) = threefry2x32(key, (r, c // 2))
    (the key's two words; for another PRNG, jax.random.bits(key, (2,), uint32)).

    `cols` None: the whole grid, each word drawn once and split in two (half a hash per
    entry), in the grid's own memory order. `cols` (an int array, may be traced): only
    those columns, shape (*rows, len(cols)), one hash per entry (a block of attention
    columns regenerated in a loop, attention_blockwise.py)."""
    *rows, t = (int(d) for d in shape)
    n = math.prod(rows)
    k0, k1 = _key_words(key)
    if cols is None:
        r, w = jax.lax.iota(np.uint32, n)[:, None], jax.lax.iota(np.uint32, -(-t // 2))[None, :]
        a, b = threefry2x32(k0, k1, r, w)
        u = _halves(a ^ b).reshape(n, -1)[:, :t]
    else:
        c = jnp.asarray(cols).astype(np.uint32)[None, :]
        a, b = threefry2x32(k0, k1, jax.lax.iota(np.uint32, n)[:, None], c // 2)
        u = jnp.where(c % 2 == 0, (a ^ b) & 0xFFFF, (a ^ b) >> 16).astype(np.uint16)
    return (u < np.uint16(_threshold(keep, 16))).reshape(*rows, u.shape[-1])


def _key_words(key):
    """The two uint32 words threefry2x32 hashes with: a threefry key's own, else two drawn."""
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return tuple(jax.random.bits(key, (2,), np.uint32))
    data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return data[0], data[1]


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 hash of 20 rounds (Salmon et al. 2011, "Parallel random numbers: as
    easy as 1, 2, 3"), the values of jax.random's threefry2x32 on key (k0, k1) and counts
    (x0, x1), written out round by round: jax lowers its own hash on CPU as a loop of five
    iterations whose rotation amounts are loop data, each iteration a pass over the whole
    array; unrolled, the hash is one fused elementwise kernel (several times faster on
    XLA:CPU for a dropout mask's million elements)."""
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def split(key, num: int = 2):
    """jax.random.split(key, num) as a tuple of `num` keys, the same values. With a concrete
    key, one compiled program per count that returns the keys one by one, where splitting
    and then iterating over the keys compiles two (the split and an `unstack`)."""
    if isinstance(key, jax.core.Tracer):
        return tuple(jax.random.split(key, num))
    return _split_program(int(num))(key)


@functools.cache
def _split_program(num):
    return jax.jit(lambda key: tuple(jax.random.split(key, num)))


_BATCH = contextvars.ContextVar("funcnet_random_batch", default=None)
_WASTE = 1 << 16  # padding (elements) a vmapped group may carry beyond half its rows


def batched_normals(fn):
    """fn, with every `normal` it draws inside a trace (under jit) drawn in a few vmapped
    draws instead of one per call: same values, much less to compile. fn must draw the same
    way on every call (a pure init does); a call that differs from the first pass is drawn
    on its own. Nested uses join the outermost."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if _BATCH.get() is not None:
            return fn(*args, **kwargs)
        batch = _Batch()
        token = _BATCH.set(batch)
        try:
            fn(*args, **kwargs)  # first pass: records the draws (returns zeros for them)
            batch.draw()
            return fn(*args, **kwargs)
        finally:
            _BATCH.reset(token)

    return run


class _Batch:
    def __init__(self):
        self.calls, self.results, self.next = [], None, 0

    @staticmethod
    def takes(key, shape, dtype, scale):
        """Traced threefry keys, float32/64 and a Python-number scale: the cases whose
        batched values were checked equal (XLA folds √2·scale into one constant in both)."""
        return (isinstance(key, jax.core.Tracer) and math.prod(shape) > 0
                and jax.dtypes.canonicalize_dtype(dtype) in (jnp.float32, jnp.float64)
                and (scale is None or (isinstance(scale, (int, float)) and not isinstance(scale, bool)))
                and _partitionable_threefry(key))

    def normal(self, key, shape, dtype, scale):
        shape, dtype = tuple(int(d) for d in shape), jax.dtypes.canonicalize_dtype(dtype)
        sig = (math.prod(shape), dtype, scale, jnp.shape(key))
        if self.results is None:
            self.calls.append((key, sig))
            return jnp.zeros(shape, dtype)
        i, self.next = self.next, self.next + 1
        if i < len(self.calls) and self.calls[i][1] == sig:
            return self.results[i].reshape(shape)
        return _direct_normal(key, shape, dtype, scale)

    def draw(self):
        """results[i] for every recorded call: groups of the same dtype and key shape, the
        largest first, each group one vmapped uniform and erf⁻¹ padded to its largest size
        (a group stops growing where the padding would pass half of it plus _WASTE)."""
        self.results = [None] * len(self.calls)
        order = sorted(range(len(self.calls)), key=lambda i: -self.calls[i][1][0])
        groups = {}
        for i in order:
            n, dtype, _, kshape = self.calls[i][1]
            open_ = groups.setdefault((dtype, kshape), [[]])
            group = open_[-1]
            if group:
                width = self.calls[group[0]][1][0]
                used = sum(self.calls[j][1][0] for j in group) + n
                if (len(group) + 1) * width > 2 * used + _WASTE:
                    open_.append([])
            open_[-1].append(i)
        for (dtype, _), chunks in groups.items():
            for group in chunks:
                self._draw_group(group, dtype)

    def _draw_group(self, group, dtype):
        width = self.calls[group[0]][1][0]
        keys = jnp.stack([self.calls[i][0] for i in group])
        lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
        # jax.random.normal is √2·erf⁻¹(u) with u from this uniform; element i of a
        # partitionable threefry draw depends only on the key and i, so row j's first n
        # are the per-call draw's values
        u = jax.vmap(lambda k: jax.random.uniform(k, (width,), dtype, lo, np.array(1.0, dtype)))(keys)
        z = jax.lax.erf_inv(u)
        root2 = np.array(np.sqrt(2), dtype)
        for row, i in enumerate(group):
            n, _, scale, _ = self.calls[i][1]
            # XLA folds (√2·z)·scale into z·(√2·scale), rounded in dtype: the same here
            c = root2 if scale is None else np.array(root2 * np.array(scale, dtype), dtype)
            self.results[i] = z[row, :n] * c
