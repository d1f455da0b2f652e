"""Every funcnet layer's hand backward in bfloat16 and float16, against the float64 truth,
beside autodiff (jax.vjp) run in the same dtype: `fn.check_precision`, one row per layer.

    python -m benchmarks.precision_table            # the table (Markdown), ~2-4 min on 2 cores
    python -m benchmarks.precision_table --leaves   # one row per parameter leaf and input

Error of a leaf: max |g − g64| / max |g64| (g64 the float64 truth at the same, rounded,
point). Per layer the table gives the worst leaf's hand error and autodiff's error on that
leaf, and the worst hand / autodiff ratio over the leaves; "pass" is check_precision's
verdict (hand <= 3 × autodiff, or under 2 ulps of the dtype). Inputs N(0, 1), except the
rows marked "x = 100 + N(0, 1)" (offset inputs, where a single-pass variance breaks).
Shapes are a small training batch, not the tests' tiny ones.
"""
import sys
import time

import jax
import jax.numpy as jnp

import funcnet as fn
from funcnet import _random

DTYPES = (jnp.bfloat16, jnp.float16)


def catalogue():
    """(label, layer, input: a shape or an array, train)."""
    offset = 100.0 + _random.normal(jax.random.PRNGKey(7), (32, 64))
    ids = jax.random.randint(jax.random.PRNGKey(8), (16, 12), 0, 50)
    act = (32, 128)
    return [
        ("dense(128)", fn.dense(128), (32, 256), True),
        ("conv2d(16, 3x3, SAME)", fn.conv2d(16, (3, 3), padding="SAME"), (8, 16, 16, 8), True),
        ("conv2d(16, 3x3, stride 2)", fn.conv2d(16, (3, 3), stride=2), (8, 17, 17, 8), True),
        ("conv1d(16, 5)", fn.conv1d(16, 5), (8, 32, 8), True),
        ("conv_transpose2d(8, 3x3, stride 2)", fn.conv_transpose2d(8, (3, 3), stride=2),
         (8, 8, 8, 16), True),
        ("batch_norm (train)", fn.batch_norm(), (64, 32), True),
        ("batch_norm (eval)", fn.batch_norm(), (64, 32), False),
        ("batch_norm, x = 100 + N(0, 1)", fn.batch_norm(), offset, True),
        ("layer_norm", fn.layer_norm(), (32, 64), True),
        ("layer_norm, x = 100 + N(0, 1)", fn.layer_norm(), offset, True),
        *[(name, getattr(fn, name), act, True)
          for name in ("relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "softplus", "softmax",
                       "log_softmax")],
        ("elu()", fn.elu(), act, True),
        ("leaky_relu(0.1)", fn.leaky_relu(0.1), act, True),
        ("max_pool(2x2)", fn.max_pool((2, 2)), (8, 16, 16, 8), True),
        ("avg_pool(3x3, stride 1)", fn.avg_pool((3, 3), 1), (8, 16, 16, 8), True),
        ("gaussian_pool(3x3, stride 1)", fn.gaussian_pool((3, 3), 1.0, 1), (8, 16, 16, 8), True),
        ("learned_pool(2x2)", fn.learned_pool((2, 2)), (8, 16, 16, 8), True),
        ("global_avg_pool", fn.global_avg_pool, (8, 8, 8, 16), True),
        ("dropout(0.1)", fn.dropout(0.1), act, True),
        ("flatten", fn.flatten, (8, 4, 4, 8), True),
        ("embedding(50, 32)", fn.embedding(50, 32), ids, True),
        ("rnn(32)", fn.rnn(32), (8, 16, 16), True),
        ("lstm(32)", fn.lstm(32), (8, 16, 16), True),
        ("self_attention(4, causal)", fn.self_attention(4, causal=True), (4, 16, 32), True),
        ("positional_embedding(16)", fn.positional_embedding(16), (4, 16, 32), True),
        ("residual(dense, tanh, dense)", fn.residual(fn.dense(64), fn.tanh, fn.dense(64)),
         (32, 64), True),
        ("lenet (model)", fn.models.lenet(10), (8, 28, 28, 1), True),
    ]


def worst(report):
    """(hand error, autodiff error) of the leaf with the largest hand error; the largest
    hand / autodiff ratio over the leaves (leaves with a zero autodiff error left out)."""
    top = max(report.rows, key=lambda r: r.manual_vs_autodiff)
    ratios = [r.manual_vs_autodiff / r.autodiff_vs_numerical for r in report.rows
              if r.autodiff_vs_numerical > 0]
    return top.manual_vs_autodiff, top.autodiff_vs_numerical, max(ratios, default=0.0)


def layer_rows(label, layer, x, train):
    cells, ok = [label], True
    for dtype in DTYPES:
        report = fn.check_precision(layer, x, dtype=dtype, train=train)
        hand, auto, ratio = worst(report)
        cells += [f"{hand:.1e}", f"{auto:.1e}", f"{ratio:.2f}"]
        ok = ok and report.ok
    return [cells + ["yes" if ok else "**no**"]]


def leaf_rows(label, layer, x, train):
    reports = [fn.check_precision(layer, x, dtype=d, train=train) for d in DTYPES]
    out = []
    for rows in zip(*(r.rows for r in reports)):
        cells = [label, rows[0].path]
        for r in rows:
            cells += [f"{r.manual_vs_autodiff:.1e}", f"{r.autodiff_vs_numerical:.1e}"]
        out.append(cells + ["yes" if all(r.ok for r in rows) else "**no**"])
    return out


def main(argv):
    leaves = "--leaves" in argv
    if leaves:
        head = ["layer", "leaf", "bf16 hand", "bf16 autodiff", "f16 hand", "f16 autodiff", "pass"]
    else:
        head = ["layer", "bf16 hand", "bf16 autodiff", "bf16 ratio", "f16 hand", "f16 autodiff",
                "f16 ratio", "pass"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    t0 = time.perf_counter()
    for label, layer, x, train in catalogue():
        for cells in (leaf_rows if leaves else layer_rows)(label, layer, x, train):
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}")


if __name__ == "__main__":
    main(sys.argv[1:])
