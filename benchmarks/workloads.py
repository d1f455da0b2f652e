"""The benchmark networks, written once per competitor from the same initial weights.

MLP: 784-512-512-10, ReLU, softmax cross-entropy (and a variant with batch norm + dropout
after each hidden dense). LeNet: 28×28×1, conv5×5(6, SAME)-relu-maxpool2-conv5×5(16)-relu-
maxpool2-flatten-120-relu-84-relu-10. Batch 128, SGD with momentum (lr 0.01, μ 0.9):
    v ← μ v − η g,  θ ← θ + v        (optax.sgd(η, momentum=μ) is v ← μ v + g, θ ← θ − η v,
                                       the same iterates; PyTorch's SGD is the optax form)
Weights are drawn once in NumPy (`init_weights`) and converted: raw JAX uses a dict, funcnet
its serial's tuple, PyTorch its modules (OIHW kernels, (out, in) matrices, and the first
dense layer's rows permuted from NHWC to NCHW flattening), NumPy the dict.
"""
from __future__ import annotations

import numpy as np

MLP_SIZES = (784, 512, 512, 10)
LR, MOMENTUM, BATCH = 0.01, 0.9, 128
LENET_SHAPES = {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "d1": (400, 120), "d2": (120, 84),
                "d3": (84, 10)}


def init_weights(kind: str, seed: int = 0):
    """{"name": {"w", "b"}} in float32, Xavier-uniform weights and small random biases (so a
    wrong bias path shows in the correctness test)."""
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        shapes = {f"d{i + 1}": (a, b) for i, (a, b) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:]))}
    else:
        shapes = LENET_SHAPES
    out = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[:-1]))
        fan_out = shape[-1] * (shape[0] * shape[1] if len(shape) == 4 else 1)
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        out[name] = {"w": rng.uniform(-lim, lim, shape).astype(np.float32),
                     "b": rng.uniform(-0.01, 0.01, shape[-1:]).astype(np.float32)}
    return out


def batch(kind: str, seed: int = 1, n: int = BATCH):
    rng = np.random.default_rng(seed)
    shape = (n, 784) if kind.startswith("mlp") else (n, 28, 28, 1)
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def flops(kind: str, n: int = BATCH) -> float:
    """Floating-point operations of one training step ≈ 3 × the forward's 2·(multiply-adds)
    (forward, δ·Wᵀ and xᵀ·δ per layer; the first layer's dx is not needed, so this slightly
    over-counts). Element-wise work is not counted."""
    if kind.startswith("mlp"):
        macs = sum(a * b for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
    else:
        macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    return 3.0 * 2.0 * n * macs


# ----------------------------------------------------------------------------- funcnet

def funcnet_model(kind: str):
    import funcnet as fn
    if kind == "mlp":
        return fn.serial(fn.dense(512), fn.relu, fn.dense(512), fn.relu, fn.dense(10))
    if kind == "mlp_bn":
        return fn.serial(fn.dense(512), fn.batch_norm(), fn.relu, fn.dropout(0.2),
                         fn.dense(512), fn.batch_norm(), fn.relu, fn.dropout(0.2), fn.dense(10))
    return fn.serial(fn.conv2d(6, (5, 5), padding="SAME"), fn.relu, fn.max_pool((2, 2)),
                     fn.conv2d(16, (5, 5)), fn.relu, fn.max_pool((2, 2)), fn.flatten,
                     fn.dense(120), fn.relu, fn.dense(84), fn.relu, fn.dense(10))


def funcnet_params(kind: str, weights):
    """The weights dict laid out as the funcnet serial's params (and its state)."""
    import jax
    import jax.numpy as jnp
    model = funcnet_model(kind)
    shape = (BATCH, 784) if kind.startswith("mlp") else (BATCH, 28, 28, 1)
    params, state = model.init(jax.random.PRNGKey(0), shape)
    names, out = iter(sorted(weights)), []
    for p in params:
        if set(p) == {"w", "b"}:
            w = weights[next(names)]
            p = {"w": jnp.asarray(w["w"]), "b": jnp.asarray(w["b"])}
        out.append(p)
    return model, tuple(out), state


# ----------------------------------------------------------------------------- PyTorch

def torch_model(kind: str, weights, channels_last: bool = False):
    import torch
    from torch import nn
    if kind.startswith("mlp"):
        layers = []
        for i, name in enumerate(sorted(weights)):
            w = weights[name]
            lin = nn.Linear(*w["w"].shape)
            layers.append(lin)
            if i < len(weights) - 1:
                if kind == "mlp_bn":
                    layers += [nn.BatchNorm1d(w["w"].shape[1], momentum=0.1, eps=1e-5), nn.ReLU(),
                               nn.Dropout(0.2)]
                else:
                    layers.append(nn.ReLU())
        net = nn.Sequential(*layers)
        lins = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, name in zip(lins, sorted(weights)):
                lin.weight.copy_(torch.from_numpy(weights[name]["w"].T.copy()))
                lin.bias.copy_(torch.from_numpy(weights[name]["b"]))
        return net
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                        nn.Linear(84, 10))
    with torch.no_grad():
        for idx, name in ((0, "c1"), (3, "c2")):
            net[idx].weight.copy_(torch.from_numpy(weights[name]["w"].transpose(3, 2, 0, 1).copy()))
            net[idx].bias.copy_(torch.from_numpy(weights[name]["b"]))
        # NHWC flattening (h, w, c) -> PyTorch's NCHW flattening (c, h, w)
        d1 = weights["d1"]["w"].reshape(5, 5, 16, 120).transpose(2, 0, 1, 3).reshape(400, 120)
        for idx, name, w in ((7, "d1", d1), (9, "d2", weights["d2"]["w"]), (11, "d3", weights["d3"]["w"])):
            net[idx].weight.copy_(torch.from_numpy(w.T.copy()))
            net[idx].bias.copy_(torch.from_numpy(weights[name]["b"]))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def torch_input(kind: str, x, channels_last: bool = False):
    import torch
    t = torch.from_numpy(x)
    if kind.startswith("mlp"):
        return t
    t = t.permute(0, 3, 1, 2)  # NHWC -> NCHW view
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def torch_step(net, x, y):
    """(runner(n) running n SGD-momentum steps, loss_and_grads()) for a PyTorch net."""
    import torch
    import torch.nn.functional as F
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    yt = torch.from_numpy(y.astype(np.int64))
    net.train()

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), yt).backward()
            opt.step()

    def loss_and_grads():
        net.zero_grad()
        loss = F.cross_entropy(net(x), yt)
        loss.backward()
        return float(loss.detach()), [p.grad.detach().numpy().copy() for p in net.parameters()]

    return run, loss_and_grads
