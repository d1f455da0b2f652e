"""The cs231n fully-connected net (note 000), on the digits and on MNIST-5k.

    {affine - [batch norm] - relu - [dropout]} x (L − 1) - affine - softmax

with Gaussian weights of a fixed std (cs231n's weight_scale), L2 regularization
½ λ Σ w² on the weights, and the softmax folded into the cross-entropy loss. Four variants —
plain, batch norm, dropout, both — each trained the same way; the study reports their
test accuracy and loss curves, and shows the first layer's weights as images.
"""
from __future__ import annotations

import jax
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "fc_net"
VARIANTS = {"plain": dict(batch_norm=False, dropout=0.0),
            "batch_norm": dict(batch_norm=True, dropout=0.0),
            "dropout": dict(batch_norm=False, dropout=0.25),
            "batch_norm+dropout": dict(batch_norm=True, dropout=0.25)}


def fc_net(hidden=(256, 256), classes: int = 10, *, batch_norm: bool = False,
           dropout: float = 0.0, weight_scale: float = 0.05) -> fn.Layer:
    """flatten - {dense - [batch_norm] - relu - [dropout]} per hidden size - dense(classes).
    Weights ~ N(0, weight_scale²), biases 0 (cs231n's FullyConnectedNet)."""
    layers = [fn.flatten]
    for width in hidden:
        layers.append(fn.dense(width, w_init=weight_scale))
        if batch_norm:
            layers.append(fn.batch_norm())
        layers.append(fn.relu)
        if dropout:
            layers.append(fn.dropout(dropout))
    return fn.serial(*layers, fn.dense(classes, w_init=weight_scale))


def add_arguments(p):
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"],
                   choices=["digits", "mnist5k"], help="datasets (default: both)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256],
                   help="hidden layer widths (default %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="epochs (default %(default)s)")
    p.add_argument("--l2", type=float, default=1e-4, help="L2 strength λ (default %(default)s)")
    p.add_argument("--weight-scale", type=float, default=0.05,
                   help="std of the Gaussian weights (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")


def run(model, data, *, epochs, l2, lr, key, progress):
    """Train with Adam and L2; return (train_state, history, final test accuracy)."""
    (xtr, ytr), (xte, yte) = data
    ts, history = fn.train.fit(model, optax.adam(lr), (xtr, ytr),
                               loss=fn.losses.softmax_cross_entropy, epochs=epochs,
                               batch_size=64, key=key, val_data=(xte, yte), l2=l2,
                               progress=progress)
    return ts, history, history["val_accuracy"][-1]


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    epochs = 4 if args.quick else args.epochs
    key = jax.random.PRNGKey(args.seed)
    metrics = {"hidden": args.hidden, "epochs": epochs, "l2": args.l2,
               "weight_scale": args.weight_scale, "test_accuracy": {}, "wall_s": {}}
    datasets, variants = args.datasets, VARIANTS
    if args.quick:  # the digits, without and with batch norm
        datasets, variants = ["digits"], {k: VARIANTS[k] for k in ("plain", "batch_norm")}
    for dataset in datasets:
        data = fn.data.load(dataset, scale="standard", seed=args.seed)
        fig, ax = common.figure(2)
        accs, first_layer = {}, None
        for name, options in variants.items():
            model = fc_net(tuple(args.hidden), batch_norm=options["batch_norm"],
                           dropout=options["dropout"], weight_scale=args.weight_scale)
            key, k = jax.random.split(key)
            with common.timed(metrics["wall_s"], f"{dataset}/{name}"):
                ts, history, acc = run(model, data, epochs=epochs, l2=args.l2, lr=args.lr, key=k,
                                       progress=args.progress)
            accs[name] = acc
            ax[0, 0].plot(np.arange(1, epochs + 1), history["loss"], label=f"{name} train")
            ax[0, 1].plot(np.arange(1, epochs + 1), history["val_accuracy"], label=name)
            if name == "batch_norm":
                first_layer = np.asarray(ts.params[1]["w"])
        metrics["test_accuracy"][dataset] = accs
        ax[0, 0].set(xlabel="epoch", ylabel="cross-entropy", yscale="log",
                     title=f"{dataset}: training loss")
        ax[0, 1].set(xlabel="epoch", ylabel="test accuracy", title=f"{dataset}: test accuracy")
        for a in ax[0]:
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
        common.save(fig, args, f"curves_{dataset}.png")
        side = int(round(np.sqrt(first_layer.shape[0])))
        units = first_layer.T[:32].reshape(-1, side, side)
        common.save(common.image_grid(units, ncols=8, cmap="RdBu_r",
                                      suptitle=f"{dataset}: first-layer weights (batch norm net)"),
                    args, f"weights_{dataset}.png")
        print(f"{dataset}: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items()))
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
