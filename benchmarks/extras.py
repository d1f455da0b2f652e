"""The two non-step benchmarks: numerical gradients, and time to 97% test accuracy on digits."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import funcnet as fn

from . import workloads


# ----------------------------------------------------------------------------- numerical grad

def numerical_gradient_benchmark(batch=16, sample=200, seed=0):
    """The full centred-difference gradient of every LeNet parameter with `fn.numerical_grad`
    (float64, vectorized and jitted), against a cs231n-style Python loop (one coordinate at a
    time: θᵢ += h, f, θᵢ −= 2h, f, restore; f the same jitted float64 loss) timed on `sample`
    random coordinates and scaled to all of them. Returns a dict of numbers."""
    with jax.enable_x64(True):
        model, params, state = workloads.funcnet_params("lenet", workloads.init_weights("lenet", seed))
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        x, y = workloads.batch("lenet", seed + 1, n=batch)
        x = jnp.asarray(x, jnp.float64)

        def loss(p):
            return fn.losses.softmax_cross_entropy(model.apply(p, state, x)[0], y)

        flat, unravel = ravel_pytree(params)
        n = int(flat.size)
        exact = jax.jit(jax.grad(loss))(params)
        t0 = time.perf_counter()
        num = fn.numerical_grad(loss, params)
        jax.block_until_ready(num)
        full_s = time.perf_counter() - t0
        err = fn.rel_error(num, exact)

        f = jax.jit(lambda v: loss(unravel(v)))
        theta = np.asarray(flat).copy()
        f(jnp.asarray(theta)).block_until_ready()
        idx = np.random.default_rng(seed).choice(n, sample, replace=False)
        h = 1e-5
        t0 = time.perf_counter()
        loop = np.empty(sample)
        for k, i in enumerate(idx):  # cs231n's eval_numerical_gradient, one coordinate at a time
            old = theta[i]
            theta[i] = old + h
            fp = float(f(jnp.asarray(theta)))
            theta[i] = old - h
            fm = float(f(jnp.asarray(theta)))
            theta[i] = old
            loop[k] = (fp - fm) / (2 * h)
        loop_s = (time.perf_counter() - t0) / sample * n
        loop_err = fn.rel_error(loop, np.asarray(ravel_pytree(exact)[0])[idx])
    return {"params": n, "batch": batch, "full_s": full_s, "rel_error": err,
            "loop_s_scaled": loop_s, "loop_sample": sample, "loop_rel_error": loop_err,
            "speedup": loop_s / full_s}


# ----------------------------------------------------------------------------- digits

def digits_data(seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return train_test_split(x, d.target.astype(np.int32), test_size=0.25, random_state=seed,
                            stratify=d.target)


HIDDEN, BATCH, LR, TARGET, MAX_EPOCHS = (128,), 32, 1e-3, 0.97, 200


def _until(target, epoch_fn, acc_fn):
    """Run epochs until test accuracy >= target; (seconds, epochs, accuracy)."""
    t0 = time.perf_counter()
    for epoch in range(1, MAX_EPOCHS + 1):
        epoch_fn(epoch)
        acc = acc_fn()
        if acc >= target:
            return time.perf_counter() - t0, epoch, acc
    return float("nan"), MAX_EPOCHS, acc


def time_to_97_funcnet(data, seed):
    import optax
    xtr, xte, ytr, yte = data
    layers = []
    for h in HIDDEN:
        layers += [fn.dense(h), fn.relu]
    model = fn.serial(*layers, fn.dense(10))
    opt = optax.adam(LR)
    t_start = time.perf_counter()
    ts = jax.jit(lambda k: fn.train.init_train_state(model, opt, (BATCH, 64), k))(
        jax.random.PRNGKey(seed))
    step = fn.train.make_step(model, opt, fn.losses.softmax_cross_entropy)
    xtr_d, ytr_d = jnp.asarray(xtr), jnp.asarray(ytr)
    xte_d, yte_d = jnp.asarray(xte), jnp.asarray(yte)
    nb = len(xtr) // BATCH

    # One compiled call per epoch: the batches gathered on the device by a host-drawn
    # permutation, the jitted step scanned over them, then the test accuracy, so an
    # epoch costs one dispatch and one scalar read (a second run loads both programs
    # from the compilation cache).
    @jax.jit
    def run_epoch(t, perm, xtr, ytr, xte, yte):
        t = jax.lax.scan(lambda c, i: (step(c, xtr[i], ytr[i])[0], None), t, perm)[0]
        pred = jnp.argmax(model.apply(t.params, t.state, xte)[0], -1)
        return t, jnp.mean((pred == yte).astype(jnp.float32))

    rng = np.random.default_rng(seed)
    holder = [ts, None]

    def epoch(e):
        perm = rng.permutation(len(xtr))[:nb * BATCH].reshape(nb, BATCH).astype(np.int32)
        holder[0], holder[1] = run_epoch(holder[0], perm, xtr_d, ytr_d, xte_d, yte_d)

    secs, epochs, a = _until(TARGET, epoch, lambda: float(holder[1]))
    return time.perf_counter() - t_start if secs == secs else secs, epochs, a


def time_to_97_sklearn(data, seed):
    import warnings
    from sklearn.neural_network import MLPClassifier
    xtr, xte, ytr, yte = data
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, solver="adam", learning_rate_init=LR,
                        batch_size=BATCH, alpha=0.0, random_state=seed)
    classes = np.arange(10)
    t_start = time.perf_counter()

    def epoch(e):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(xtr, ytr, classes=classes)  # one pass of mini-batch Adam

    secs, epochs, a = _until(TARGET, epoch, lambda: float(np.mean(clf.predict(xte) == yte)))
    return time.perf_counter() - t_start if secs == secs else secs, epochs, a


def time_to_97_torch(data, seed):
    import torch
    import torch.nn.functional as F
    from torch import nn
    xtr, xte, ytr, yte = data
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    layers, width = [], 64
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xt, yt, xe = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(xte)
    nb = len(xtr) // BATCH
    rng = np.random.default_rng(seed)

    def epoch(e):
        perm = torch.from_numpy(rng.permutation(len(xtr))[:nb * BATCH].reshape(nb, BATCH))
        for b in range(nb):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xt[perm[b]]), yt[perm[b]]).backward()
            opt.step()

    def acc():
        with torch.no_grad():
            return float((net(xe).argmax(1).numpy() == yte).mean())

    secs, epochs, a = _until(TARGET, epoch, acc)
    return time.perf_counter() - t_start if secs == secs else secs, epochs, a
