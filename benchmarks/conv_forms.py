"""Few-channel convolutions on XLA:CPU: lax's own against the arrangements of funcnet/_cpu_conv.py.

    python -m benchmarks.conv_forms [--repeats 5] [--inner 10]

`ops.correlate` (every conv2d forward, and conv2d's dx) runs on CPU
- a one-channel input as its kernel's kh row shifts stacked as channels, then a 1×kw
  convolution (`_cpu_conv.rows_as_channels`), under any flags;
- 2-6 channels in (or out, for dx) over 2×2 blocks folded into channels
  (`_cpu_conv.space_to_depth`), with YNNPACK's fusions off (funcnet's flag) only.
One child process per XLA_FLAGS setting (XLA's default, and funcnet's), each timing
jit-compiled relu(conv) ("fwd") and the gradient of Σ relu(conv)² ("grad"), interleaved,
median ms per call:

  lax     lax.conv_general_dilated, NHWC/HWIO
  form    the case's arrangement: "rows" (kh·c_in channels for c_in > 1, which funcnet does
          not do: the c_in 3 and 6 cases show why) or "blocks"; grad is with respect to
          the kernel for "rows" (a first layer), to the kernel and the input for "blocks"

Each arrangement's result is checked against `lax` before it is timed, under both settings
(so "blocks" is timed under XLA's flags too, where funcnet does not use it).
"""
from __future__ import annotations

import json

import numpy as np

# name: (x shape, kernel shape, padding, form)
CASES = {
    "LeNet conv1 128×28×28×1, 5×5→6, SAME": ((128, 28, 28, 1), (5, 5, 1, 6), ((2, 2), (2, 2)), "rows"),
    "digits CNN conv1 32×8×8×1, 3×3→16, SAME": ((32, 8, 8, 1), (3, 3, 1, 16), ((1, 1), (1, 1)), "rows"),
    "64×28×28×1, 3×3→16, SAME": ((64, 28, 28, 1), (3, 3, 1, 16), ((1, 1), (1, 1)), "rows"),
    "64×32×32×3, 5×5→16, SAME (c_in 3)": ((64, 32, 32, 3), (5, 5, 3, 16), ((2, 2), (2, 2)), "rows"),
    "128×14×14×6, 5×5→16, VALID (c_in 6)": ((128, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0)), "rows"),
    "LeNet conv2 128×14×14×6, 5×5→16, VALID": ((128, 14, 14, 6), (5, 5, 6, 16), ((0, 0), (0, 0)), "blocks"),
    "128×14×14×6, 3×3→16, SAME": ((128, 14, 14, 6), (3, 3, 6, 16), ((1, 1), (1, 1)), "blocks"),
    "64×32×32×3, 5×5→16, SAME": ((64, 32, 32, 3), (5, 5, 3, 16), ((2, 2), (2, 2)), "blocks"),
    "64×32×32×3, 3×3→16, SAME": ((64, 32, 32, 3), (3, 3, 3, 16), ((1, 1), (1, 1)), "blocks"),
    "64×16×16×8, 3×3→16, SAME (c_in 8)": ((64, 16, 16, 8), (3, 3, 8, 16), ((1, 1), (1, 1)), "blocks"),
    "64×28×28×16, 3×3→16, SAME (c_in 16)": ((64, 28, 28, 16), (3, 3, 16, 16), ((1, 1), (1, 1)), "blocks"),
}


def child(repeats, inner):
    import functools

    import jax
    import jax.numpy as jnp
    from jax import lax

    from funcnet import _cpu_conv

    from .timing import calls, interleaved

    def lax_conv(x, w, pads):
        return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    rng = np.random.default_rng(0)
    runners = {}
    for case, (x_shape, w_shape, pads, form) in CASES.items():
        x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
        w = jnp.asarray(rng.standard_normal(w_shape, np.float32))
        if form == "blocks":
            mine = functools.partial(_cpu_conv.space_to_depth, padding=pads)
        else:  # for c_in = 1 what ops.correlate runs; for more, what it does not
            mine = functools.partial(_cpu_conv.rows_as_channels, stride=(1, 1), padding=pads)
        ref = np.asarray(jax.jit(lax_conv, static_argnums=2)(x, w, pads))
        got = np.asarray(jax.jit(lambda x, w, f=mine: f(x, w))(x, w))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        for way, conv in (("lax", functools.partial(lax_conv, pads=pads)), (form, mine)):
            fwd = jax.jit(lambda x, w, f=conv: jax.nn.relu(f(x, w)))
            grad = jax.jit(jax.grad(lambda w, x, f=conv: jnp.sum(jax.nn.relu(f(x, w)) ** 2),
                                    argnums=(0, 1) if form == "blocks" else 0))
            for kind, g, args in (("fwd", fwd, (x, w)), ("grad", grad, (w, x))):
                runners[f"{case}|{kind} {'lax' if way == 'lax' else 'form'}"] = calls(g, *args)
    res = interleaved(runners, repeats=repeats, inner=inner)
    out = {}
    for key, v in res.items():
        case, what = key.split("|")
        out.setdefault(case, {})[what] = 1e3 * float(np.median(v))
    print("JSON" + json.dumps(out), flush=True)


def main(argv=None):
    from .timing import child_options, per_flag_setting
    args = child_options(__doc__, argv, repeats=5, inner=10)
    if args.child:
        return child(args.repeats, args.inner)
    print("| case | form | XLA_FLAGS | fwd lax | fwd form | grad lax | grad form |")
    print("|---|---|---|---|---|---|---|")
    for label, _, res in per_flag_setting("benchmarks.conv_forms",
                                          ["--repeats", str(args.repeats), "--inner", str(args.inner)]):
        if "error" in res:
            print(f"| {label}: failed | {res['error']!r} |")
            continue
        for case, r in res.items():
            print(f"| {case} | {CASES[case][3]} | {label} | {r['fwd lax']:.2f} | {r['fwd form']:.2f} | "
                  f"{r['grad lax']:.2f} | {r['grad form']:.2f} |")

if __name__ == "__main__":
    main()
