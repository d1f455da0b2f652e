"""The raw hand-written JAX steps: params as dicts, jax.value_and_grad, no framework.

This is what a JAX user writes without a library: `x @ w + b`, `lax.conv_general_dilated`,
`lax.reduce_window` max pooling (as flax.linen.max_pool does), batch norm and dropout by
hand, and SGD with momentum as two tree_maps. It is the yardstick the ratios are taken to.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .lenet_paths import lenet_forward, sgd_momentum_step, softmax_ce
from .workloads import LR, MOMENTUM


def params_from(kind, weights):
    params = {k: {n: jnp.asarray(a) for n, a in v.items()} for k, v in weights.items()}
    state = {}
    if kind == "mlp_bn":
        for name in ("d1", "d2"):
            width = weights[name]["w"].shape[1]
            params[f"bn{name[1]}"] = {"gamma": jnp.ones(width), "beta": jnp.zeros(width)}
            state[f"bn{name[1]}"] = {"mean": jnp.zeros(width), "var": jnp.ones(width)}
    return params, state


def mlp_forward(params, x):
    z = jax.nn.relu(x @ params["d1"]["w"] + params["d1"]["b"])
    z = jax.nn.relu(z @ params["d2"]["w"] + params["d2"]["b"])
    return z @ params["d3"]["w"] + params["d3"]["b"]


def mlp_bn_forward(params, state, x, key, rate=0.2, momentum=0.9, eps=1e-5):
    """dense - batch_norm - relu - dropout, twice, then dense; returns (logits, new state)."""
    new_state = {}
    keys = jax.random.split(key, 2)
    z = x
    for i, k in zip((1, 2), keys):
        z = z @ params[f"d{i}"]["w"] + params[f"d{i}"]["b"]
        mean, var = z.mean(0), z.var(0)
        bn, st = params[f"bn{i}"], state[f"bn{i}"]
        z = jax.nn.relu((z - mean) / jnp.sqrt(var + eps) * bn["gamma"] + bn["beta"])
        keep = jax.random.bernoulli(k, 1.0 - rate, z.shape)
        z = jnp.where(keep, z / (1.0 - rate), 0.0)
        new_state[f"bn{i}"] = {"mean": momentum * st["mean"] + (1 - momentum) * mean,
                               "var": momentum * st["var"] + (1 - momentum) * var}
    return z @ params["d3"]["w"] + params["d3"]["b"], new_state


def make_step(kind):
    """A jitted (params, velocity, state, key, x, y) -> (params, velocity, state, key, loss)."""
    if kind == "mlp_bn":
        def step(params, velocity, state, key, x, y):
            key, sub = jax.random.split(key)

            def objective(p):
                logits, new_state = mlp_bn_forward(p, state, x, sub)
                return softmax_ce(logits, y), new_state

            (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(params)
            velocity = jax.tree_util.tree_map(lambda v, g: MOMENTUM * v - LR * g, velocity, grads)
            params = jax.tree_util.tree_map(lambda p, v: p + v, params, velocity)
            return params, velocity, state, key, loss
    else:
        inner = sgd_momentum_step(mlp_forward if kind == "mlp" else lenet_forward, LR, MOMENTUM)

        def step(params, velocity, state, key, x, y):
            params, velocity, loss = inner(params, velocity, x, y)
            return params, velocity, state, key, loss
    return jax.jit(step, donate_argnums=(0, 1, 2, 3))


def loss_and_grads(kind, params, x, y):
    """The loss and gradient of one batch (deterministic workloads only)."""
    forward = mlp_forward if kind == "mlp" else lenet_forward
    return jax.value_and_grad(lambda p: softmax_ce(forward(p, x), y))(params)
