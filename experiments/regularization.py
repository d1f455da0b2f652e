"""Regularization (notes 000, 004): no regularization vs L2 at several strengths vs dropout
at several rates, on a deliberately small training set (so the net can memorize it), and
the train/test gap each leaves.

L2 adds ½ λ Σ w² to the loss (weights only; its gradient λw shrinks every weight a little
each step, "weight decay"). Inverted dropout zeroes each hidden unit with probability p in
training and scales the survivors by 1/(1 − p), so evaluation uses the whole net unchanged.
"""
from __future__ import annotations

import jax
import numpy as np
import optax

import funcnet as fn
from experiments import common
from experiments.fc_net import fc_net

NAME = "regularization"


def add_arguments(p):
    p.add_argument("--train-size", type=int, default=300,
                   help="training examples kept (default %(default)s, of 1437)")
    p.add_argument("--epochs", type=int, default=60, help="(default %(default)s)")
    p.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2],
                   help="L2 strengths λ (default %(default)s)")
    p.add_argument("--dropout", type=float, nargs="+", default=[0.25, 0.5],
                   help="dropout rates (default %(default)s)")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    epochs = 12 if args.quick else args.epochs
    l2s = args.l2[-1:] if args.quick else args.l2
    rates = [] if args.quick else args.dropout
    (xtr, ytr), (xte, yte) = fn.data.load("digits", scale="standard", seed=args.seed)
    xtr, ytr = xtr[:args.train_size], ytr[:args.train_size]
    settings = {"none": (0.0, 0.0)}
    settings.update({f"l2 λ={lam:g}": (lam, 0.0) for lam in l2s})
    settings.update({f"dropout p={p:g}": (0.0, p) for p in rates})
    key = jax.random.PRNGKey(args.seed)
    results, curves = {}, {}
    for name, (lam, rate) in settings.items():
        key, k = jax.random.split(key)
        model = fc_net((256, 256), dropout=rate, weight_scale=0.05)
        ts, history = fn.train.fit(model, optax.adam(1e-3), (xtr, ytr),
                                   loss=fn.losses.softmax_cross_entropy, epochs=epochs,
                                   batch_size=50, key=k, l2=lam, val_data=(xte, yte),
                                   progress=args.progress)
        train = fn.train.evaluate(model, ts.params, ts.state, xtr, ytr)
        test = fn.train.evaluate(model, ts.params, ts.state, xte, yte)
        results[name] = {"train_accuracy": train["accuracy"], "test_accuracy": test["accuracy"],
                         "train_loss": train["loss"], "test_loss": test["loss"],
                         "gap": train["accuracy"] - test["accuracy"],
                         "weight_norm": float(np.sqrt(2 * fn.losses.l2(ts.params, 1.0)))}
        curves[name] = history["val_loss"]

    names = list(results)
    fig, ax = common.figure(2, size=(5, 3.6))
    pos = np.arange(len(names))
    ax[0, 0].bar(pos - 0.2, [results[n]["train_accuracy"] for n in names], 0.4, label="train")
    ax[0, 0].bar(pos + 0.2, [results[n]["test_accuracy"] for n in names], 0.4, label="test")
    ax[0, 0].set_xticks(pos, names, rotation=30, ha="right", fontsize=7)
    ax[0, 0].set_ylim(0.8, 1.005)
    ax[0, 0].set_title(f"accuracy, {len(xtr)} training digits")
    ax[0, 0].legend(fontsize=7)
    common.plot_curves(ax[0, 1], curves, ylabel="test cross-entropy", title="test loss", logy=True)
    common.save(fig, args, "regularization.png")
    best = max(names, key=lambda n: results[n]["test_accuracy"])
    for n in names:
        r = results[n]
        print(f"{n:16s} train {r['train_accuracy']:.4f} test {r['test_accuracy']:.4f} "
              f"gap {r['gap']:.4f} test loss {r['test_loss']:.3f} |w| {r['weight_norm']:.1f}")
    return common.write_metrics(args, {"train_size": len(xtr), "epochs": epochs,
                                       "results": results, "best": best,
                                       "gap_none": results["none"]["gap"],
                                       "gap_best": results[best]["gap"]})


if __name__ == "__main__":
    common.cli(main)
