"""Mixed-precision training: a compute dtype cast at the step's boundary, and loss scaling.

The policy (Micikevicius et al., "Mixed Precision Training", ICLR 2018; as in jmp and
torch.amp): parameters and optimizer state stay float32, the *master* copy. Each step casts
the parameters, the float inputs and the float model state (batch-norm running statistics)
to the compute dtype c (bfloat16 or float16; integer ids stay integers), runs the forward and
backward passes in c, and casts the logits back to float32 before the loss:

    L = loss(f32(f_c(c(θ), c(x))), y),   g = ∇_θ L   (float32: the transpose of θ → c(θ))

so the loss and its gradient with respect to the logits are float32, and the gradients reach
the optimizer as float32. The model's new state is cast back to the master dtype.

Loss scaling. float16 has a 5-bit exponent: a gradient below 2⁻²⁴ becomes zero and one above
65504 overflows. Scaling the loss by S before the backward pass and the gradients by 1/S
after,

    g = ∇_θ (S · L) / S,

moves the backward's values up into float16's range. A step whose g is not finite (the
scaled backward overflowed) is skipped: parameters, optimizer state and model state stay as
they were, and the scale halves. With "dynamic" scaling S starts at 2¹⁵ and doubles after
2000 consecutive finite steps (the policy of jmp's DynamicLossScale, flax's DynamicScale
and torch.amp's GradScaler); a fixed scale skips the same way but never changes. The scale
and its count of good steps live in the TrainState (`LossScale`), so checkpoints keep them.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from ._validate import as_float, as_int
from .errors import FuncnetError

__all__ = ["LossScale", "LossScalePolicy", "dynamic_loss_scale", "resolve_compute_dtype",
           "resolve_loss_scale", "init_loss_scale", "current_loss_scale", "next_loss_scale",
           "all_finite", "cast_floats", "cast_like", "to_float32", "describe"]

DYNAMIC_INITIAL = 2.0 ** 15   # jmp / flax start at 2^15 (torch.amp at 2^16)
GROWTH_INTERVAL = 2000        # consecutive finite steps before the scale doubles
FACTOR = 2.0                  # the scale's growth (x2) and back-off (/2) factor
# The scale never falls below float32's smallest normal number (flax's minimum_scale).
MINIMUM = float(jnp.finfo(jnp.float32).tiny)

_NAMES = "float32, bfloat16 or float16 (float64 with jax_enable_x64)"


# ----------------------------------------------------------------------------- compute dtype

def resolve_compute_dtype(value, where: str):
    """The compute dtype to cast to, or None for no casts (None or float32: the plain
    float32 program). Accepts dtypes, their scalar types and names ("bfloat16")."""
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise FuncnetError(f"{where}: compute_dtype must be {_NAMES}, got {value!r}") from None
    if dtype == jnp.float32:
        return None
    if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return dtype
    if dtype == jnp.float64:
        if not jax.config.jax_enable_x64:
            raise FuncnetError(f"{where}: compute_dtype float64 needs 64-bit mode "
                               f"(jax.config.update('jax_enable_x64', True)); without it JAX "
                               f"computes in float32")
        return dtype
    raise FuncnetError(f"{where}: compute_dtype must be a floating dtype, {_NAMES}, "
                       f"got {dtype.name}")


def _cast(a, dtype):
    return a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a


def cast_floats(tree, dtype):
    """Every floating leaf of `tree` cast to `dtype`; integer leaves (ids, labels, counts)
    and PRNG keys unchanged."""
    return jax.tree_util.tree_map(lambda a: _cast(a, dtype), tree)


def cast_like(tree, like):
    """Every floating leaf of `tree` cast to the dtype of its counterpart in `like` (a
    model's new state back to its master dtype)."""
    return jax.tree_util.tree_map(
        lambda a, m: _cast(a, jnp.result_type(m)) if jnp.issubdtype(jnp.result_type(m), jnp.floating)
        else a, tree, like)


def to_float32(tree):
    """Floating leaves below float32 (bfloat16, float16) widened to float32."""
    def widen(a):
        t = jnp.result_type(a)
        return a.astype(jnp.float32) if jnp.issubdtype(t, jnp.floating) and t.itemsize < 4 else a

    return jax.tree_util.tree_map(widen, tree)


# ----------------------------------------------------------------------------- loss scaling

class LossScalePolicy(NamedTuple):
    """How the loss scale moves: `initial` scale, `dynamic` (halve on overflow, double
    after `growth_interval` consecutive finite steps) or fixed."""

    initial: float = DYNAMIC_INITIAL
    dynamic: bool = True
    growth_interval: int = GROWTH_INTERVAL


class LossScale(NamedTuple):
    """The loss scale a TrainState carries: `scale` (float32 scalar) and `good_steps`, the
    number of consecutive steps with finite gradients since the scale last changed (int32)."""

    scale: jax.Array
    good_steps: jax.Array


def dynamic_loss_scale(initial: float = DYNAMIC_INITIAL,
                       growth_interval: int = GROWTH_INTERVAL) -> LossScalePolicy:
    """A dynamic policy with another start or growth interval than "dynamic"'s 2¹⁵ / 2000
    (pass it as `loss_scale=`).

    Returns the LossScalePolicy; a FuncnetError when `initial` is not a positive finite
    number or `growth_interval` not a positive int.
    """
    where = "dynamic_loss_scale"
    return LossScalePolicy(as_float(initial, "initial", where, low=0, low_open=True,
                                    error=FuncnetError), True,
                           as_int(growth_interval, "growth_interval", where, error=FuncnetError))


def resolve_loss_scale(value, where: str) -> Optional[LossScalePolicy]:
    """None (no scaling), "dynamic", a fixed scale > 0, or a LossScalePolicy, checked."""
    if value is None or isinstance(value, LossScalePolicy):
        return value
    if isinstance(value, str):
        if value == "dynamic":
            return LossScalePolicy()
        raise FuncnetError(f"{where}: loss_scale must be None, \"dynamic\" or a number > 0, "
                           f"got the string {value!r}")
    scale = as_float(value, "loss_scale", where, low=0, low_open=True,
                     words="None, \"dynamic\" or a finite number > 0", error=FuncnetError)
    return LossScalePolicy(scale, False)


def init_loss_scale(policy: LossScalePolicy) -> LossScale:
    """The loss scale a run starts with."""
    return LossScale(jnp.asarray(policy.initial, jnp.float32), jnp.zeros((), jnp.int32))


def current_loss_scale(carried: Optional[LossScale], policy: LossScalePolicy) -> LossScale:
    """The scale for this step: the carried one for a dynamic policy (a TrainState without
    one starts at `policy.initial`), the policy's constant for a fixed one."""
    if carried is None:
        return init_loss_scale(policy)
    if not policy.dynamic:
        return carried._replace(scale=jnp.asarray(policy.initial, jnp.float32))
    return carried


def next_loss_scale(ls: LossScale, finite, policy: LossScalePolicy) -> LossScale:
    """The scale after a step: on overflow (not `finite`) halved and the count reset; after
    `growth_interval` consecutive finite steps doubled (while that stays finite) and the
    count reset; a fixed policy keeps its scale and only counts."""
    good = ls.good_steps + 1
    if not policy.dynamic:
        return LossScale(ls.scale, jnp.where(finite, good, 0).astype(jnp.int32))
    grow = good >= policy.growth_interval
    grown = ls.scale * FACTOR
    up = jnp.where(grow & jnp.isfinite(grown), grown, ls.scale)
    down = jnp.maximum(ls.scale / FACTOR, MINIMUM)
    scale = jnp.where(finite, up, down).astype(jnp.float32)
    return LossScale(scale, jnp.where(finite & ~grow, good, 0).astype(jnp.int32))


def all_finite(tree):
    """A boolean scalar: every element of every floating leaf is finite."""
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)
             if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def describe(compute_dtype, policy: Optional[LossScalePolicy]) -> str:
    """The policy in words, for logs: "bfloat16 compute, float32 master params and optimizer
    state, dynamic loss scale (from 2^15)"."""
    text = (f"{jnp.dtype(compute_dtype).name} compute, float32 master params and optimizer state"
            if compute_dtype is not None else "float32")
    if policy is not None:
        start = math.log2(policy.initial)
        start = f"2^{start:g}" if start == int(start) else f"{policy.initial:g}"
        text += (f", dynamic loss scale (from {start}, x2 after {policy.growth_interval} good "
                 f"steps)" if policy.dynamic else f", fixed loss scale {policy.initial:g}")
    return text
