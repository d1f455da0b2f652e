"""The degradation study (He et al. 2016): a plain deep CNN against the same depth with
residual connections, on MNIST-5k.

Both nets are `fn.models.resnet(depth=D)`: a conv-bn-relu stem, three stages of 3x3
conv-bn blocks (16, 32, 64 channels; strides 2 between stages), global average pooling and
a dense layer. The residual net adds each block's input back (a 1x1 conv-bn projection
where the shape changes); the plain net (`skip=False`) has the very same layers without
the additions. It measures

- the gradient norm of every convolution's weights at initialization, by the hand-derived
  formulas (`fn.backprop`, train mode, one batch): through the plain stack the gradient
  reaching the first layers is what the chain of Jacobians leaves of it; the skips give it
  a path around every block;
- training curves (train loss, test accuracy per epoch, Adam with a cosine-decayed
  learning rate, light shift augmentation) and the final test accuracy of each.
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


def add_arguments(p):
    p.add_argument("--depth", type=int, default=20, help="6n + 2 weighted layers (default %(default)s)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage (default %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="(default %(default)s)")


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


def shifted(x, key, most=2):
    """Every image shifted by up to `most` pixels each way (zeros come in at the edge)."""
    n = len(x)
    shifts = np.asarray(jax.random.randint(key, (n, 2), -most, most + 1))
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    for i, (dh, dw) in enumerate(shifts):
        src = x[i, max(0, -dh):h - max(0, dh), max(0, -dw):w - max(0, dw)]
        out[i, max(0, dh):max(0, dh) + src.shape[0], max(0, dw):max(0, dw) + src.shape[1]] = src
    return out


def train(model, data, args, epochs, key):
    """Adam, cosine-decayed; the training set plus one shifted copy of it."""
    (xtr, ytr), test = data
    k_aug, k_fit = jax.random.split(key)
    if not args.quick:
        xtr, ytr = np.concatenate([xtr, shifted(xtr, k_aug)]), np.concatenate([ytr, ytr])
    steps = epochs * -(-len(xtr) // args.batch_size)
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, max(steps, 1)))
    return fn.train.fit(model, opt, (xtr, ytr), epochs=epochs, batch_size=args.batch_size,
                        key=k_fit, val_data=test, progress=args.progress)


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    depth, width, epochs = (8, 8, 1) if args.quick else (args.depth, args.width, args.epochs)
    (xtr, ytr), (xte, yte) = fn.data.load("mnist5k", scale="unit", seed=args.seed)
    if args.quick:
        (xtr, ytr), (xte, yte) = (xtr[:256], ytr[:256]), (xte[:128], yte[:128])
    key = jax.random.PRNGKey(args.seed)
    metrics = {"depth": depth, "width": width, "epochs": epochs, "train_examples": len(xtr),
               "test_examples": len(xte), "wall_s": {}}
    norms, curves, losses = {}, {}, {}
    for name, skip in KINDS.items():
        model = fn.models.resnet(10, 28, depth=depth, width=width, skip=skip)
        k_init, k_fwd, k_train = jax.random.split(jax.random.fold_in(key, int(skip)), 3)
        # eager: its draws compile once per size bucket for both nets (a jitted init is a
        # program per net); values equal a jitted init's up to the last bit (XLA folds each
        # scale into the draw inside jit)
        params, state = model.init(k_init, (args.batch_size, 28, 28, 1))
        norms[name] = conv_grad_norms(model, params, state, xtr[:args.batch_size],
                                      ytr[:args.batch_size], k_fwd)
        with common.timed(metrics["wall_s"], name):
            ts, history = train(model, ((xtr, ytr), (xte, yte)), args, epochs, k_train)
        result = fn.train.evaluate(model, ts.params, ts.state, xte, yte)
        curves[name], losses[name] = history["val_accuracy"], history["loss"]
        metrics[name] = {"test_accuracy": result["accuracy"], "test_loss": result["loss"],
                         "final_train_loss": float(history["loss"][-1]),
                         "conv_grad_norms_at_init": norms[name],
                         "first_over_last_grad_norm": norms[name][0] / norms[name][-1],
                         "parameters": sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))}
    metrics["residual_minus_plain_accuracy"] = (metrics["residual"]["test_accuracy"]
                                                - metrics["plain"]["test_accuracy"])

    fig, ax = common.figure(1, size=(5.5, 3.6))
    for name, values in norms.items():
        ax[0, 0].plot(np.arange(1, len(values) + 1), values, "o-", label=name)
    ax[0, 0].set(yscale="log", xlabel="convolution (input side first)", ylabel="‖∂L/∂W‖ at init",
                 title=f"gradient norms at initialization, depth {depth}")
    ax[0, 0].grid(alpha=0.3)
    ax[0, 0].legend(fontsize=7)
    common.save(fig, args, "grad_norms.png")
    fig, ax = common.figure(2)
    common.plot_curves(ax[0, 0], losses, ylabel="train loss", logy=True, title=f"depth {depth}")
    common.plot_curves(ax[0, 1], curves, ylabel="test accuracy", title="MNIST-5k test")
    common.save(fig, args, "curves.png")
    print(f"depth {depth}: residual {metrics['residual']['test_accuracy']:.4f}, "
          f"plain {metrics['plain']['test_accuracy']:.4f} "
          f"(wall {metrics['wall_s']['residual']:.0f} s / {metrics['wall_s']['plain']:.0f} s)")
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
