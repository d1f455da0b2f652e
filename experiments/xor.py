"""XOR: a single perceptron cannot fit it; one hidden layer can (note 001).

The four points (0,0)→0, (0,1)→1, (1,0)→1, (1,1)→0 are not linearly separable, so a single
sigmoid neuron σ(x·w + b) — whose decision boundary is a line — classifies at most 3 of
them. A one-hidden-layer MLP, σ(tanh(x W₁ + b₁) W₂ + b₂) (or sigmoid hidden units), fits
them. Both are trained as in the notes: squared error E = mean (ŷ − y)² and gradient
descent with the δ rule, i.e. the layers' hand-derived backward formulas, plugged into
`jax.grad` by `fn.with_manual_grads`.
"""
from __future__ import annotations

import jax
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "xor"
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
Y = np.array([[0], [1], [1], [0]], np.float32)


def perceptron() -> fn.Layer:
    """One neuron: ŷ = σ(x·w + b)."""
    return fn.serial(fn.dense(1), fn.sigmoid)


def mlp(hidden: int = 4, activation: fn.Layer = fn.tanh) -> fn.Layer:
    """One hidden layer: ŷ = σ(act(x W₁ + b₁) W₂ + b₂)."""
    return fn.serial(fn.dense(hidden, w_init=fn.initializers.gaussian(1.0)), activation,
                     fn.dense(1), fn.sigmoid)


def add_arguments(p):
    p.add_argument("--epochs", type=int, default=2000,
                   help="full-batch gradient steps (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.5, help="learning rate (default %(default)s)")


def train(model, key, epochs, lr, progress):
    """Full-batch gradient descent with momentum on the squared error, gradients by the
    hand formulas (with_manual_grads)."""
    state, history = fn.train.fit(fn.with_manual_grads(model), optax.sgd(lr, momentum=0.9),
                                  (X, Y), loss=fn.losses.mse, epochs=epochs, batch_size=4,
                                  key=key, progress=progress)
    return state, history


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    epochs = 300 if args.quick else args.epochs
    key = jax.random.PRNGKey(args.seed)
    models = {"perceptron": perceptron(), "mlp_tanh": mlp(4, fn.tanh),
              "mlp_sigmoid": mlp(4, fn.sigmoid)}
    if args.quick:
        models.pop("mlp_sigmoid")
    metrics, curves, trained = {"epochs": epochs}, {}, {}
    for (name, model), k in zip(models.items(), jax.random.split(key, len(models))):
        with common.timed(metrics, f"{name}_train_s"):
            ts, history = train(model, k, epochs, args.lr, args.progress)
        pred = np.asarray(model.apply(ts.params, ts.state, X)[0])
        trained[name] = (model, ts)
        curves[name] = history["loss"]
        metrics[name] = {"predictions": pred.ravel().round(4).tolist(),
                         "accuracy": float(np.mean((pred > 0.5) == (Y > 0.5))),
                         "final_mse": float(np.mean((pred - Y) ** 2))}

    # The δ rule is the gradient: compare it with autodiff at the MLP's initial weights
    # (where the gradients are large; at convergence float32 round-off dominates them).
    model = trained["mlp_tanh"][0]
    params, state = model.init(key, X.shape)
    objective = lambda m: (lambda p: fn.losses.mse(m.apply(p, state, X)[0], Y))
    g_manual = jax.grad(objective(fn.with_manual_grads(model)))(params)
    g_auto = jax.grad(objective(model))(params)
    metrics["delta_rule_vs_autodiff_rel_error"] = fn.rel_error(g_manual, g_auto)
    metrics["perceptron_solves_xor"] = metrics["perceptron"]["accuracy"] == 1.0
    metrics["mlp_solves_xor"] = metrics["mlp_tanh"]["accuracy"] == 1.0

    # Decision boundaries over the unit square.
    g = np.linspace(-0.5, 1.5, 121, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    fig, ax = common.figure(len(trained) + 1, size=(3.6, 3.4))
    for a, (name, (m, t)) in zip(ax[0], trained.items()):
        out = np.asarray(m.apply(t.params, t.state, grid)[0]).reshape(len(g), len(g))
        a.contourf(g, g, out, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.8)
        a.contour(g, g, out, levels=[0.5], colors="k")
        a.scatter(X[:, 0], X[:, 1], c=Y[:, 0], cmap="RdBu_r", edgecolors="k", s=80)
        a.set_title(f"{name}: {metrics[name]['accuracy']:.0%} correct", fontsize=9)
    common.plot_curves(ax[0, -1], curves, xlabel="step", ylabel="squared error", logy=True)
    common.save(fig, args, "decision_boundaries.png")
    print(f"XOR: perceptron {metrics['perceptron']['accuracy']:.0%}, "
          f"MLP (tanh) {metrics['mlp_tanh']['accuracy']:.0%}, "
          + (f"MLP (sigmoid) {metrics['mlp_sigmoid']['accuracy']:.0%} " if "mlp_sigmoid" in metrics
             else "") + "correct")
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
