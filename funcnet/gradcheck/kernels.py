"""The numerical kernels every check shares, written once: the one-coordinate step, the
(centred, forward, backward) difference triple, the tolerance test and the kink test, the
random streams of a check's one key, and the constants they use.

Finite differences (ε a step, e a unit coordinate or direction):
    centred   (f(x + εe) − f(x − εe)) / 2ε     error O(ε² f''')
    forward   (f(x + εe) − f(x)) / ε           error O(ε f'')
    backward  (f(x) − f(x − εe)) / ε           error O(ε f'')
On a smooth f the two one-sided ones agree to ~ε|f''|; where they disagree by far more, f
has a kink inside the step (a ReLU at 0, a max-pool tie) and any one-sided derivative is a
right answer there: such elements are counted and excused, not failed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = []

# Bisection steps (one directional difference each) spent to name the element behind a
# failing projected row.
BISECT_BUDGET = 32

# Leaves above this many elements are checked along random directions when samples="auto"
# (every element is still compared rule vs reference / manual vs autodiff).
PROJECT_ABOVE = 2048

# Elements of perturbed copies per vmapped chunk of a compiled difference program; the
# eager (uncompiled) one of the function checks may hold more, since it runs op by op.
COPY_BUDGET = 1 << 16
EAGER_COPY_BUDGET = 1 << 20
EAGER_CHUNK = 512

# An element is "at a kink" when its one-sided differences disagree by more than this
# (relative, plus 100 absolute floors): a smooth f gives |fwd − bwd| ≈ ε |f''|, far below.
KINK_RTOL = 1e-3
# More failing elements than this in one leaf is a wrong formula, not a few kinks or a
# few unlucky differences: none is differenced again (and check_gradients excuses none).
KINK_LIMIT = 16

# The streams of a check's one key, k_stream = jax.random.fold_in(key, STREAM): each kind
# of draw has its own, so changing how many of one are drawn leaves the others as they were.
COTANGENTS = 1      # cotangents c (check_vjp, check_hvp) / the upstream gradient g
COORDINATES = 2     # the coordinates sampled when samples=k
DIRECTIONS = 3      # the random unit directions of projected rows
HVP_DIRECTIONS = 10  # + d: check_hvp's direction d
REDRAW = 1000       # + attempt: the noise of avoid_kinks' re-draw number `attempt`


def stream(key, tag: int):
    """The key of one stream of a check's key (fold_in: independent of the others)."""
    return jax.random.fold_in(key, tag)


def key_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key: drawing with it compiles nothing (a jax.random
    draw compiles a program per shape, ~1 s on a loaded machine: more than a check of a
    small function takes)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def normal(key, shape, dtype):
    """Standard normal draws of `shape` from key_rng(key), as a device array of `dtype`."""
    # device_put of a NumPy array: jnp.asarray would compile a small program per shape.
    return jax.device_put(key_rng(key).standard_normal(tuple(shape)).astype(dtype))


def random_directions(key, leaf, k):
    """k random unit directions (k,) + leaf.shape in leaf's dtype (normal, normalized);
    key: a JAX key or a NumPy Generator."""
    rng = key if isinstance(key, np.random.Generator) else key_rng(key)
    v = rng.standard_normal((k,) + tuple(leaf.shape))
    v /= np.sqrt(np.sum(v ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
    return jax.device_put(v.astype(leaf.dtype))


def sample_coordinates(leaves, samples, key, *, jax_choice=False):
    """Per leaf, the sorted flat coordinates to difference: all of them (samples=None, or
    a leaf of at most `samples` elements), else `samples` distinct random ones, drawn from
    the leaf's own key (a split of `key`) with key_rng (compiles nothing), or with
    jax.random.choice when `jax_choice` (numerical_grad's draw: the coordinates a key
    picks there stay what they have always been)."""
    if samples is None:  # no key to split (a split compiles a program per count)
        return [np.arange(int(np.size(leaf))) for leaf in leaves]
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, leaf in zip(keys, leaves):
        size = int(np.size(leaf))
        if jax_choice:
            out.append(np.sort(np.asarray(jax.random.choice(k, size, (min(samples, size),),
                                                            replace=False))))
        elif size <= samples:
            out.append(np.arange(size))
        else:
            out.append(np.sort(key_rng(k).choice(size, samples, replace=False)))
    return out


def coordinate_step(n: int, i, size, dtype):
    """size · eᵢ, a vector of n elements (i may be traced), as a masked vector rather than
    `zeros.at[i].set`: XLA fuses it into its consumer, where a batched scatter costs about
    2.5x more on CPU."""
    return jnp.where(jnp.arange(n) == i, jnp.asarray(size, dtype), jnp.zeros((), dtype))


def chunk_width(n_rows: int, size: int, cap=None, budget: int = COPY_BUDGET) -> int:
    """How many perturbed copies of `size` elements one vmapped chunk holds: within
    `budget` elements, at most `cap` (default n_rows), at least 1."""
    cap = n_rows if cap is None else cap
    return max(1, min(cap, n_rows, budget // max(size, 1)))


def differences(plus, minus, mid, eps):
    """(centred, forward, backward) differences, float64 NumPy, from f(x + εe) (`plus`),
    f(x − εe) (`minus`) and f(x) (`mid`, broadcast against them)."""
    plus, minus, mid = (np.asarray(a, np.float64) for a in (plus, minus, mid))
    return (plus - minus) / (2 * eps), (plus - mid) / eps, (mid - minus) / eps


def excess(a, b, rtol, atol):
    """Per element, how far |a − b| exceeds its tolerance rtol (|a| + |b|) + atol (<= 0
    passes; NaN, an unsampled element, -> -inf)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf: a non-finite leg, failed apart
        out = np.abs(a - b) - (rtol * (np.abs(a) + np.abs(b)) + atol)
    return np.where(np.isnan(out), -np.inf, out)


def kink_mask(forward, backward, floor):
    """Elements whose one-sided differences disagree beyond KINK_RTOL (plus 100 floors);
    never an element where either is NaN or infinite (that is no kink: it fails)."""
    fw, bw = np.asarray(forward, np.float64), np.asarray(backward, np.float64)
    finite = np.isfinite(fw) & np.isfinite(bw)
    with np.errstate(invalid="ignore"):
        gap = np.where(finite, np.abs(fw - bw), 0.0)
        return finite & (gap > KINK_RTOL * (np.abs(fw) + np.abs(bw)) + 100 * floor)


def error_bar(coarse, fine, eps, scale=0.0, dtype=np.float64):
    """(estimate, error bar) of a derivative from centred differences at steps ε (`coarse`)
    and ε/2 (`fine`). Their truncation errors are c ε² and c ε²/4 (+ O(ε⁴)), so Richardson's
    (4 fine − coarse) / 3 cancels the ε² term, and 2 |coarse − fine| (the coarse one's
    error is 4/3 of |coarse − fine| while that term dominates: a margin of 1.5 for the next
    terms) plus the round-off of a difference, machine ε · scale / ε (scale: the size of
    the values differenced), bounds the error of either, hence of the estimate."""
    coarse, fine = np.asarray(coarse, np.float64), np.asarray(fine, np.float64)
    with np.errstate(invalid="ignore"):
        estimate = (4 * fine - coarse) / 3
        bar = 2 * np.abs(coarse - fine) + np.finfo(dtype).eps * abs(scale) / eps
    return estimate, bar


def second_look(value, coarse, fine, rtol, atol, eps, scale=0.0, dtype=np.float64):
    """A failing element seen again with its error bar: (the better numerical estimate,
    mask of elements that now pass, mask of elements numerically unreliable — whose error
    bar exceeds the tolerance, so no verdict can be given)."""
    estimate, bar = error_bar(coarse, fine, eps, scale, dtype)
    value = np.asarray(value, np.float64)
    with np.errstate(invalid="ignore"):
        tol = rtol * (np.abs(value) + np.abs(estimate)) + atol
        passes = np.abs(value - estimate) <= tol
        unreliable = ~passes & (bar > tol) & np.isfinite(estimate) & np.isfinite(value)
    return estimate, passes, unreliable


def bisect(discrepancy, support, total, budget: int = BISECT_BUDGET):
    """The flat index of an element behind a projected discrepancy, or None. discrepancy(S)
    = ⟨g, v_S⟩ − (directional difference along v_S), v_S the failing direction restricted to
    the coordinates S; it is additive over disjoint parts (up to the differencing error),
    so halving S and keeping the half with the larger |discrepancy| needs one directional
    difference per step (the other half's is `total` minus it): log2(n) steps to one
    element, at most `budget` of them."""
    support = np.asarray(support)
    while support.size > 1 and budget > 0:
        first, second = support[:support.size // 2], support[support.size // 2:]
        d1 = float(discrepancy(first))
        budget -= 1
        support, total = (first, d1) if abs(d1) >= abs(total - d1) else (second, total - d1)
    return int(support[0]) if support.size == 1 else None
