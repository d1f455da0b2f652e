"""The convolution-path investigation: one LeNet training step, many formulations.

LeNet on 28×28×1 (batch 128): conv5×5(6, SAME)-relu-maxpool2-conv5×5(16)-relu-maxpool2-
flatten-dense120-relu-dense84-relu-dense10, softmax cross-entropy, SGD with momentum.
Every path below computes the same function (and, up to float32 rounding and how ties of
max pooling are broken, the same gradient); they differ only in how convolution and
pooling are written for XLA:

  xla_conv + reduce_window   lax.conv_general_dilated, lax.reduce_window max, jax.grad
  xla_conv + reshape pool    pooling as reshape (N, H/2, 2, W/2, 2, C) + max, jax.grad
  im2col slices + matmul     patches from kh·kw strided slices, one matmul; jax.grad
  patches op + matmul        lax.conv_general_dilated_patches + one matmul; jax.grad
  manual im2col (col2im)     custom_vjp: dW = Pᵀ δ and dP = δ Wᵀ as single matmuls,
                             dx by adding dP's kh·kw slices back (col2im); pool backward
                             is the first-arg-max mask, written with reshapes
  manual im2col (full conv)  as above, but dx = im2col(pad(δ)) · rot180(W) (one matmul)
  shift-and-add conv1        the c_in = 1 convolution as 25 broadcast multiply-adds
  pool before relu           relu(maxpool(z)) = maxpool(relu(z)): pool first, 4× less relu
and the XLA CPU flags tried on top of the best (`compiler_options`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
SAME5 = ((2, 2), (2, 2))
VALID = ((0, 0), (0, 0))


# ---------------------------------------------------------------- parameters and data

def lenet_params(key, dtype=jnp.float32):
    """Xavier-uniform weights, zero biases, as a dict (the raw-JAX convention)."""
    shapes = {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "d1": (400, 120), "d2": (120, 84),
              "d3": (84, 10)}
    params = {}
    for k, (name, shape) in zip(jax.random.split(key, len(shapes)), shapes.items()):
        fan_in = shape[0] * shape[1] * shape[2] if len(shape) == 4 else shape[0]
        fan_out = shape[0] * shape[1] * shape[3] if len(shape) == 4 else shape[1]
        lim = (6.0 / (fan_in + fan_out)) ** 0.5
        params[name] = {"w": jax.random.uniform(k, shape, dtype, -lim, lim),
                        "b": jnp.zeros(shape[-1:], dtype)}
    return params


def lenet_flops(batch=128):
    """Multiply-adds × 2 of the forward, × 3 for a training step (forward, dx and dW; the
    input's dx is not needed, so this slightly over-counts conv1)."""
    conv1 = 28 * 28 * 6 * 25 * 1
    conv2 = 10 * 10 * 16 * 25 * 6
    dense = 400 * 120 + 120 * 84 + 84 * 10
    return 3 * 2 * batch * (conv1 + conv2 + dense)


# ---------------------------------------------------------------- convolutions

def conv_xla(x, w, pad):
    return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=DN)


def im2col(xp, kh, kw):
    """Stride-1 patches of a padded NHWC batch: (N·Ho·Wo, kh·kw·C), columns ordered (i, j, c)
    to match W.reshape(kh·kw·C, O)."""
    n, hp, wp, c = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    cols = jnp.stack([xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=3)
    return cols.reshape(n * ho * wo, kh * kw * c), (n, ho, wo)


def _pad(x, pad):
    return jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))


def conv_im2col(x, w, pad):
    kh, kw, c, o = w.shape
    p, (n, ho, wo) = im2col(_pad(x, pad), kh, kw)
    return (p @ w.reshape(-1, o)).reshape(n, ho, wo, o)


def conv_patches(x, w, pad):
    kh, kw, c, o = w.shape
    p = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), pad, dimension_numbers=DN)
    n, ho, wo, _ = p.shape  # features ordered (c, i, j)
    return (p.reshape(-1, c * kh * kw) @ w.transpose(2, 0, 1, 3).reshape(-1, o)).reshape(n, ho, wo, o)


def conv_shift_add(x, w, pad):
    """Σ_ij xp[:, i:i+Ho, j:j+Wo, :] · W[i, j]: kh·kw broadcast multiply-adds (one fusion);
    good when c_in is 1 and the matmul would have K = kh·kw only."""
    kh, kw, c, o = w.shape
    xp = _pad(x, pad)
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = 0.0
    for i in range(kh):
        for j in range(kw):
            y = y + xp[:, i:i + ho, j:j + wo, :] @ w[i, j]
    return y


def col2im(dp, xp_shape, kh, kw):
    """The transpose of im2col: add every patch cell back where it was read from."""
    n, hp, wp, c = xp_shape
    ho, wo = hp - kh + 1, wp - kw + 1
    dp = dp.reshape(n, ho, wo, kh, kw, c)
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            out = out + jnp.pad(dp[:, :, :, i, j, :],
                                ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
    return out


def make_manual_conv(dx_by="col2im"):
    """A conv with a hand-written backward (custom_vjp), im2col forward:
        y = P W,  dW = Pᵀ δ,  db = Σ δ,  dx = col2im(δ Wᵀ)  or  im2col(pad(δ)) · rot180(W)ᵀ."""

    def fwd(x, w, pad):
        kh, kw, c, o = w.shape
        xp = _pad(x, pad)
        p, (n, ho, wo) = im2col(xp, kh, kw)
        return (p @ w.reshape(-1, o)).reshape(n, ho, wo, o), (p, w, xp.shape)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def conv(x, w, pad_flat):
        return fwd(x, w, _unflat(pad_flat))[0]

    def conv_fwd(x, w, pad_flat):
        return fwd(x, w, _unflat(pad_flat))

    def conv_bwd(pad_flat, res, dy):
        p, w, xp_shape = res
        pad = _unflat(pad_flat)
        kh, kw, c, o = w.shape
        d2 = dy.reshape(-1, o)
        dw = (p.T @ d2).reshape(w.shape)
        if dx_by == "col2im":
            dxp = col2im(d2 @ w.reshape(-1, o).T, xp_shape, kh, kw)
        else:  # full correlation with the rotated kernel, in/out channels swapped
            q, (n, hh, ww) = im2col(_pad(dy, ((kh - 1, kh - 1), (kw - 1, kw - 1))), kh, kw)
            dxp = (q @ w[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, c)).reshape(n, hh, ww, c)
        h, wd = xp_shape[1] - sum(pad[0]), xp_shape[2] - sum(pad[1])
        dx = dxp[:, pad[0][0]:pad[0][0] + h, pad[1][0]:pad[1][0] + wd, :]
        return dx, dw

    conv.defvjp(conv_fwd, conv_bwd)
    return lambda x, w, pad: conv(x, w, _flat(pad))


def _flat(pad):
    return tuple(v for pair in pad for v in pair)


def _unflat(flat):
    return ((flat[0], flat[1]), (flat[2], flat[3]))


# ---------------------------------------------------------------- pooling

def pool_reduce_window(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def pool_reshape(x):
    n, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


def pool_max4(x):
    """max(max(c00, c01), max(c10, c11)) over the four strided cells of each 2×2 window:
    element-wise maxima, whose autodiff is element-wise selects (cheap to fuse)."""
    n, h, w, c = x.shape
    xr = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return jnp.maximum(jnp.maximum(xr[:, :, 0, :, 0], xr[:, :, 0, :, 1]),
                       jnp.maximum(xr[:, :, 1, :, 0], xr[:, :, 1, :, 1]))


@jax.custom_vjp
def pool_manual(x):
    return pool_reshape(x)


def _pool_fwd(x):
    y = pool_reshape(x)
    return y, (x, y)


def _pool_bwd(res, dy):
    """δ to the first arg-max cell of each 2×2 window (row-major), 0 to the others."""
    x, y = res
    n, h, w, c = x.shape
    xr = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    cells = [xr[:, :, i, :, j, :] for i in range(2) for j in range(2)]
    taken = jnp.zeros(y.shape, bool)
    outs = []
    for cell in cells:
        hit = (cell == y) & ~taken
        taken = taken | hit
        outs.append(jnp.where(hit, dy, 0.0))
    dxr = jnp.stack([jnp.stack(outs[0:2], axis=3), jnp.stack(outs[2:4], axis=3)], axis=2)
    dx = dxr.reshape(n, h // 2 * 2, w // 2 * 2, c)
    return (jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0))),)


pool_manual.defvjp(_pool_fwd, _pool_bwd)


# ---------------------------------------------------------------- the network and its step

def lenet_forward(params, x, conv1=conv_xla, conv2=conv_xla, pool=pool_reduce_window,
                  pool_first=False):
    def block(z, conv, p, pad):
        z = conv(z, p["w"], pad) + p["b"]
        return jax.nn.relu(pool(z)) if pool_first else pool(jax.nn.relu(z))

    z = block(x, conv1, params["c1"], SAME5)
    z = block(z, conv2, params["c2"], VALID)
    z = z.reshape(z.shape[0], -1)
    z = jax.nn.relu(z @ params["d1"]["w"] + params["d1"]["b"])
    z = jax.nn.relu(z @ params["d2"]["w"] + params["d2"]["b"])
    return z @ params["d3"]["w"] + params["d3"]["b"]


def softmax_ce(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def sgd_momentum_step(forward, lr=0.01, momentum=0.9):
    """(params, velocity, x, y) -> (params, velocity, loss): v ← μ v − η g, θ ← θ + v."""

    def step(params, velocity, x, y):
        loss, grads = jax.value_and_grad(lambda p: softmax_ce(forward(p, x), y))(params)
        velocity = jax.tree_util.tree_map(lambda v, g: momentum * v - lr * g, velocity, grads)
        params = jax.tree_util.tree_map(lambda p, v: p + v, params, velocity)
        return params, velocity, loss

    return step


manual_col2im = make_manual_conv("col2im")
manual_full = make_manual_conv("full")

PATHS = {
    "xla_conv + reduce_window (raw JAX)": dict(),
    "xla_conv + reshape pool": dict(pool=pool_reshape),
    "im2col slices + matmul, reshape pool": dict(conv1=conv_im2col, conv2=conv_im2col,
                                                 pool=pool_reshape),
    "patches op + matmul, reshape pool": dict(conv1=conv_patches, conv2=conv_patches,
                                              pool=pool_reshape),
    "manual im2col (col2im dx), manual pool": dict(conv1=manual_col2im, conv2=manual_col2im,
                                                   pool=pool_manual),
    "manual im2col (full-conv dx), manual pool": dict(conv1=manual_full, conv2=manual_full,
                                                      pool=pool_manual),
    "shift-add conv1 + manual im2col conv2, manual pool": dict(conv1=conv_shift_add,
                                                               conv2=manual_col2im, pool=pool_manual),
    "xla_conv, manual pool": dict(pool=pool_manual),
    "xla_conv, max4 pool": dict(pool=pool_max4),
    "shift-add conv1 + xla_conv2, manual pool": dict(conv1=conv_shift_add, pool=pool_manual),
    "shift-add conv1 + xla_conv2, max4 pool": dict(conv1=conv_shift_add, pool=pool_max4),
    "shift-add conv1 + xla_conv2, max4 pool, pool before relu": dict(
        conv1=conv_shift_add, pool=pool_max4, pool_first=True),
    "manual im2col (col2im), manual pool, pool before relu": dict(
        conv1=manual_col2im, conv2=manual_col2im, pool=pool_manual, pool_first=True),
}


def path_forward(name):
    opts = PATHS[name]
    return lambda p, x: lenet_forward(p, x, **opts)
