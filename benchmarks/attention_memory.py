"""Memory and time of self_attention's forward + backward, plain against blockwise (flash
attention, `block_size`), at growing sequence lengths.

Workload: causal self-attention, dim 256, 4 heads, batch 2, float32, the hand-written
backward (`layer.forward` then `layer.backward`, what fn.backprop and with_manual_grads run).
For each T:
- the step's peak memory from XLA's compiled-program analysis
  (`jax.jit(step).lower(...).compile().memory_analysis()`: temp + output bytes; arguments,
  the params and x, are the same for both forms and left out);
- the cache's bytes, what a model holds per attention layer between its forward and its
  backward (from jax.eval_shape: nothing is run);
- seconds per step, both forms interleaved in one process (benchmarks.timing), medians with
  min–max over the repeats.
The outputs and gradients of the two forms are compared first (they must agree to float32
round-off). Then, for per-layer cache budgets, the longest power-of-two T whose cache fits
each form (eval_shape only, up to T = 65536). benchmarks/gpt2.py runs this (`report`).

    python -m benchmarks.attention_memory [--lengths 512 1024 2048] [--block 128]
        [--batch 2] [--repeats 5] [--inner 2] [--budget-mib 64 256 1024] [--dropout 0.0]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from benchmarks.timing import calls, interleaved

DIM, HEADS = 256, 4
MIB = float(1 << 20)


def layer_for(block_size, dropout):
    return fn.self_attention(HEADS, causal=True, dropout=dropout, block_size=block_size)


def step_for(layer):
    """(params, x, dy, key) -> (dparams, dx): one forward and the hand backward."""
    def step(params, x, dy, key):
        _, _, cache = layer.forward(params, {}, x, train=True, key=key)
        return layer.backward(params, cache, dy)
    return step


def cache_bytes(layer, params, batch, t):
    """Bytes of the cache the forward keeps for the backward, traced, not run."""
    x = jax.ShapeDtypeStruct((batch, t, DIM), jnp.float32)
    cache = jax.eval_shape(lambda p, x, k: layer.forward(p, {}, x, train=True, key=k)[2],
                           params, x, jax.random.PRNGKey(0))
    return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(cache))


def measure(t, args):
    """One row per form at length t: peak MiB, cache MiB, seconds per step."""
    key = jax.random.PRNGKey(0)
    forms = {"plain": layer_for(None, args.dropout),
             f"block {args.block}": layer_for(args.block, args.dropout)}
    params, _ = forms["plain"].init(key, (args.batch, t, DIM))
    x, dy = (jax.random.normal(jax.random.PRNGKey(i), (args.batch, t, DIM)) for i in (1, 2))
    steps, rows = {}, {}
    for name, layer in forms.items():
        compiled = jax.jit(step_for(layer)).lower(params, x, dy, key).compile()
        stats = compiled.memory_analysis()
        steps[name] = compiled
        rows[name] = {"peak": (stats.temp_size_in_bytes + stats.output_size_in_bytes) / MIB,
                      "cache": cache_bytes(layer, params, args.batch, t) / MIB}
    (gp, dxp), (gb, dxb) = (steps[n](params, x, dy, key) for n in forms)
    worst = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))  # per leaf, scaled
                for a, b in zip(jax.tree_util.tree_leaves((gp, dxp)), jax.tree_util.tree_leaves((gb, dxb))))
    times = interleaved({n: calls(s, params, x, dy, key) for n, s in steps.items()},
                        repeats=args.repeats, inner=args.inner, warmup=1)
    for name in forms:
        rows[name]["times"] = times[name]
    return rows, worst


def longest_fitting(block_size, args, budget_bytes, cap=65536):
    """The longest power-of-two T (from 128) whose cache fits the budget, or None."""
    layer = layer_for(block_size, args.dropout)
    params, _ = layer.init(jax.random.PRNGKey(0), (1, 1, DIM))
    best, t = None, 128
    while t <= cap and cache_bytes(layer, params, args.batch, t) <= budget_bytes:
        best, t = t, 2 * t
    return best


def parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_memory",
                                description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--inner", type=int, default=2)
    p.add_argument("--budget-mib", type=float, nargs="+", default=[64.0, 256.0, 1024.0])
    p.add_argument("--dropout", type=float, default=0.0)
    return p


def report(args):
    """Measure and print the tables for parsed `args` (see `parser`)."""
    print(f"self_attention, causal, dim {DIM}, {HEADS} heads, batch {args.batch}, float32, "
          f"dropout {args.dropout}; forward + hand backward; {jax.devices()[0].platform}")
    print(f"{'T':>6}  {'form':<10} {'peak MiB':>9} {'cache MiB':>10} {'ms/step median [min-max]':>28}")
    for t in args.lengths:
        rows, worst = measure(t, args)
        for name, r in rows.items():
            ms = np.asarray(r["times"]) * 1e3
            print(f"{t:>6}  {name:<10} {r['peak']:>9.1f} {r['cache']:>10.1f} "
                  f"{np.median(ms):>12.1f} [{ms.min():.1f}-{ms.max():.1f}]")
        print(f"{'':>6}  gradients agree: worst max|diff| / max|plain| {worst:.1e}")
    print(f"longest power-of-two T (to 65536) whose cache fits a per-layer budget, batch {args.batch}:")
    for mib in args.budget_mib:
        plain, block = (longest_fitting(b, args, mib * MIB) for b in (None, args.block))
        print(f"  {mib:>6g} MiB: plain {plain}, block {args.block} {block}")


def main(argv=None):
    report(parser().parse_args(argv))


if __name__ == "__main__":
    main()
