"""Seconds for a full three-way check_gradients (float64, train mode for the resnet's batch
norm) of the two bigger models of issues 10 and 11, each in a fresh process, compilation
included: every element of every leaf manual vs autodiff; numerically every coordinate of
small leaves and 4 random directions of bigger ones (samples="auto"): "small" is up to 2048
elements for the transformer (the default), up to 256 for the resnet (project_above=256:
its 1x1 shortcut kernels, stem and input would be ~4,000 coordinates x 2 forward passes of
a 28x28 float64 resnet).

    python -m benchmarks.gradcheck_models            # both
    python -m benchmarks.gradcheck_models resnet     # or transformer

resnet(10, image_size=28, depth=8) on 2 MNIST-sized images; transformer(vocab 60, max_len
16, dim 32, 4 heads, depth 2) on 2 sequences of 16 integer token ids (a constant input).
"""
import subprocess
import sys
import time


def run(which):
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import funcnet as fn
    from funcnet import losses
    rng = np.random.default_rng(0)
    if which == "resnet":
        model = fn.models.resnet(10, image_size=28, depth=8)
        shape, train, extra = (2, 28, 28, 1), True, {"project_above": 256}
        x = rng.standard_normal(shape)
        labels, loss = jnp.array([3, 7]), losses.softmax_cross_entropy
    else:
        model = fn.models.transformer(60, 16, 32, 4, 2)
        shape, train, extra = (2, 16), False, {}
        x = jnp.asarray(rng.integers(0, 60, shape), jnp.int32)
        labels, loss = None, None  # Σ logits ⊙ g: every output position carries gradient
    params, state = model.init(jax.random.PRNGKey(0), shape)
    t1 = time.perf_counter()
    report = fn.check_gradients(model, params, state, x, labels, loss, train=train,
                                key=jax.random.PRNGKey(1) if train else None, **extra)
    t2 = time.perf_counter()
    print(report)
    n = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params))
    print(f"{which}: {n} parameters, setup {t1 - t0:.1f} s, check_gradients {t2 - t1:.1f} s")
    return report.ok


def main(argv):
    if argv:
        sys.exit(0 if run(argv[0]) else 1)
    for which in ("resnet", "transformer"):  # each in a fresh process: cold compilation
        subprocess.run([sys.executable, "-m", "benchmarks.gradcheck_models", which], check=False)


if __name__ == "__main__":
    main(sys.argv[1:])
