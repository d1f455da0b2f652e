"""A catalogue of deliberately wrong gradient rules: each is caught, in its own test, and its
correct twin passes over many seeds (10 by default, 200 under `pytest --slow`): correct rules
never flake. Float64 differences, tiny shapes; the checks run eagerly, so seeds are cheap."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn


@pytest.fixture
def seeds(request):
    slow = request.config.getoption("--slow") or os.environ.get("FUNCNET_SLOW") == "1"
    return range(200 if slow else 10)


def rule(f, bwd):
    """f with the custom_vjp rule bwd(x..., g) -> grads (residuals: the inputs)."""
    g = jax.custom_vjp(f)
    g.defvjp(lambda *xs: (f(*xs), xs), lambda xs, ct: bwd(*xs, ct))
    return g


def normal(seed, *shapes):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, shapes)]


def caught_and_twin_passes(check, good, bad, make_args, seeds):
    """bad fails at every seed, good passes at every seed."""
    for seed in seeds:
        args = make_args(seed)
        report = check(good, *args)
        assert report.ok, f"seed {seed}: the correct rule failed\n{report}"
        assert not check(bad, *args).ok, f"seed {seed}: the wrong rule passed"


def rng(seed):
    return np.random.default_rng(seed)


# --- NumPy backward functions (check_backward) ----------------------------------------

def affine_forward(x, w, b):
    return x @ w + b, (x, w, b)


def affine_backward(dout, cache):
    x, w, _ = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def affine_args(seed):
    r = rng(seed)
    return r.standard_normal((3, 4)), r.standard_normal((4, 4)), r.standard_normal(4)


def test_transposed_weight_gradient(seeds):
    def transposed(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw.T, db  # the notes' column form dW = dz aᵀ, in row form

    caught_and_twin_passes(lambda f, *a: fn.check_backward(affine_forward, f, *a),
                           affine_backward, transposed, affine_args, seeds)


def test_numpy_backward_forgetting_the_bias(seeds):
    def no_bias(dout, cache):
        dx, dw, db = affine_backward(dout, cache)
        return dx, dw, np.zeros_like(db)

    caught_and_twin_passes(lambda f, *a: fn.check_backward(affine_forward, f, *a),
                           affine_backward, no_bias, affine_args, seeds)
