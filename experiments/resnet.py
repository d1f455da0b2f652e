"""The degradation study (He et al. 2016, "Deep Residual Learning for Image Recognition",
Fig. 1 and 4): plain CNNs of several depths against the same depths with residual
connections, on MNIST-5k.

He et al.'s degradation problem is about TRAINING error: a deeper plain net, which could
copy a shallower one and add identity layers, trains to a higher training error than the
shallower one, while residual nets of the same depths do not. Here every net is
`fn.models.resnet(depth=D)`: a conv-bn-relu stem, three stages of 3x3 conv-bn blocks (16,
32, 64 channels; stride 2 between stages), global average pooling and a dense layer. The
residual net adds each block's input back (a 1x1 conv-bn projection where the shape
changes); the plain net (`skip=False`) has the very same layers without the additions.
For each depth and kind, on the same budget (SGD with momentum 0.9, L2 1e-4, batch 128 as
He et al., but 8 epochs, a peak learning rate of 0.02 reached by a one-epoch linear warm-up
and cosine-decayed after it; at 0.1, He et al.'s rate, the residual depth-56 net did not
settle within this budget; the 4,000 training images without augmentation, so training
error is the error on a fixed set) it measures

- the training error and loss of every epoch (means over the epoch's batches, train mode,
  as He et al. plot them) and the test error after every epoch;
- the final training error and loss over the whole training set (evaluation mode) and the
  test accuracy: the verdict compares the deepest plain net's final training error with the
  best shallower plain net's, and the same for the residual nets;
- the gradient norm of every convolution's weights at initialization, by the hand-derived
  formulas (`fn.backprop`, train mode, one batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import common
from funcnet.core import param_paths

NAME = "resnet"
KINDS = {"plain": False, "residual": True}


def depths_list(text: str) -> list:
    """"8,20,56" -> [8, 20, 56] (sorted, each 6n + 2 as fn.models.resnet requires)."""
    depths = sorted({int(v) for v in text.split(",") if v.strip()})
    bad = [d for d in depths if d < 8 or (d - 2) % 6]
    if not depths or bad:
        raise ValueError(f"--depths: each depth must be 6n + 2 and at least 8, got {text!r}")
    return depths


def add_arguments(p):
    p.add_argument("--depths", type=depths_list, default=depths_list("8,20,56"),
                   help="comma-separated depths, each 6n + 2 (default 8,20,56)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (default %(default)s)")
    p.add_argument("--epochs", type=int, default=8, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=0.02,
                   help="peak SGD learning rate (default %(default)s)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="epochs of linear learning-rate warm-up (default %(default)s)")
    p.add_argument("--l2", type=float, default=1e-4, help="λ of ½ λ Σ w² (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="(default %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.001,
                   help="training-error difference (a fraction) below which a deeper net does "
                        "not count as degraded (default %(default)s)")


def conv_grad_norms(model, params, state, x, y, key):
    """‖∂L/∂W‖ of every convolution on the main path (projection shortcuts left out), input
    side first, by the hand formulas: fn.backprop of the softmax cross-entropy's gradient."""
    @jax.jit
    def grads(params, state, x, y):
        logits, _ = model.apply(params, state, x, train=True, key=key)
        dy = fn.losses.softmax_cross_entropy.grad(logits, y)
        return fn.backprop(model, params, state, x, dy, train=True, key=key)[0]

    dparams = grads(params, state, x, y)
    return [float(jnp.linalg.norm(g)) for path, g in param_paths(model, dparams)
            if path.endswith("conv2d/w") and "/1:parallel/1:" not in path]


def schedule(args, n):
    """The learning rate: linear warm-up from 0 to args.lr over args.warmup epochs (He et al.
    warm up their deepest net the same way, at 0.01), then cosine decay to 0 at the end."""
    per_epoch = -(-n // args.batch_size)
    steps = max(args.epochs * per_epoch, 1)
    warmup = min(int(round(args.warmup * per_epoch)), steps - 1)
    if warmup <= 0:
        return optax.cosine_decay_schedule(args.lr, steps)
    return optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, steps)


def run_one(depth, skip, data, args, key) -> dict:
    """Build, measure at init, train and evaluate one net; its metrics."""
    (xtr, ytr), (xte, yte) = data
    model = fn.models.resnet(10, 28, depth=depth, width=args.width, skip=skip)
    k_init, k_fwd, k_fit = jax.random.split(key, 3)
    params, state = model.init(k_init, (args.batch_size, 28, 28, 1))
    norms = conv_grad_norms(model, params, state, xtr[:args.batch_size], ytr[:args.batch_size], k_fwd)
    opt = optax.sgd(schedule(args, len(xtr)), momentum=0.9)
    record = {}
    with common.timed(record, "train_seconds"):
        ts, history = fn.train.fit(model, opt, (xtr, ytr), epochs=args.epochs, l2=args.l2,
                                   batch_size=args.batch_size, key=k_fit, initial=(params, state),
                                   val_data=(xte, yte), progress=args.progress)
    train = fn.train.evaluate(model, ts.params, ts.state, xtr, ytr)
    test = fn.train.evaluate(model, ts.params, ts.state, xte, yte)
    return {"train_error": 1 - train["accuracy"], "train_loss": train["loss"],
            "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "curve": {"train_error": [1 - a for a in history["train_accuracy"]],
                      "train_loss": list(history["train_loss"]),
                      "test_error": [1 - a for a in history["val_accuracy"]]},
            "conv_grad_norms_at_init": norms, "first_over_last_grad_norm": norms[0] / norms[-1],
            "parameters": sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params)),
            "train_seconds": record["train_seconds"]}


def degradation(nets: dict, tolerance: float = 0.001) -> dict:
    """He et al.'s test on {depth: {"plain": m, "residual": m}} (depth keys as strings):
    the deepest net's final training error minus the best shallower net's of its kind. A
    kind degrades when that difference is above `tolerance` (a fraction: 0.001 is 4 of
    4,000 training images, so a tie near zero error is not called either way). None with
    one depth."""
    depths = sorted(nets, key=int)
    out = {"deepest": int(depths[-1]), "shallower": [int(d) for d in depths[:-1]],
           "tolerance": tolerance}
    for kind in KINDS:
        if len(depths) < 2:
            out[f"{kind}_deepest_minus_best_shallower"] = None
            out[f"{kind}_degrades"] = None
            continue
        best = min(depths[:-1], key=lambda d: nets[d][kind]["train_error"])
        gap = nets[depths[-1]][kind]["train_error"] - nets[best][kind]["train_error"]
        out[f"{kind}_best_shallower_depth"] = int(best)
        out[f"{kind}_deepest_minus_best_shallower"] = gap
        out[f"{kind}_degrades"] = gap > tolerance
    out["shown"] = bool(out["plain_degrades"]) and out["residual_degrades"] is False
    return out


def plot_training_error(nets, args):
    """Training error per epoch (left) and test error (right): colour per depth, plain
    dashed, residual solid, as He et al. Fig. 1 / 4."""
    fig, ax = common.figure(2, size=(4.8, 3.6))
    colours = dict(zip(nets, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for depth, kinds in nets.items():
        for kind, style in (("plain", "--"), ("residual", "-")):
            curve = kinds[kind]["curve"]
            epochs = np.arange(1, len(curve["train_error"]) + 1)
            for a, key in zip(ax[0], ("train_error", "test_error")):
                a.plot(epochs, 100 * np.asarray(curve[key]), style, color=colours.get(depth),
                       label=f"{kind}-{depth}")
    for a, what in zip(ax[0], ("training error (%)", "test error (%)")):
        a.set(xlabel="epoch", ylabel=what, yscale="log")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax[0, 0].set_title("train mode, mean over each epoch")
    ax[0, 1].set_title("MNIST-5k test (1,000 images)" if not args.quick else "test")
    common.save(fig, args, "training_error.png")


def plot_grad_norms(nets, args):
    """‖∂L/∂W‖ at init per convolution, one panel per depth."""
    fig, ax = common.figure(len(nets), size=(3.6, 3.2))
    for a, (depth, kinds) in zip(ax[0], nets.items()):
        for kind, style in (("plain", "o--"), ("residual", "o-")):
            values = kinds[kind]["conv_grad_norms_at_init"]
            a.plot(np.arange(1, len(values) + 1), values, style, ms=3, label=kind)
        a.set(yscale="log", xlabel="convolution (input side first)", title=f"depth {depth}")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax[0, 0].set_ylabel("‖∂L/∂W‖ at init")
    common.save(fig, args, "grad_norms.png")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    if args.quick:
        args.depths, args.width, args.epochs, args.warmup = [8], 8, 1, 0.0
    (xtr, ytr), (xte, yte) = fn.data.load("mnist5k", scale="unit", seed=args.seed)
    if args.quick:
        (xtr, ytr), (xte, yte) = (xtr[:256], ytr[:256]), (xte[:128], yte[:128])
    key = jax.random.PRNGKey(args.seed)
    metrics = {"depths": args.depths, "width": args.width, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": args.warmup,
               "l2": args.l2, "optimizer": "SGD, momentum 0.9, learning rate warmed up "
               "linearly, then cosine-decayed",
               "train_examples": len(xtr), "test_examples": len(xte)}
    nets = {}
    for depth in args.depths:
        nets[str(depth)] = {}
        for kind, skip in KINDS.items():
            k = jax.random.fold_in(jax.random.fold_in(key, depth), int(skip))
            m = run_one(depth, skip, ((xtr, ytr), (xte, yte)), args, k)
            nets[str(depth)][kind] = m
            print(f"{kind}-{depth}: train error {m['train_error']:.4f} (loss {m['train_loss']:.4f}), "
                  f"test accuracy {m['test_accuracy']:.4f}, {m['train_seconds']:.0f} s", flush=True)
    metrics["nets"] = nets
    metrics["degradation"] = degradation(nets, args.tolerance)
    plot_training_error(nets, args)
    plot_grad_norms(nets, args)
    print("degradation:", metrics["degradation"])
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
