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
}


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
    import torch.nn.functional as F
    opt = (torch.optim.Adam(net.parameters(), 3e-3) if adam
           else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    yt = torch.from_numpy(y.astype("int64"))
    net.train()

    def run(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), yt).backward()
            opt.step()
    return run


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
    step = fn.train.make_step(model, fn.losses.softmax_cross_entropy, opt)
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


def table(results):
    """Markdown: one row per flag set; ms and the ratio PyTorch/funcnet (>1: funcnet faster)."""
    rows = ["| XLA_FLAGS | LeNet raw | LeNet fn auto | LeNet fn manual | LeNet PyTorch CL | "
            "LeNet ×PyTorch (manual) | CNN fn auto | CNN fn manual | CNN PyTorch CL | "
            "CNN ×PyTorch (best fn) | MLP raw | MLP fn auto | MLP fn manual |",
            "|---" * 14 + "|"]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | error: {r['error'][-80:]!r} |" + " |" * 12)
            continue
        le, cn, ml = r.get("lenet", {}), r.get("cnn", {}), r.get("mlp", {})
        f = lambda d, k: f"{d[k]:.2f}" if k in d else "-"
        lr = f"{le['PyTorch CL'] / le['funcnet manual']:.2f}" if le else "-"
        cr = (f"{cn['PyTorch CL'] / min(cn['funcnet autodiff'], cn['funcnet manual']):.2f}"
              if cn else "-")
        rows.append(f"| {name} | {f(le, 'raw JAX')} | {f(le, 'funcnet autodiff')} | "
                    f"{f(le, 'funcnet manual')} | {f(le, 'PyTorch CL')} | {lr} | "
                    f"{f(cn, 'funcnet autodiff')} | {f(cn, 'funcnet manual')} | {f(cn, 'PyTorch CL')} | "
                    f"{cr} | {f(ml, 'raw JAX')} | {f(ml, 'funcnet autodiff')} | {f(ml, 'funcnet manual')} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--only", default=None, help="comma-separated flag-set names")
    p.add_argument("--workloads", default="lenet,cnn,mlp")
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
