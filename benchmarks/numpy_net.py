"""From scratch in NumPy (cs231n style): forward and backward by hand, im2col convolutions.

conv (stride 1): P = im2col(pad(x)) of shape (N·Ho·Wo, kh·kw·C), y = P W + b,
    dW = Pᵀ δ, db = Σ δ, dx = col2im(δ Wᵀ) (each patch cell added back where it was read).
max pool 2×2: y = max of each window; δ to the first arg-max cell.
dense: y = x W + b; dW = xᵀ δ, db = Σ δ, dx = δ Wᵀ.  relu: dx = δ [x > 0].
softmax cross-entropy: dz = (softmax(z) − onehot(y)) / N.
batch norm (training): x̂ = (x − μ)/√(σ² + ε), y = γ x̂ + β,
    dx = (1/N) / √(σ² + ε) · (N dx̂ − Σ dx̂ − x̂ Σ dx̂ x̂)  with dx̂ = δ γ.
All float32.
"""
from __future__ import annotations

import numpy as np

from .workloads import LR, MOMENTUM


def im2col(xp, kh, kw):
    n, hp, wp, c = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    cols = np.empty((n, ho, wo, kh, kw, c), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + ho, j:j + wo, :]
    return cols.reshape(n * ho * wo, kh * kw * c)


def col2im(dcols, xp_shape, kh, kw):
    n, hp, wp, c = xp_shape
    ho, wo = hp - kh + 1, wp - kw + 1
    d = dcols.reshape(n, ho, wo, kh, kw, c)
    out = np.zeros(xp_shape, dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + ho, j:j + wo, :] += d[:, :, :, i, j, :]
    return out


def conv_forward(x, w, b, pad):
    kh, kw, c, o = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    p = im2col(xp, kh, kw)
    n, ho, wo = x.shape[0], xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return (p @ w.reshape(-1, o) + b).reshape(n, ho, wo, o), (p, xp.shape, pad)


def conv_backward(dy, w, cache, need_dx=True):
    p, xp_shape, pad = cache
    kh, kw, c, o = w.shape
    d2 = dy.reshape(-1, o)
    dw = (p.T @ d2).reshape(w.shape)
    db = d2.sum(0)
    if not need_dx:
        return None, dw, db
    dxp = col2im(d2 @ w.reshape(-1, o).T, xp_shape, kh, kw)
    return dxp[:, pad:xp_shape[1] - pad, pad:xp_shape[2] - pad, :], dw, db


def pool_forward(x):
    n, h, w, c = x.shape
    xr = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    idx = xr.argmax(-1)
    return np.take_along_axis(xr, idx[..., None], -1)[..., 0], (idx, x.shape)


def pool_backward(dy, cache):
    idx, shape = cache
    n, h, w, c = shape
    d = np.zeros(dy.shape + (4,), dy.dtype)
    np.put_along_axis(d, idx[..., None], dy[..., None], -1)
    return d.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(shape)


def softmax_ce(z, y):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    s = e / e.sum(1, keepdims=True)
    n = z.shape[0]
    loss = -np.mean(np.log(s[np.arange(n), y]))
    s[np.arange(n), y] -= 1.0
    return float(loss), s / n


def lenet_loss_and_grads(params, x, y):
    g = {}
    z1, c1 = conv_forward(x, params["c1"]["w"], params["c1"]["b"], 2)
    a1 = np.maximum(z1, 0)
    p1, q1 = pool_forward(a1)
    z2, c2 = conv_forward(p1, params["c2"]["w"], params["c2"]["b"], 0)
    a2 = np.maximum(z2, 0)
    p2, q2 = pool_forward(a2)
    f = p2.reshape(p2.shape[0], -1)
    h1 = f @ params["d1"]["w"] + params["d1"]["b"]
    r1 = np.maximum(h1, 0)
    h2 = r1 @ params["d2"]["w"] + params["d2"]["b"]
    r2 = np.maximum(h2, 0)
    logits = r2 @ params["d3"]["w"] + params["d3"]["b"]
    loss, d = softmax_ce(logits, y)
    g["d3"] = {"w": r2.T @ d, "b": d.sum(0)}
    d = (d @ params["d3"]["w"].T) * (h2 > 0)
    g["d2"] = {"w": r1.T @ d, "b": d.sum(0)}
    d = (d @ params["d2"]["w"].T) * (h1 > 0)
    g["d1"] = {"w": f.T @ d, "b": d.sum(0)}
    d = (d @ params["d1"]["w"].T).reshape(p2.shape)
    d = pool_backward(d, q2) * (z2 > 0)
    d, dw, db = conv_backward(d, params["c2"]["w"], c2)
    g["c2"] = {"w": dw, "b": db}
    d = pool_backward(d, q1) * (z1 > 0)
    _, dw, db = conv_backward(d, params["c1"]["w"], c1, need_dx=False)
    g["c1"] = {"w": dw, "b": db}
    return loss, g


def mlp_loss_and_grads(params, x, y, bn=None, rng=None, rate=0.2, eps=1e-5):
    """bn: None, or {"bn1": {"gamma", "beta"}, ...} for the batch-norm + dropout variant."""
    acts, caches = x, []
    for i in (1, 2):
        w, b = params[f"d{i}"]["w"], params[f"d{i}"]["b"]
        z = acts @ w + b
        cache = {"x": acts}
        if bn is not None:
            mu, var = z.mean(0), z.var(0)
            inv = 1.0 / np.sqrt(var + eps)
            xhat = (z - mu) * inv
            cache.update(xhat=xhat, inv=inv)
            z = xhat * bn[f"bn{i}"]["gamma"] + bn[f"bn{i}"]["beta"]
        cache["pre"] = z
        a = np.maximum(z, 0)
        if bn is not None:
            mask = (rng.random(a.shape) >= rate).astype(a.dtype) / (1.0 - rate)
            cache["mask"] = mask
            a = a * mask
        caches.append(cache)
        acts = a
    logits = acts @ params["d3"]["w"] + params["d3"]["b"]
    loss, d = softmax_ce(logits, y)
    g = {"d3": {"w": acts.T @ d, "b": d.sum(0)}}
    d = d @ params["d3"]["w"].T
    gbn = {}
    for i in (2, 1):
        cache = caches[i - 1]
        if bn is not None:
            d = d * cache["mask"]
        d = d * (cache["pre"] > 0)
        if bn is not None:
            xhat, inv, n = cache["xhat"], cache["inv"], d.shape[0]
            gbn[f"bn{i}"] = {"gamma": (d * xhat).sum(0), "beta": d.sum(0)}
            dxhat = d * bn[f"bn{i}"]["gamma"]
            d = inv / n * (n * dxhat - dxhat.sum(0) - xhat * (dxhat * xhat).sum(0))
        g[f"d{i}"] = {"w": cache["x"].T @ d, "b": d.sum(0)}
        if i > 1:
            d = d @ params[f"d{i}"]["w"].T
    return loss, g, gbn


def make_runner(kind, weights, x, y, seed=0):
    """runner(n): n SGD-momentum steps, v ← μ v − η g, θ ← θ + v, all in NumPy."""
    params = {k: {n: a.copy() for n, a in v.items()} for k, v in weights.items()}
    bn = None
    if kind == "mlp_bn":
        bn = {f"bn{i}": {"gamma": np.ones(512, np.float32), "beta": np.zeros(512, np.float32)}
              for i in (1, 2)}
    vel = {k: {n: np.zeros_like(a) for n, a in v.items()} for k, v in params.items()}
    vbn = None if bn is None else {k: {n: np.zeros_like(a) for n, a in v.items()} for k, v in bn.items()}
    rng = np.random.default_rng(seed)

    def update(p, v, g):
        for k in g:
            for n in g[k]:
                v[k][n] *= MOMENTUM
                v[k][n] -= LR * g[k][n].astype(np.float32)
                p[k][n] += v[k][n]

    def run(n):
        for _ in range(n):
            if kind == "lenet":
                _, g = lenet_loss_and_grads(params, x, y)
            else:
                _, g, gbn = mlp_loss_and_grads(params, x, y, bn, rng)
                if bn is not None:
                    update(bn, vbn, gbn)
            update(params, vel, g)

    return run
