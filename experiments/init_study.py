"""Initialization study (Ng, note 004): Gaussian(0.01), Gaussian(1), Xavier and He weights
on a 10-layer ReLU or tanh net.

With N(0, s²) weights and fan-in n, one layer multiplies the spread of its input by about
s·√n (times √½ for ReLU, which zeroes half of it). Over ten layers that factor is raised to
the tenth power: s = 0.01 makes the activations (and the gradients) vanish, s = 1 makes
them explode (ReLU) or saturate (tanh). Xavier, s = √(1/n), keeps the factor near 1 for
tanh; He, s = √(2/n), for ReLU. The study measures the per-layer spread of the activations
and of the weight gradients (by `fn.backprop`) at initialization, then trains each net.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "init_study"
INITS = {"gaussian(0.01)": fn.initializers.gaussian(0.01),
         "gaussian(1)": fn.initializers.gaussian(1.0),
         "xavier": fn.initializers.xavier, "he": fn.initializers.he}
ACTIVATIONS = {"relu": fn.relu, "tanh": fn.tanh}
QUICK_TRAINED = ("relu/gaussian(0.01)", "relu/he")  # --quick trains only these two


def deep_net(depth: int = 10, width: int = 64, activation: fn.Layer = fn.relu,
             w_init=fn.initializers.he, classes: int = 10) -> fn.Layer:
    """depth dense layers: {dense(width) - activation} x (depth − 1) - dense(classes)."""
    layers = []
    for _ in range(depth - 1):
        layers += [fn.dense(width, w_init=w_init), activation]
    return fn.serial(*layers, fn.dense(classes, w_init=w_init))


def spreads(model, params, state, x, labels):
    """Per hidden layer: std of its activations, and std of its weight gradient dW (by the
    hand formulas, `fn.backprop`, of the cross-entropy)."""
    acts, h = [], x
    for layer, p, s in zip(model.layers, params, state):
        h = layer.apply(p, s, h)[0]
        if layer.name in ACTIVATIONS:
            acts.append(float(jnp.std(h)))
    logits = model.apply(params, state, x)[0]
    dy = fn.losses.softmax_cross_entropy.grad(logits, labels)
    dparams, _ = fn.backprop(model, params, state, x, dy)
    grads = [float(jnp.std(d["w"])) for d in dparams if "w" in d]
    return acts, grads


def add_arguments(p):
    p.add_argument("--depth", type=int, default=10, help="dense layers (default %(default)s)")
    p.add_argument("--width", type=int, default=64, help="units per layer (default %(default)s)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.01,
                   help="SGD learning rate, momentum 0.9 (default %(default)s)")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    epochs = 3 if args.quick else args.epochs
    (xtr, ytr), (xte, yte) = fn.data.load("digits", scale="standard", seed=args.seed)
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    if args.quick:
        xtr, ytr = xtr[:512], ytr[:512]
    key = jax.random.PRNGKey(args.seed)
    results, curves = {}, {}
    fig_s, ax_s = common.figure(2, 2, size=(4.4, 3.2))
    for row, (act_name, act) in enumerate(ACTIVATIONS.items()):
        for init_name, init in INITS.items():
            name = f"{act_name}/{init_name}"
            key, k_init, k_fit = jax.random.split(key, 3)
            model = deep_net(args.depth, args.width, act, init)
            params, state = model.init(k_init, (1, xtr.shape[1]))
            acts, grads = spreads(model, params, state, xtr[:512], ytr[:512])
            results[name] = result = {"activation_std": acts, "weight_grad_std": grads}
            ax_s[row, 0].semilogy(np.arange(1, len(acts) + 1), np.maximum(acts, 1e-30), "o-",
                                  label=init_name)
            ax_s[row, 1].semilogy(np.arange(1, len(grads) + 1), np.maximum(grads, 1e-30), "o-",
                                  label=init_name)
            if args.quick and name not in QUICK_TRAINED:
                continue
            try:
                ts, history = fn.train.fit(model, optax.sgd(args.lr, momentum=0.9), (xtr, ytr),
                                           loss=fn.losses.softmax_cross_entropy, epochs=epochs,
                                           batch_size=64, key=k_fit, progress=args.progress,
                                           initial=(params, state))
                test = fn.train.evaluate(model, ts.params, ts.state, xte, yte)
                result["test_accuracy"] = test["accuracy"]
                result["train_loss"] = history["loss"]
                curves[name] = history["loss"]
            except fn.train.NonFiniteLossError as e:  # the net diverged
                result["test_accuracy"] = None
                result["diverged_at_step"] = e.step
        ax_s[row, 0].set_title(f"{act_name}: activation std per layer")
        ax_s[row, 1].set_title(f"{act_name}: std of dW per layer")
        for a in ax_s[row]:
            a.set_xlabel("layer")
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    common.save(fig_s, args, "spreads.png")

    fig, ax = common.figure(2)
    for i, act_name in enumerate(ACTIVATIONS):
        common.plot_curves(ax[0, i], {k.split("/")[1]: v for k, v in curves.items()
                                      if k.startswith(act_name + "/")},
                           title=f"{args.depth}-layer {act_name} net", logy=True)
    common.save(fig, args, "training.png")

    table = {k: r["test_accuracy"] for k, r in results.items() if "test_accuracy" in r}
    print("test accuracy: " + ", ".join(f"{k} {'diverged' if v is None else f'{v:.3f}'}"
                                        for k, v in table.items()))
    last = {k: r["activation_std"][-1] for k, r in results.items()}
    print("last hidden layer's activation std at init: "
          + ", ".join(f"{k} {v:.1e}" for k, v in last.items()))
    return common.write_metrics(args, {"depth": args.depth, "width": args.width,
                                       "epochs": epochs, "test_accuracy": table,
                                       "last_activation_std": last,
                                       "runs": results})


if __name__ == "__main__":
    common.cli(main)
