"""Sequence study: MNIST-5k read row by row (28 steps of 28 pixels), an LSTM against a
vanilla RNN of the same hidden size, both trained on the hand-derived BPTT
(`fn.with_manual_grads`), and the vanishing-gradient picture.

A digit's class is decided by the whole image, but the classifier sees only the last
hidden state h_28: what the first rows said must survive 27 recurrent steps. Going back
one step multiplies the RNN's ∂L/∂h_t by W_hᵀ diag(1 − h²), and the LSTM's cell gradient
by the forget gate f. The study plots ‖∂L/∂h_t‖ over t for both cells, at initialization
and after training. At initialization (b = 0) the forget gate is σ(0) = ½, so the LSTM's
gradient halves at every step back: it vanishes faster than the RNN's (about 1e-5 of
the last step's at row 1, against 1e-2). Training opens the forget gates, and the
trained LSTM's gradient reaches the first row at about the size of the last's (full
run: LSTM 96.3 %, RNN 95.1 % test accuracy after 20 epochs of Adam with cosine decay,
128 units each).

∂L/∂h_t comes from `fn.backprop`: the cell is run on [x_t | u_t] with
W_x' = [W_x; I] and u = 0, so the input gradient's u-part is da_t = ∂L/∂a_t (the
pre-activation) and ∂L/∂h_{t−1} = da_t W_hᵀ; ∂L/∂h_T is the dense layer's dx.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "sequence"
CELLS = {"lstm": fn.lstm, "rnn": fn.rnn}


def classifier(cell: str, hidden: int, classes: int = 10) -> fn.Layer:
    """cell(hidden) over the rows, its last h to dense logits (lstm: fn.models.lstm_classifier)."""
    if cell == "lstm":
        return fn.models.lstm_classifier(classes, hidden)
    return fn.serial(fn.rnn(hidden, return_sequences=False), fn.dense(classes))


def hidden_grad_norms(cell: str, params, x, labels) -> np.ndarray:
    """‖∂L/∂h_t‖ (over the batch) for t = 1 … T, by the hand formulas (fn.backprop)."""
    return np.asarray(_hidden_grad_norms(cell, params, x, labels))


@functools.partial(jax.jit, static_argnums=0)  # one compilation per cell, init and trained
def _hidden_grad_norms(cell, params, x, labels):
    p_cell, p_dense = params
    d, width = p_cell["w_x"].shape
    hidden = p_cell["w_h"].shape[0]
    augmented = {**p_cell, "w_x": jnp.concatenate([p_cell["w_x"], jnp.eye(width)], 0)}
    x_aug = jnp.concatenate([x, jnp.zeros(x.shape[:2] + (width,), x.dtype)], -1)
    model = classifier(cell, hidden, p_dense["w"].shape[1])
    aug_params = (augmented, p_dense)
    logits, _ = model.apply(aug_params, ({}, {}), x_aug)
    dlogits = fn.losses.softmax_cross_entropy.grad(logits, labels)
    _, dx = fn.backprop(model, aug_params, ({}, {}), x_aug, dlogits)
    da = dx[..., d:]                                     # ∂L/∂a_t, (batch, T, width)
    dh_before_last = da[:, 1:] @ p_cell["w_h"].T         # ∂L/∂h_t = da_{t+1} W_hᵀ, t < T
    dh_last = dlogits @ p_dense["w"].T                   # dense's dx: ∂L/∂h_T
    dh = jnp.concatenate([dh_before_last, dh_last[:, None]], 1)
    return jnp.sqrt(jnp.sum(dh ** 2, axis=(0, 2)))


def add_arguments(p):
    p.add_argument("--hidden", type=int, default=128, help="hidden units (default %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="Adam's initial learning rate, cosine-decayed to 0 (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default %(default)s)")


def load_rows(args):
    """MNIST-5k as sequences (N, 28 rows, 28 pixels) in [0, 1]; --quick takes 512/256."""
    (xtr, ytr), (xte, yte) = fn.data.load("mnist5k", scale="unit", seed=args.seed)
    xtr, xte = xtr.reshape(-1, 28, 28), xte.reshape(-1, 28, 28)
    if args.quick:
        xtr, ytr, xte, yte = xtr[:512], ytr[:512], xte[:256], yte[:256]
    return (xtr, ytr), (xte, yte)


def train_cell(cell, args, train, test, key):
    """Fit one classifier; its ‖∂L/∂h_t‖ at init and after training, and its metrics."""
    hidden, epochs = (32, 2) if args.quick else (args.hidden, args.epochs)
    model = classifier(cell, hidden)
    k_init, k_fit = jax.random.split(key)
    params, state = model.init(k_init, (1,) + train[0].shape[1:])
    probe = (jnp.asarray(train[0][:256]), jnp.asarray(train[1][:256]))
    norms_init = hidden_grad_norms(cell, params, *probe)
    # cosine decay to 0: the last epochs settle instead of wandering ±1 % around the optimum
    steps = epochs * fn.data.num_batches(len(train[0]), args.batch_size)
    schedule = optax.cosine_decay_schedule(args.lr, steps)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    wall = {}
    with common.timed(wall, "fit"):
        ts, history = fn.train.fit(fn.with_manual_grads(model), optimizer, train,
                                   loss=fn.losses.softmax_cross_entropy, epochs=epochs,
                                   batch_size=args.batch_size, key=k_fit, val_data=test,
                                   progress=args.progress, initial=(params, state))
    result = fn.train.evaluate(model, ts.params, ts.state, *test)
    return {"hidden": hidden, "epochs": epochs, "test_accuracy": result["accuracy"],
            "test_loss": result["loss"], "train_loss": history["loss"],
            "val_accuracy": history["val_accuracy"], "fit_seconds": wall["fit"],
            "grad_norm_init": norms_init,
            "grad_norm_trained": hidden_grad_norms(cell, ts.params, *probe),
            "params": sum(int(v.size) for v in jax.tree_util.tree_leaves(ts.params))}


def plot(args, runs):
    fig, ax = common.figure(2, 1, size=(4.8, 3.4))
    for cell, r in runs.items():
        t = np.arange(1, len(r["grad_norm_init"]) + 1)
        ax[0, 0].semilogy(t, r["grad_norm_init"], "o-", ms=3, label=f"{cell}, init")
        ax[0, 0].semilogy(t, r["grad_norm_trained"], "s--", ms=3, label=f"{cell}, trained")
    ax[0, 0].set_xlabel("time step t (row)")
    ax[0, 0].set_title("‖∂L/∂h_t‖ (hand BPTT)")
    ax[0, 0].grid(alpha=0.3)
    ax[0, 0].legend(fontsize=7)
    common.plot_curves(ax[0, 1], {c: r["val_accuracy"] for c, r in runs.items()},
                       ylabel="test accuracy", title="MNIST-5k row by row")
    common.save(fig, args, "sequence.png")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    train, test = load_rows(args)
    keys = jax.random.split(jax.random.PRNGKey(args.seed), len(CELLS))
    runs = {cell: train_cell(cell, args, train, test, k) for cell, k in zip(CELLS, keys)}
    plot(args, runs)
    # how much of the last step's gradient reaches the first row: ∂L/∂h_1 over ∂L/∂h_T
    reach = {f"{c}/{when}": float(r[f"grad_norm_{when}"][0] / r[f"grad_norm_{when}"][-1])
             for c, r in runs.items() for when in ("init", "trained")}
    for cell, r in runs.items():
        print(f"{cell}: test accuracy {r['test_accuracy']:.4f} ({r['epochs']} epochs, "
              f"{r['fit_seconds']:.0f} s), ‖∂L/∂h_1‖/‖∂L/∂h_T‖ init "
              f"{reach[cell + '/init']:.2e}, trained {reach[cell + '/trained']:.2e}")
    target = runs["lstm"]["test_accuracy"] >= 0.95
    return common.write_metrics(args, {
        "lstm_accuracy": runs["lstm"]["test_accuracy"],
        "rnn_accuracy": runs["rnn"]["test_accuracy"],
        "lstm_reaches_95": bool(target), "first_over_last_grad_norm": reach, "runs": runs})


if __name__ == "__main__":
    common.cli(main)
