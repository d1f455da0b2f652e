"""check_backward: a NumPy backward in the cs231n convention vs finite differences of its
NumPy forward, in float64. No JAX in the user's functions."""
from __future__ import annotations

import numpy as np

from ..errors import FuncnetError
from . import _probe, kernels, recheck
from .report import Comparison, GradientReport, leaf_row

__all__ = ["check_backward"]


def check_backward(forward, backward, *inputs, seed=0, eps=1e-5, rtol=1e-5, atol=None,
                   max_elements=4096, directions=8, raise_on_failure=False) -> GradientReport:
    """`forward(*inputs) -> (out, cache)`, `backward(dout, cache) -> grads` (a tuple with
    one gradient per input, or one array for one input). For a random upstream gradient
    dout, each input's gradient is compared with centred differences of L = Σ dout ⊙ out,
    computed with the NumPy forward in float64, coordinate by coordinate; inputs of more
    than `max_elements` elements are compared along `directions` random unit directions v
    (⟨grad, v⟩ vs (L(x + εv) − L(x − εv)) / 2ε). Integer inputs are constants (their
    gradient, if any, is ignored). `seed` seeds a NumPy generator, the check's only random
    source (dout, then the directions). Never raises on a failed check unless
    `raise_on_failure`; a wrong number or shape of gradients is a FuncnetError naming it.

    Returns a GradientReport, one row per input (`input0`, `input1`, ...).
    """
    where = "check_backward"
    xs = [np.array(x, np.float64 if np.issubdtype(np.asarray(x).dtype, np.floating) else None)
          for x in inputs]
    floats = [i for i, x in enumerate(xs) if np.issubdtype(x.dtype, np.floating)]
    if not floats:
        raise FuncnetError(f"{where}: no floating-point input to differentiate")
    for i in floats:
        if not np.all(np.isfinite(xs[i])):
            raise FuncnetError(f"{where}: input {i} holds NaN or inf; gradients can only be "
                               f"checked at finite inputs")
    out = _out(forward, xs, where)
    _probe.check_output(out, where, _out(forward, xs, where))
    rng = np.random.default_rng([seed, 0xF0C5])  # not the stream a user seeds with 0
    dout = rng.standard_normal(out.shape)
    grads = _grads(backward(dout, forward(*[x.copy() for x in xs])[1]), xs, floats, where)
    loss = lambda ys: float(np.sum(dout * _out(forward, ys, where)))  # noqa: E731
    product = np.abs(dout * np.asarray(out, np.float64))
    scale = float(np.sum(product[np.isfinite(product)]))  # a NaN output fails on its own
    floor = 1e-6 * max(1.0, scale) if atol is None else atol
    rows = [_coordinate_row(loss, xs, i, grads[i], eps, rtol, floor, scale)
            if xs[i].size <= max_elements else
            _projected_row(loss, xs, i, grads[i], eps, directions, rng, rtol, floor, scale)
            for i in floats]
    report = GradientReport(rows, loss(xs), {"rtol": rtol, "atol": floor, "eps": eps},
                            columns=("backward/numerical", "-"), title="check_backward")
    return report.finish(raise_on_failure)


def _coordinate_row(loss, xs, i, grad, eps, rtol, floor, scale):
    """Input i element by element; a few failing elements (not at a kink) differenced again
    at ε/2 for their error bars."""
    num, fw, bw = _coordinate_differences(loss, xs, i, eps)

    def fine(mask):
        out = np.full(num.shape, np.nan)
        for k in np.flatnonzero(mask):
            out.flat[k] = _along(loss, xs, i, _unit(xs[i], k), eps / 2)
        return out

    num, kinks, unsure = recheck.judge(grad, num, fw, bw, rtol, floor, eps, fine, scale=scale)
    return leaf_row(f"input{i}", [("backward", grad), ("numerical", num)],
                    [Comparison(0, 1, rtol, floor, unreliable=unsure)], kinks)


def _projected_row(loss, xs, i, grad, eps, directions, rng, rtol, floor, scale):
    """Input i along `directions` random unit directions v: ⟨grad, v⟩ vs the differences
    along v (a failing direction looked at again: error bar, then bisection to an element)."""
    vs = []
    for _ in range(directions):
        v = rng.standard_normal(xs[i].shape)
        vs.append(v / np.linalg.norm(v))
    vs = np.stack(vs)
    exact = np.tensordot(vs, grad, axes=grad.ndim)
    triples = [kernels.differences(*_pair(loss, xs, i, v, eps), loss(xs), eps) for v in vs]
    num, fw, bw = (np.array([t[k] for t in triples]) for k in range(3))
    probe = recheck.Probe(lambda u, size: _along(loss, xs, i, u, size), grad, "backward")
    return recheck.projected_row(f"input{i} (along {directions} random directions)", grad.shape,
                                 exact, num, kernels.kink_mask(fw, bw, floor), vs, probe, rtol,
                                 floor, eps, scale)


def _unit(x, k):
    """The k-th coordinate direction of x's shape."""
    e = np.zeros(x.size)
    e[k] = 1.0
    return e.reshape(x.shape)


def _pair(loss, xs, i, u, size):
    """(L(x + size·u), L(x − size·u)), input i moved along u."""
    return tuple(loss(xs[:i] + [xs[i] + s * size * u] + xs[i + 1:]) for s in (1.0, -1.0))


def _along(loss, xs, i, u, size):
    """The centred difference of L along u in input i."""
    up, down = _pair(loss, xs, i, u, size)
    return (up - down) / (2 * size)


def _out(forward, xs, where):
    """forward's output on copies of the inputs (a forward may write into its arguments)."""
    result = forward(*[x.copy() for x in xs])
    if not (isinstance(result, tuple) and len(result) == 2):
        raise FuncnetError(f"{where}: forward must return (out, cache), got "
                           f"{type(result).__name__}")
    return np.asarray(result[0])


def _grads(grads, xs, floats, where):
    """backward's result as a list with one float64 array per input, shapes checked."""
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(xs):
        raise FuncnetError(f"{where}: backward returned {len(grads)} gradient(s) for "
                           f"{len(xs)} input(s); return one per input, in order")
    out = []
    for i, (g, x) in enumerate(zip(grads, xs)):
        if i in floats and np.shape(g) != x.shape:
            raise FuncnetError(f"{where}: backward's gradient for input {i} has shape "
                               f"{np.shape(g)}, but input {i} has shape {x.shape}")
        out.append(np.asarray(g, np.float64) if i in floats else None)
    return out


def _coordinate_differences(loss, xs, i, eps):
    """Centred, forward and backward differences of loss in each coordinate of input i."""
    x = xs[i]
    l0 = loss(xs)
    plus, minus = np.zeros(x.size), np.zeros(x.size)
    for k in range(x.size):
        for sign, store in ((1, plus), (-1, minus)):
            moved = x.copy()
            moved.flat[k] += sign * eps
            store[k] = loss(xs[:i] + [moved] + xs[i + 1:])
    return tuple(d.reshape(x.shape) for d in kernels.differences(plus, minus, l0, eps))
