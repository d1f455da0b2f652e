"""Regression losses (notes 002, 003) and ReLUs as building blocks.

1. scikit-learn's diabetes (442 patients, 10 features, disease progression after a year):
   the same small ReLU net trained with MSE, with MAE and with RMSE as the loss,
       MSE = (1/n) Σ (ŷ − y)²,   MAE = (1/n) Σ |ŷ − y|,   RMSE = √MSE,
   each reported on the test split in all three metrics (in the target's units). MSE and
   RMSE have the same minimizer (√ is monotone) but RMSE's gradient is MSE's divided by
   2·RMSE; MAE's minimizer is a conditional median, and its gradient sign(ŷ − y)/n ignores
   how far off a prediction is.
2. A 1-D curve fitted by one hidden ReLU layer, ŷ(x) = c₀ + Σ_k c_k max(0, a_k x + b_k):
   a sum of hinges, each a "building block" that bends the line at x = −b_k / a_k.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "losses"
LOSSES = {"mse": fn.losses.mse, "mae": fn.losses.mae, "rmse": fn.losses.rmse}


def regressor(hidden=(32,)) -> fn.Layer:
    """{dense - relu} per hidden width - dense(1)."""
    layers = []
    for width in hidden:
        layers += [fn.dense(width, w_init=fn.initializers.he), fn.relu]
    return fn.serial(*layers, fn.dense(1))


def relu_sum(units: int) -> fn.Layer:
    """ŷ = c₀ + Σ_k c_k relu(a_k x + b_k) for scalar x: hinges at x = −b_k / a_k, spread
    around [−1, 1] at initialization (a ~ N(0, 1), b uniform in [−1, 1]). A unit whose hinge
    starts outside the data and faces away from it is dead from the start."""
    spread = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    return fn.serial(fn.dense(units, w_init=fn.initializers.gaussian(1.0), b_init=spread), fn.relu,
                     fn.dense(1, w_init=fn.initializers.gaussian(0.1)))


def curve(x):
    """The 1-D target: a smooth wiggle on [−1, 1]."""
    return np.sin(3 * x) + 0.5 * np.cos(7 * x)


def add_arguments(p):
    p.add_argument("--epochs", type=int, default=300, help="diabetes epochs (default %(default)s)")
    p.add_argument("--units", type=int, nargs="+", default=[4, 8, 32],
                   help="ReLU counts for the 1-D fit (default %(default)s)")
    p.add_argument("--fit-epochs", type=int, default=1500,
                   help="full-batch epochs of the 1-D fit (default %(default)s)")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    epochs, fit_epochs = (40, 300) if args.quick else (args.epochs, args.fit_epochs)
    key = jax.random.PRNGKey(args.seed)
    (xtr, ytr), (xte, yte) = fn.data.load("diabetes", seed=args.seed)
    # Train on standardized targets (statistics of the training split), report in y's units.
    mu, sd = float(ytr.mean()), float(ytr.std())
    metrics = {"epochs": epochs, "diabetes": {}, "target_std": sd}
    curves = {}
    for name, loss in LOSSES.items():
        key, k_fit = jax.random.split(key)
        model = regressor()
        ts, history = fn.train.fit(model, optax.adam(1e-3), (xtr, (ytr - mu) / sd), loss=loss,
                                   epochs=epochs, batch_size=32, key=k_fit, progress=args.progress)
        pred = np.asarray(model.apply(ts.params, ts.state, xte)[0]) * sd + mu
        metrics["diabetes"][f"trained_with_{name}"] = {
            m: float(f(jnp.asarray(pred), jnp.asarray(yte))) for m, f in LOSSES.items()}
        curves[name] = history["loss"]
    baseline = np.full_like(yte, mu)
    metrics["diabetes"]["predict_the_mean"] = {
        m: float(f(jnp.asarray(baseline), jnp.asarray(yte))) for m, f in LOSSES.items()}

    # The 1-D sum of ReLUs.
    x = np.linspace(-1, 1, 256, dtype=np.float32)[:, None]
    y = curve(x).astype(np.float32)
    fig, ax = common.figure(len(args.units) + 1, size=(3.8, 3.2))
    fits = {}
    for i, units in enumerate(args.units):
        key, k_init, k_fit = jax.random.split(key, 3)
        model = relu_sum(units)
        ts, history = fn.train.fit(model, optax.adam(2e-2), (x, y), loss=fn.losses.mse,
                                   epochs=fit_epochs, batch_size=len(x), key=k_fit,
                                   progress=args.progress)
        p = ts.params
        pred = np.asarray(model.apply(p, ts.state, x)[0])
        fits[units] = float(np.mean((pred - y) ** 2))
        # Each hinge's contribution c_k relu(a_k x + b_k), drawn under the total.
        pieces = np.maximum(0, x * np.asarray(p[0]["w"]) + np.asarray(p[0]["b"])) * \
            np.asarray(p[2]["w"])[:, 0]
        a = ax[0, i]
        a.plot(x, pieces, lw=0.7, alpha=0.6)
        a.plot(x, y, "k--", lw=1.5, label="target")
        a.plot(x, pred, "r", lw=2, label=f"sum of {units} ReLUs")
        a.set_title(f"{units} ReLUs: MSE {fits[units]:.1e}", fontsize=9)
        a.set_ylim(-2.5, 2.5)
        a.legend(fontsize=7)
    common.plot_curves(ax[0, -1], curves, ylabel="training loss (standardized y)",
                       title="diabetes", logy=True)
    common.save(fig, args, "losses.png")
    metrics["relu_sum_mse"] = {str(k): v for k, v in fits.items()}
    d = metrics["diabetes"]
    print("diabetes test metrics (rows: training loss):")
    for row, vals in d.items():
        print(f"  {row:20s} " + "  ".join(f"{m} {v:8.2f}" for m, v in vals.items()))
    print("sum of ReLUs: " + ", ".join(f"{k} units MSE {v:.2e}" for k, v in fits.items()))
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
