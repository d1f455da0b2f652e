"""conv2d's hand backward, formulated several ways, timed on LeNet's two convolutions.

    python -m benchmarks.conv_backward [--repeats 7] [--inner 20]

One child process per XLA_FLAGS setting (default, and funcnet's default flags), each timing
jit-compiled dW and dx for conv1 (128×28×28×1, 5×5×1×6, SAME) and conv2 (128×14×14×6,
5×5×6×16, VALID), interleaved, median ms per call:

  dW  conv     x ⋆valid δ as one convolution, the batch contracted (funcnet's formula)
      patches  dW = Pᵀ δ: im2col patches (lax.conv_general_dilated_patches), one dot_general
      taps     dW[i, j] = Σ_n,h,w xp[n, h+i, w+j, :]ᵀ δ[n, h, w, :]: kh·kw small dots
  dx  conv     δ ⋆full rot180(W), channels swapped by dimension numbers (funcnet's formula)
      col2im   dP = δ Wᵀ (one dot), then every patch cell added back (kh·kw padded slices)
      taps     dx = Σ_ij pad(δ W[i, j]ᵀ) shifted by (i, j): kh·kw dots and shifted adds
Each variant is checked against the `conv` one before it is timed.
"""
from __future__ import annotations

import json

import numpy as np

CASES = {"conv1": ((128, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2))),
         "conv2": ((128, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0)))}


def variants():
    import jax.numpy as jnp
    from jax import lax

    from funcnet.ops import correlate, rot180

    def dw_conv(x, dy, w_shape, pads):
        kh, kw = w_shape[:2]
        return correlate(x, dy, padding=pads, dims=("CHWN", "IHWO", "HWNC"))[:kh, :kw]

    def dw_patches(x, dy, w_shape, pads):
        kh, kw, c, o = w_shape
        p = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), pads,
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        dw = lax.dot_general(p, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))  # (c·kh·kw, o)
        return dw.reshape(c, kh, kw, o).transpose(1, 2, 0, 3)

    def dw_taps(x, dy, w_shape, pads):
        kh, kw, c, o = w_shape
        xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        ho, wo = dy.shape[1:3]
        rows = [[jnp.einsum("nhwc,nhwo->co", xp[:, i:i + ho, j:j + wo], dy) for j in range(kw)]
                for i in range(kh)]
        return jnp.stack([jnp.stack(r) for r in rows])

    def dx_conv(dy, w, x_shape, pads):
        kh, kw = w.shape[:2]
        (pt, pb), (pl, pr) = pads
        full = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
        return correlate(dy, rot180(w), padding=full, dims=("NHWC", "HWOI", "NHWC"))

    def dx_col2im(dy, w, x_shape, pads):
        kh, kw, c, o = w.shape
        n, h, wd, _ = x_shape
        ho, wo = dy.shape[1:3]
        dp = (dy.reshape(-1, o) @ w.reshape(-1, o).T).reshape(n, ho, wo, kh, kw, c)
        hp, wp = h + sum(pads[0]), wd + sum(pads[1])
        out = sum(jnp.pad(dp[:, :, :, i, j], ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
                  for i in range(kh) for j in range(kw))
        return out[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd]

    def dx_taps(dy, w, x_shape, pads):
        kh, kw, c, o = w.shape
        n, h, wd, _ = x_shape
        ho, wo = dy.shape[1:3]
        hp, wp = h + sum(pads[0]), wd + sum(pads[1])
        out = sum(jnp.pad(dy @ w[i, j].T, ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
                  for i in range(kh) for j in range(kw))
        return out[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd]

    return ({"conv": dw_conv, "patches": dw_patches, "taps": dw_taps},
            {"conv": dx_conv, "col2im": dx_col2im, "taps": dx_taps})


def child(repeats, inner):
    import functools

    import jax

    from .timing import calls, interleaved
    dws, dxs = variants()
    rng = np.random.default_rng(0)
    out = {}
    for case, (x_shape, w_shape, pads) in CASES.items():
        x = jax.numpy.asarray(rng.standard_normal(x_shape, np.float32))
        w = jax.numpy.asarray(rng.standard_normal(w_shape, np.float32))
        ho = x_shape[1] + sum(pads[0]) - w_shape[0] + 1
        wo = x_shape[2] + sum(pads[1]) - w_shape[1] + 1
        dy = jax.numpy.asarray(rng.standard_normal((x_shape[0], ho, wo, w_shape[3]), np.float32))
        runners = {}
        for kind, table, args in (("dW", dws, (x, dy)), ("dx", dxs, (dy, w))):
            shape = w_shape if kind == "dW" else x_shape
            ref = None
            for name, f in table.items():
                g = jax.jit(functools.partial(f, w_shape=shape, pads=pads) if kind == "dW"
                            else functools.partial(f, x_shape=shape, pads=pads))
                val = np.asarray(g(*args))
                ref = val if ref is None else ref
                np.testing.assert_allclose(val, ref, rtol=1e-3, atol=1e-2 * np.abs(ref).max())
                runners[f"{kind} {name}"] = calls(g, *args)
        res = interleaved(runners, repeats=repeats, inner=inner)
        out[case] = {k: 1e3 * float(np.median(v)) for k, v in res.items()}
    print("JSON" + json.dumps(out), flush=True)


def main(argv=None):
    from .timing import child_options, per_flag_setting
    args = child_options(__doc__, argv, repeats=7, inner=20)
    if args.child:
        return child(args.repeats, args.inner)
    for label, flags, res in per_flag_setting("benchmarks.conv_backward",
                                              ["--repeats", str(args.repeats), "--inner", str(args.inner)]):
        print(f"== {label} ({flags or 'XLA_FLAGS unset'})")
        for case, r in res.items():
            print(f"  {case}: " + ("  ".join(f"{k} {v:.2f}" for k, v in r.items())
                                   if isinstance(r, dict) else str(r)))

if __name__ == "__main__":
    main()
