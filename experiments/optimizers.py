"""Optimizers (note 004): full-batch gradient descent vs mini-batch SGD (batch 64 to 512)
vs momentum vs Adam, on the same net and data, as loss vs steps and loss vs seconds.

One step is θ ← θ + opt.update(∇L_B(θ)) on a batch B (`fn.train.make_step`). Full-batch GD
takes the exact gradient of the training loss, at the price of the whole set per step;
mini-batches trade gradient noise for cheap steps (Ng: sizes 64 to 512, powers of two).
Momentum averages the gradients, v ← βv + g, θ ← θ − ηv; Adam scales each coordinate by a
running estimate of its gradient's second moment. The loss is the full training set's
cross-entropy, measured every few steps (outside the timed steps); the clock counts the
compiled steps only (compilation is done before it starts).
"""
from __future__ import annotations

import time

import jax
import numpy as np
import optax

import funcnet as fn
from experiments import common
from experiments.fc_net import fc_net

NAME = "optimizers"


def settings(n_train: int, quick: bool = False):
    """name -> (optimizer, batch size)."""
    runs = {"GD (full batch)": (optax.sgd(0.1), n_train),
            "SGD b=64": (optax.sgd(0.1), 64), "SGD b=128": (optax.sgd(0.1), 128),
            "SGD b=256": (optax.sgd(0.1), 256), "SGD b=512": (optax.sgd(0.1), 512),
            "momentum 0.9 b=64": (optax.sgd(0.02, momentum=0.9), 64),
            "Adam b=64": (optax.adam(1e-3), 64)}
    if quick:
        runs = {k: runs[k] for k in ("GD (full batch)", "SGD b=64", "Adam b=64")}
    return runs


def run(model, optimizer, batch_size, data, *, steps, eval_every, init_key, data_key):
    """Train for `steps` steps from the weights `init_key` gives; return the steps, the
    seconds and the full training loss at each evaluation point (step 0 included)."""
    x, y = data
    loss = fn.losses.softmax_cross_entropy
    k_init, k_data = init_key, data_key
    ts = fn.train.init_train_state(model, optimizer, (batch_size,) + x.shape[1:], k_init)
    step = fn.train.make_step(model, optimizer, loss)
    step = step.lower(ts, x[:batch_size], y[:batch_size]).compile()  # compile off the clock
    rng = np.random.default_rng(np.asarray(k_data))
    order, pos = rng.permutation(len(x)), 0
    record = {"step": [0], "seconds": [0.0],
              "loss": [fn.train.evaluate(model, ts.params, ts.state, x, y)["loss"]]}
    clock = 0.0
    for s in range(1, steps + 1):
        if pos + batch_size > len(x):  # a new epoch: reshuffle (full batches only)
            order, pos = rng.permutation(len(x)), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        xb, yb = x[idx], y[idx]
        start = time.perf_counter()
        ts, metrics = step(ts, xb, yb)
        jax.block_until_ready(metrics["loss"])
        clock += time.perf_counter() - start
        if s % eval_every == 0 or s == steps:
            record["step"].append(s)
            record["seconds"].append(clock)
            record["loss"].append(fn.train.evaluate(model, ts.params, ts.state, x, y)["loss"])
    return record


def first_below(record, threshold):
    """(step, seconds) at the first evaluation with loss below threshold, or (None, None)."""
    for s, t, v in zip(record["step"], record["seconds"], record["loss"]):
        if v < threshold:
            return s, t
    return None, None


def add_arguments(p):
    p.add_argument("--steps", type=int, default=400, help="steps per optimizer (default %(default)s)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="training loss whose first crossing is reported (default %(default)s)")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    steps = 60 if args.quick else args.steps
    (xtr, ytr), _ = fn.data.load("digits", scale="standard", seed=args.seed)
    xtr = xtr.reshape(len(xtr), -1)
    model = fc_net((128,), weight_scale=0.05)
    key = jax.random.PRNGKey(args.seed)
    records, summary = {}, {}
    for name, (optimizer, batch_size) in settings(len(xtr), args.quick).items():
        # The same initial weights for every optimizer; the batches differ with their size.
        records[name] = run(model, optimizer, batch_size, (xtr, ytr), steps=steps,
                            eval_every=max(steps // 40, 1), init_key=key,
                            data_key=jax.random.fold_in(key, batch_size))
        s, t = first_below(records[name], args.threshold)
        r = records[name]
        summary[name] = {"batch_size": batch_size, "final_loss": r["loss"][-1],
                         "ms_per_step": 1000 * r["seconds"][-1] / steps,
                         "steps_to_threshold": s, "seconds_to_threshold": t}
        print(f"{name:18s} final loss {r['loss'][-1]:.4f}  {summary[name]['ms_per_step']:.2f} "
              f"ms/step  loss < {args.threshold} after "
              + ("never" if s is None else f"{s} steps, {t:.2f} s"))

    fig, ax = common.figure(2)
    common.plot_curves(ax[0, 0], {k: (r["step"], r["loss"]) for k, r in records.items()},
                       xlabel="step", ylabel="training loss", logy=True, title="loss vs steps")
    common.plot_curves(ax[0, 1], {k: (r["seconds"], r["loss"]) for k, r in records.items()},
                       xlabel="seconds (compiled steps only)", ylabel="training loss", logy=True,
                       title="loss vs wall time")
    common.save(fig, args, "optimizers.png")
    return common.write_metrics(args, {"steps": steps, "threshold": args.threshold,
                                       "summary": summary, "curves": records})


if __name__ == "__main__":
    common.cli(main)
