"""The XLA CPU flag map: one child process per XLA_FLAGS setting (XLA reads the variable once,
when JAX starts its backend), PyTorch eager in the same child so each child's ratio is
immune to the load drifting between children.

    python -m benchmarks.xla_flags [--repeats 7] [--inner 10] [--only NAME,...] [--quick]

Per child (interleaved, median ms per step, batch 128 unless noted):
  lenet    LeNet SGD-momentum step: raw JAX, funcnet autodiff, funcnet hand formulas,
           PyTorch eager channels-last
  cnn      experiments/cnn.py's digits_net (8×8, batch 32, Adam as in the `funcnet` run):
           funcnet autodiff and hand formulas, PyTorch eager channels-last
  mlp      784-512-512-10 SGD-momentum: raw JAX, funcnet autodiff, funcnet hand formulas
  res      a residual block (conv3x3-bn-relu-conv3x3-bn + x, relu, global pool, dense; batch
           64 of 14×14×16, Adam): funcnet autodiff and hand formulas, PyTorch CL
  convT    conv_transpose2d forward + backward (32×14×14×16 -> 28×28×8, k 4, s 2, p 1):
           funcnet hand backward vs torch ConvTranspose2d + autograd (1 thread, 2 threads)
Flag names come from the installed jaxlib (`strings libjax_common.so | grep xla_cpu`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

FLAG_SETS = {
    "default (unset)": None,
    "ynn fusions off": "--xla_cpu_experimental_ynn_fusion_type=",
    "xnnpack off": "--xla_cpu_use_xnnpack=false",
    "ynn off + xnnpack off": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false",
    "xnn graph fusion greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "onednn + custom call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "ynn off + onednn": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true "
                        "--xla_cpu_experimental_onednn_custom_call=true",
    "ynn off + single-thread eigen": "--xla_cpu_experimental_ynn_fusion_type= "
                                     "--xla_cpu_multi_thread_eigen=false",
    "ynn off + fusion emitters off": "--xla_cpu_experimental_ynn_fusion_type= "
                                     "--xla_cpu_use_fusion_emitters=false",
    "ynn off + concurrency scheduler": "--xla_cpu_experimental_ynn_fusion_type= "
                                       "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "ynn off + vector width 256": "--xla_cpu_experimental_ynn_fusion_type= "
                                  "--xla_cpu_prefer_vector_width=256",
    "xnn fusions off": "--xla_cpu_experimental_xnn_fusion_type=",
    # the flag takes a list (LIBRARY_FUSION_TYPE_* in the jaxlib: dot, individual_dot,
    # individual_convolution, eltwise, reduce): YNNPACK for the matmuls only
    "ynn individual dots only": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "ynn dots only": "--xla_cpu_experimental_ynn_fusion_type=dot,individual_dot",
    "ynn all but convolutions": "--xla_cpu_experimental_ynn_fusion_type=dot,individual_dot,eltwise,reduce",
    "ynn off + custom matmul tiling": "--xla_cpu_experimental_ynn_fusion_type= "
                                      "--xla_cpu_enable_custom_matmul_tiling=true",
    "ynn off + fast min/max": "--xla_cpu_experimental_ynn_fusion_type= "
                              "--xla_cpu_enable_fast_min_max=true",
    "ynn off + fast math": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_enable_fast_math=true",
}


def _torch_res_block():
    """benchmarks.branches' residual block in PyTorch, channels-last."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(torch.relu(x + self.body(x)).mean((2, 3)))
    return Block().to(memory_format=torch.channels_last)


def _res_competitors():
    import numpy as np
    import torch

    from .branches import residual_step
    rng = np.random.default_rng(0)
    xn = rng.standard_normal((64, 14, 14, 16)).astype(np.float32)
    yn = rng.integers(0, 10, 64).astype(np.int32)
    xt = torch.from_numpy(xn).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    net = _torch_res_block()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    named = residual_step(0, 0, runners_only=True)
    comp = {"funcnet autodiff": named["autodiff (jax.grad)"],
            "funcnet manual": named["with_manual_grads"]}
    comp["PyTorch CL"] = _torch_runner_with(net, opt, xt, yn)
    return comp


def _torch_runner_with(net, opt, x, y):
    import torch
    import torch.nn.functional as F
    yt = torch.from_numpy(y.astype("int64"))

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), yt).backward()
            opt.step()
    return run


def _torch_digits_cnn():
    """experiments/cnn.digits_net in PyTorch (pad-edge pools), channels-last."""
    import torch
    from torch import nn
    act = nn.ReLU
    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), act(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), act(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), act(),
                        nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(256, 128), act(),
                        nn.Dropout(0.5), nn.Linear(128, 10))
    return net.to(memory_format=torch.channels_last)


def _torch_runner(net, x, y, adam=False):
    import torch
    opt = (torch.optim.Adam(net.parameters(), 3e-3) if adam
           else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    net.train()
    return _torch_runner_with(net, opt, x, y)


def _cnn_funcnet(x, y, manual):
    import jax
    import jax.numpy as jnp
    import optax

    import funcnet as fn
    from experiments import cnn
    from .run import _jax_runner
    model = cnn.digits_net()
    if manual:
        model = fn.with_manual_grads(model)
    params, state = jax.jit(lambda k: model.init(k, x.shape))(jax.random.PRNGKey(0))
    opt = optax.adam(3e-3)
    ts = fn.train.TrainState(params, state, opt.init(params), jnp.zeros((), jnp.int32),
                             jax.random.PRNGKey(1))
    step = fn.train.make_step(model, opt, fn.losses.softmax_cross_entropy)
    t0 = time.perf_counter()
    compiled = step.lower(ts, x, y).compile()
    return _jax_runner(lambda t, x, y: compiled(t, x, y), (ts,), x, y, 1), time.perf_counter() - t0


def child(workloads_wanted, repeats, inner):
    """Runs in the child: prints one JSON line {workload: {competitor: median ms}}."""
    import jax.numpy as jnp
    import numpy as np

    from . import workloads
    from .run import funcnet_competitor, raw_competitor, torch_competitor
    from .timing import interleaved
    out = {}
    for kind in workloads_wanted:
        if kind in ("lenet", "mlp"):
            weights = workloads.init_weights(kind)
            xn, yn = workloads.batch(kind)
            x, y = jnp.asarray(xn), jnp.asarray(yn)
            comp = {"raw JAX": raw_competitor(kind, weights, x, y)[0],
                    "funcnet autodiff": funcnet_competitor(kind, weights, x, y)[0],
                    "funcnet manual": funcnet_competitor(kind, weights, x, y, True)[0]}
            if kind == "lenet":
                comp["PyTorch CL"] = torch_competitor(kind, weights, xn, yn, channels_last=True)
        elif kind == "res":
            comp = _res_competitors()
        elif kind == "convT":
            from .branches import conv_transpose
            timings = conv_transpose(repeats, inner)[0]
            out[kind] = {("funcnet manual" if t.name.startswith("funcnet") else
                          "PyTorch " + t.name.rsplit(", ", 1)[1]): 1e3 * t.median for t in timings}
            continue
        else:  # the digits CNN, batch 32 of 8×8×1
            import torch
            rng = np.random.default_rng(0)
            xn = rng.standard_normal((32, 8, 8, 1)).astype(np.float32)
            yn = rng.integers(0, 10, 32).astype(np.int32)
            x, y = jnp.asarray(xn), jnp.asarray(yn)
            xt = torch.from_numpy(xn).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            comp = {"funcnet autodiff": _cnn_funcnet(x, y, False)[0],
                    "funcnet manual": _cnn_funcnet(x, y, True)[0],
                    "PyTorch CL": _torch_runner(_torch_digits_cnn(), xt, yn, adam=True)}
        res = interleaved(comp, repeats=repeats, inner=inner)
        out[kind] = {k: 1e3 * float(np.median(v)) for k, v in res.items()}
    print("JSON" + json.dumps(out), flush=True)


def run_map(names, workloads_wanted, repeats, inner):
    results = {}
    for name in names:
        flags = FLAG_SETS[name]
        env = dict(os.environ, FUNCNET_XLA_DEFAULTS="0", OMP_NUM_THREADS="2")
        env.pop("XLA_FLAGS", None)
        if flags is not None:
            env["XLA_FLAGS"] = flags
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "benchmarks.xla_flags", "--child",
                            ",".join(workloads_wanted), "--repeats", str(repeats), "--inner", str(inner)],
                           env=env, capture_output=True, text=True, cwd=os.path.dirname(HERE),
                           timeout=1200)
        line = [l for l in p.stdout.splitlines() if l.startswith("JSON")]
        results[name] = json.loads(line[0][4:]) if line else {"error": p.stderr[-500:]}
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(results[name])}", flush=True)
    return results


TITLES = {"lenet": "LeNet, batch 128, SGD-momentum", "cnn": "digits CNN, batch 32, Adam",
          "mlp": "MLP 784-512-512-10, batch 128", "res": "residual block, batch 64, Adam",
          "convT": "conv_transpose2d forward + backward"}


def table(results):
    """Markdown, one table per workload: a row per flag set, ms/step per competitor, and
    × = the fastest PyTorch (or raw JAX for the MLP) time / the fastest funcnet time (>1:
    funcnet faster)."""
    out = []
    kinds = [k for k in TITLES if any(k in r for r in results.values())]
    for kind in kinds:
        cols = sorted({c for r in results.values() for c in r.get(kind, {})})
        ref = [c for c in cols if c.startswith("PyTorch")] or ["raw JAX"]
        out += [f"**{TITLES[kind]}** (ms/step medians; × = best {ref[0].split()[0]} / best funcnet)",
                "", "| XLA_FLAGS | " + " | ".join(cols) + " | × |", "|---" * (len(cols) + 2) + "|"]
        for name, r in results.items():
            d = r.get(kind)
            if not d:
                out.append(f"| {name} | " + " | ".join("-" for _ in cols) + " | - |")
                continue
            best_fn = min(v for c, v in d.items() if c.startswith("funcnet"))
            best_ref = min(d[c] for c in ref if c in d)
            out.append(f"| {name} | " + " | ".join(f"{d[c]:.2f}" if c in d else "-" for c in cols)
                       + f" | {best_ref / best_fn:.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--only", default=None, help="comma-separated flag-set names")
    p.add_argument("--workloads", default="lenet,cnn,mlp,res,convT")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.child is not None:
        return child(args.child.split(","), args.repeats, args.inner)
    names = args.only.split(",") if args.only else list(FLAG_SETS)
    results = run_map(names, args.workloads.split(","), args.repeats, args.inner)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
