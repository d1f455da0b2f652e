"""Branches and the newer layers, timed: `python -m benchmarks.branches [--repeats 7]`.

1. A residual block's training step (jit, Adam): `with_manual_grads` (the hand formulas
   through fanout / parallel / fanin_sum, conv, batch norm) against plain `jax.grad`.
2. conv_transpose2d forward + backward (hand formulas, jit) against PyTorch's
   `torch.nn.functional.conv_transpose2d` + autograd (eager, NCHW), after checking that the
   two agree on y, dx, dW and db.

Both comparisons run in one process, interleaved (benchmarks/timing.py): medians per step
and the min-max over repeats. Prints a markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import optax

import funcnet as fn
from benchmarks.timing import Timing, interleaved


def residual_step(repeats, inner, runners_only=False):
    block = fn.serial(fn.residual(fn.conv2d(16, 3, padding="SAME"), fn.batch_norm(), fn.relu,
                                  fn.conv2d(16, 3, padding="SAME"), fn.batch_norm()),
                      fn.relu, fn.global_avg_pool, fn.dense(10))
    shape = (64, 14, 14, 16)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 10)
    opt = optax.adam(1e-3)
    runners, compile_s = {}, {}
    for name, model in (("autodiff (jax.grad)", block), ("with_manual_grads", fn.with_manual_grads(block))):
        step = fn.train.make_step(model, opt, fn.losses.softmax_cross_entropy, donate=False)
        ts = fn.train.init_train_state(model, opt, shape, jax.random.PRNGKey(0))
        _, secs = _timed_block(lambda step=step, ts=ts: step(ts, x, y))
        compile_s[name] = secs

        def run(n, step=step, ts=ts):
            for _ in range(n):
                ts, metrics = step(ts, x, y)
            jax.block_until_ready(metrics["loss"])

        runners[name] = run
    if runners_only:
        return runners
    times = interleaved(runners, repeats=repeats, inner=inner)
    return [Timing(k, v, compile_s=compile_s[k]) for k, v in times.items()]


def _timed_block(f):
    import time
    t0 = time.perf_counter()
    out = jax.block_until_ready(f())
    return out, time.perf_counter() - t0


def conv_transpose(repeats, inner):
    import torch
    import torch.nn.functional as F
    n, h, c_in, c_out, k, s, p = 32, 14, 16, 8, 4, 2, 1  # 14x14 -> 28x28 upsampling
    layer = fn.conv_transpose2d(c_out, k, s, p)
    params, _ = layer.init(jax.random.PRNGKey(0), (n, h, h, c_in))
    params["b"] = jax.random.normal(jax.random.PRNGKey(3), (c_out,))
    x = jax.random.normal(jax.random.PRNGKey(1), (n, h, h, c_in))
    out_shape = layer.output_shape(x.shape)
    dy = jax.random.normal(jax.random.PRNGKey(2), out_shape)
    fwd_bwd = jax.jit(lambda p, x, dy: (layer.apply(p, {}, x)[0], fn.backprop(layer, p, {}, x, dy)))
    (y, (dp, dx)) = fwd_bwd(params, x, dy)

    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(np.asarray(params["w"]).transpose(2, 3, 0, 1).copy()).requires_grad_()
    bt = torch.from_numpy(np.asarray(params["b"]).copy()).requires_grad_()
    dyt = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())

    def torch_step():
        for t in (xt, wt, bt):
            t.grad = None
        yt = F.conv_transpose2d(xt, wt, bt, stride=s, padding=p)
        yt.backward(dyt)
        return yt

    yt = torch_step()
    agree = {"y": _rel(y, yt.detach().numpy().transpose(0, 2, 3, 1)),
             "dx": _rel(dx, xt.grad.numpy().transpose(0, 2, 3, 1)),
             "dW": _rel(dp["w"], wt.grad.numpy().transpose(2, 3, 0, 1)),
             "db": _rel(dp["b"], bt.grad.numpy())}
    assert all(v < 1e-5 for v in agree.values()), agree

    def run_funcnet(m):
        for _ in range(m):
            out = fwd_bwd(params, x, dy)
        jax.block_until_ready(out)

    def run_torch(threads):
        def run(m):
            torch.set_num_threads(threads)
            for _ in range(m):
                torch_step()
        return run

    # PyTorch's OpenMP threads spin while they wait: on a loaded machine its default thread
    # count can be far slower than one thread, so both are timed.
    default_threads = torch.get_num_threads()
    runners = {"funcnet conv_transpose2d (hand backward, jit)": run_funcnet,
               "torch ConvTranspose2d + autograd, 1 thread": run_torch(1)}
    if default_threads > 1:
        runners[f"torch ConvTranspose2d + autograd, {default_threads} threads"] = run_torch(default_threads)
    times = interleaved(runners, repeats=repeats, inner=inner)
    torch.set_num_threads(default_threads)
    return [Timing(k, v) for k, v in times.items()], agree, (n, h, c_in, c_out, k, s, p)


def _rel(a, b):
    """max |a − b| / max |b| (float32 sums in different orders: near-zero entries would
    make an element-wise ratio meaningless)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def table(rows, baseline):
    base = next(r for r in rows if r.name == baseline).median
    lines = ["| | ms/step (median) | min–max | vs " + baseline + " |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.median * 1e3:.2f} | {r.lo * 1e3:.2f}–{r.hi * 1e3:.2f} | "
                     f"{base / r.median:.2f}× |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.branches", description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=10)
    args = p.parse_args(argv)
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    rows = residual_step(args.repeats, args.inner)
    print("\nResidual block step (batch 64, 14x14x16, two 3x3 conv-bn, Adam):")
    print(table(rows, "autodiff (jax.grad)"))
    print("compile s: " + ", ".join(f"{r.name} {r.compile_s:.1f}" for r in rows))
    rows, agree, shape = conv_transpose(args.repeats, args.inner)
    print(f"\nconv_transpose2d forward+backward (N, H, C_in, C_out, k, s, p) = {shape}; "
          f"agreement with torch (max |Δ| / max |torch|): "
          + ", ".join(f"{k} {v:.1e}" for k, v in agree.items()))
    print(table(rows, rows[1].name))


if __name__ == "__main__":
    main()
