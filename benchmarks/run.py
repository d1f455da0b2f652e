"""Run every benchmark and write its tables into benchmarks/RESULTS.md.

Each table goes between its `<!-- benchmarks.run:NAME -->` markers (two of them in
benchmarks/investigations/); the conclusions and links around the markers are kept.

    python -m benchmarks.run            # the full run (~10-15 minutes on 2 cores)
    python -m benchmarks.run --quick    # fewer repeats and paths (~2 minutes)

Needs the `bench` extra: `pip install torch==2.13.0` (the CPU wheel) and scikit-learn.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn

from . import extras, lenet_paths, numpy_net, raw_jax, workloads
from .timing import Timing, interleaved

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- competitors

def _jax_runner(compiled, carry, x, y, n_carry):
    """runner(n) for a compiled step (carry..., x, y) -> (carry..., extra...)."""
    holder = [carry]

    def run(n):
        c = holder[0]
        for _ in range(n):
            out = compiled(*c, x, y)
            c = out[:n_carry]
        jax.block_until_ready(out)
        holder[0] = c

    return run


def raw_competitor(kind, weights, x, y):
    params, state = raw_jax.params_from(kind, weights)
    vel = jax.tree_util.tree_map(jnp.zeros_like, params)
    step = raw_jax.make_step(kind)
    carry = (params, vel, state, jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    compiled = step.lower(*carry, x, y).compile()
    return _jax_runner(compiled, carry, x, y, 4), time.perf_counter() - t0


def funcnet_competitor(kind, weights, x, y, manual=False):
    model, params, state = workloads.funcnet_params(kind, weights)
    if manual:
        model = fn.with_manual_grads(model)
    opt = optax.sgd(workloads.LR, momentum=workloads.MOMENTUM)
    ts = fn.train.TrainState(params, state, opt.init(params), jnp.zeros((), jnp.int32),
                             jax.random.PRNGKey(0))
    step = fn.train.make_step(model, opt, fn.losses.softmax_cross_entropy)
    t0 = time.perf_counter()
    compiled = step.lower(ts, x, y).compile()
    return _jax_runner(lambda t, x, y: compiled(t, x, y), (ts,), x, y, 1), time.perf_counter() - t0


def path_competitor(name, weights, x, y, compiler_options=None):
    params, _ = raw_jax.params_from("lenet", weights)
    vel = jax.tree_util.tree_map(jnp.zeros_like, params)
    step = jax.jit(lenet_paths.sgd_momentum_step(lenet_paths.path_forward(name)),
                   donate_argnums=(0, 1), compiler_options=compiler_options)
    t0 = time.perf_counter()
    compiled = step.lower(params, vel, x, y).compile()
    return _jax_runner(compiled, (params, vel), x, y, 2), time.perf_counter() - t0


def torch_competitor(kind, weights, x, y, channels_last=False):
    net = workloads.torch_model(kind, weights, channels_last)
    run, _ = workloads.torch_step(net, workloads.torch_input(kind, x, channels_last), y)
    return run


def compare(title, competitors, flops, repeats, inner, baseline):
    """competitors: {name: (runner, compile_s or None)}; returns [Timing]."""
    print(f"\n== {title}", flush=True)
    res = interleaved({k: v[0] for k, v in competitors.items()}, repeats=repeats, inner=inner)
    out = [Timing(k, res[k], flops, competitors[k][1]) for k in competitors]
    base = next(t for t in out if t.name == baseline)
    for t in out:
        t.extra["ratio"] = base.median / t.median
        print(f"  {t.median * 1e3:8.2f} ms [{t.lo * 1e3:.2f}-{t.hi * 1e3:.2f}]  {t.steps_per_s:7.1f} steps/s"
              f"  {t.gflops:6.1f} GFLOP/s  x{t.extra['ratio']:.2f}  {t.name}", flush=True)
    return out


# ----------------------------------------------------------------------------- sections

def matmul_ceiling(repeats):
    a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
    f = jax.jit(jnp.dot)
    t0 = time.perf_counter()
    f = f.lower(a, a).compile()
    ct = time.perf_counter() - t0

    def run(n):
        for _ in range(n):
            out = f(a, a)
        out.block_until_ready()

    res = interleaved({"jit(jnp.dot) 2048² f32": run}, repeats=repeats, inner=5)
    t = Timing("jit(jnp.dot) 2048² f32", res["jit(jnp.dot) 2048² f32"], 2.0 * 2048 ** 3, ct)
    print(f"\n== matmul ceiling: {t.gflops:.1f} GFLOP/s", flush=True)
    return t


def step_comparison(kind, repeats, inner, numpy_on=True):
    weights = workloads.init_weights("lenet" if kind == "lenet" else "mlp")
    xn, yn = workloads.batch(kind)
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    comp = {"raw JAX": raw_competitor(kind, weights, x, y),
            "funcnet make_step (autodiff)": funcnet_competitor(kind, weights, x, y),
            "funcnet make_step (with_manual_grads)": funcnet_competitor(kind, weights, x, y, True),
            "PyTorch eager": (torch_competitor(kind, weights, xn, yn), None)}
    if kind == "lenet":
        comp["PyTorch eager channels-last"] = (torch_competitor(kind, weights, xn, yn, True), None)
    if numpy_on:
        comp["NumPy from scratch"] = (numpy_net.make_runner(kind, weights, xn, yn), None)
    titles = {"mlp": "MLP 784-512-512-10", "mlp_bn": "MLP 784-512-512-10 + batch norm + dropout",
              "lenet": "LeNet 28×28×1"}
    return compare(titles[kind], comp, workloads.flops(kind), repeats, inner, "raw JAX")


def conv_paths(repeats, inner, quick):
    weights = workloads.init_weights("lenet")
    xn, yn = workloads.batch("lenet")
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    names = list(lenet_paths.PATHS)
    if quick:
        names = [n for n in names if "raw JAX" in n or n.startswith("xla_conv, manual")]
    comp = {n: path_competitor(n, weights, x, y) for n in names}
    comp["funcnet make_step (with_manual_grads)"] = funcnet_competitor("lenet", weights, x, y, True)
    comp["funcnet make_step (autodiff)"] = funcnet_competitor("lenet", weights, x, y)
    comp["PyTorch eager channels-last"] = (torch_competitor("lenet", weights, xn, yn, True), None)
    return compare("conv-path investigation (LeNet step)", comp, workloads.flops("lenet"), repeats,
                   inner, names[0])


FLAG_SETS = {
    "default": "",
    "YNNPACK off": "--xla_cpu_experimental_ynn_fusion_type=",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
    "oneDNN": "--xla_cpu_use_onednn=true",
}


def flags_child(repeats, inner):
    """In a child process with XLA_FLAGS set: raw JAX vs funcnet LeNet steps; JSON out."""
    weights = workloads.init_weights("lenet")
    xn, yn = workloads.batch("lenet")
    x, y = jnp.asarray(xn), jnp.asarray(yn)
    comp = {"raw JAX": raw_competitor("lenet", weights, x, y),
            "funcnet manual": funcnet_competitor("lenet", weights, x, y, True)}
    res = interleaved({k: v[0] for k, v in comp.items()}, repeats=repeats, inner=inner)
    print("JSON" + json.dumps({k: float(np.median(v)) for k, v in res.items()}))


def flags_probe(repeats, inner):
    print("\n== XLA CPU flags (one child process per flag set)", flush=True)
    out = {}
    for name, flags in FLAG_SETS.items():
        env = dict(os.environ, XLA_FLAGS=flags)
        p = subprocess.run([sys.executable, "-m", "benchmarks.run", "--flags-child",
                            "--repeats", str(repeats), "--inner", str(inner)],
                           env=env, capture_output=True, text=True, cwd=os.path.dirname(HERE))
        line = [l for l in p.stdout.splitlines() if l.startswith("JSON")]
        out[name] = json.loads(line[0][4:]) if line else {"error": p.stderr[-300:]}
        print(f"  {name:24s} {out[name]}", flush=True)
    return out


def digits(repeats):
    print("\n== time to 97% test accuracy on digits", flush=True)
    data = extras.digits_data()
    fns = {"funcnet MLP (make_step + lax.scan per epoch)": extras.time_to_97_funcnet,
           "scikit-learn MLPClassifier": extras.time_to_97_sklearn,
           "PyTorch eager": extras.time_to_97_torch}
    res = {k: [] for k in fns}
    for r in range(repeats):
        for k, f in fns.items():
            res[k].append(f(data, r))
    for k, v in res.items():
        print(f"  {k}: {v}", flush=True)
    return res


# ----------------------------------------------------------------------------- report

def _versions():
    import sklearn
    import torch
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "torch": torch.__version__,
            "torch threads": torch.get_num_threads(), "scikit-learn": sklearn.__version__,
            "funcnet": fn.__version__}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _table(timings, ceiling=None):
    head = "| competitor | ms/step median [min–max] | steps/s | GFLOP/s | × raw JAX | jit compile s |"
    if ceiling:
        head += " % of matmul ceiling |"
    rows = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for t in timings:
        row = (f"| {t.name} | {t.median * 1e3:.2f} [{t.lo * 1e3:.2f}–{t.hi * 1e3:.2f}] | "
               f"{t.steps_per_s:.1f} | {t.gflops:.1f} | {t.extra['ratio']:.2f} | "
               f"{'' if t.compile_s is None else f'{t.compile_s:.2f}'} |")
        if ceiling:
            row += f" {100 * t.gflops / ceiling.gflops:.0f}% |"
        rows.append(row)
    return "\n".join(rows)


def _get(ts, name):
    return next(t for t in ts if t.name == name)


def targets(R):
    """[(target, measured, met)] from the results."""
    out = []
    for kind in ("mlp", "lenet"):
        ts = R[kind]
        raw = _get(ts, "raw JAX").median
        auto = _get(ts, "funcnet make_step (autodiff)").median
        man = _get(ts, "funcnet make_step (with_manual_grads)").median
        out.append((f"{kind}: funcnet autodiff step / raw JAX ≥ 0.97 (speed ratio)", raw / auto, raw / auto >= 0.97))
        out.append((f"{kind}: funcnet manual-grad step / raw JAX ≥ 0.97", raw / man, raw / man >= 0.97))
        out.append((f"{kind}: manual-grad step ≥ 0.95 × autodiff step", auto / man, auto / man >= 0.95))
    mlp = R["mlp"]
    best = min(_get(mlp, n).median for n in ("funcnet make_step (autodiff)", "funcnet make_step (with_manual_grads)"))
    torch_mlp = _get(mlp, "PyTorch eager").median
    out.append(("MLP: funcnet ≥ 1.6 × PyTorch eager", torch_mlp / best, torch_mlp / best >= 1.6))
    pct = workloads.flops("mlp") / best / 1e9 / R["ceiling"].gflops
    out.append(("MLP: funcnet ≥ 75% of the matmul ceiling", pct, pct >= 0.75))
    le = R["lenet"]
    best_le = min(_get(le, n).median for n in ("funcnet make_step (autodiff)", "funcnet make_step (with_manual_grads)"))
    cl = _get(le, "PyTorch eager channels-last").median
    out.append(("LeNet: funcnet at least as fast as PyTorch channels-last (speed ratio ≥ 1)", cl / best_le, cl / best_le >= 1.0))
    if "numgrad" in R:
        g = R["numgrad"]
        out.append(("full numerical gradient of LeNet ≤ 20 s", g["full_s"], g["full_s"] <= 20))
        out.append(("numerical gradient ≥ 20× faster than the cs231n loop", g["speedup"], g["speedup"] >= 20))
    if "digits" in R:
        med = {k: float(np.nanmedian([r[0] for r in v])) for k, v in R["digits"].items()}
        f, s = med["funcnet MLP (make_step + lax.scan per epoch)"], med["scikit-learn MLPClassifier"]
        out.append(("time to 97% on digits: funcnet faster than scikit-learn (ratio sklearn/funcnet)", s / f, f < s))
    return out


# The runner's sections: (name, heading in a new file, the file under benchmarks/ it is kept in).
# The two investigations' tables are kept beside their narratives.
SECTIONS = (("header", "How this run was made", "RESULTS.md"),
            ("ceiling", "Matmul ceiling", "RESULTS.md"),
            ("mlp", "MLP 784-512-512-10, ReLU, softmax-CE", "RESULTS.md"),
            ("mlp_bn", "MLP 784-512-512-10 + batch norm + dropout(0.2)", "RESULTS.md"),
            ("lenet", "LeNet: conv5×5(6,SAME)-relu-pool-conv5×5(16)-relu-pool-120-84-10", "RESULTS.md"),
            ("targets", "Targets", "RESULTS.md"),
            ("paths", "The convolution-path investigation",
             "investigations/which-lenet-step-formulation-is-fastest.md"),
            ("flags", "XLA CPU flags", "investigations/which-xla-cpu-flags-help.md"),
            ("numgrad", "Numerical gradients", "RESULTS.md"),
            ("digits", "Time to 97% test accuracy on digits", "RESULTS.md"))


def _blocks(R, args, elapsed, load_before, load_after):
    """{section: the markdown this run writes for it}; a section it did not measure says so."""
    v = _versions()
    command = " ".join(["python -m benchmarks.run"] + sys.argv[1:])
    B = {name: [f"Not measured by `{command}`."] for name, _, _ in SECTIONS}
    B["header"] = [
        f"Command: `{command}` ({'quick' if args.quick else 'full'} run, {elapsed / 60:.1f} min, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).  ",
        f"Machine: {_cpu_name()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}; "
        f"JAX backend {jax.default_backend()}.  ",
        f"Load average (1, 5, 15 min) before: {load_before}, after: {load_after} — the machine is shared "
        "with other jobs; interleaving the competitors makes the *ratios* robust to that, the "
        "absolute numbers are not.  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
        f"Protocol: each table's competitors run in one process, interleaved (repeat r runs A, B, C, "
        f"then repeat r+1), after warm-up; {args.repeats} repeats of {args.inner} steps each, "
        "`block_until_ready` on JAX results; the median ms/step with [min–max] over repeats. "
        "Batch 128, SGD with momentum (η 0.01, μ 0.9), float32. GFLOP/s counts 3 × the forward's "
        "2·multiply-adds (element-wise work not counted). × raw JAX = raw JAX time / competitor time "
        "(above 1 is faster than raw JAX). jit compile s = `lower().compile()` of the step."]
    c = R["ceiling"]
    B["ceiling"] = [f"`jax.jit(jnp.dot)` on 2048×2048 float32: **{c.gflops:.1f} GFLOP/s** "
                    f"({c.median * 1e3:.1f} ms [{c.lo * 1e3:.1f}–{c.hi * 1e3:.1f}])."]
    for kind in ("mlp", "mlp_bn", "lenet"):
        if kind in R:
            B[kind] = [_table(R[kind], c if kind.startswith("mlp") else None)]
    B["targets"] = ["| target | measured | met |", "|---|---|---|"]
    for name, val, met in targets(R):
        B["targets"].append(f"| {name} | {val:.2f} | {'yes' if met else '**no**'} |")
    if "paths" in R:
        B["paths"] = ["Every formulation of the same LeNet step (`benchmarks/lenet_paths.py`), one process, "
                      "interleaved; × is relative to the first row (raw JAX).", "", _table(R["paths"])]
    if "flags" in R:
        B["flags"] = ["One child process per `XLA_FLAGS` setting (flags are read when "
                      "the backend starts, so these cannot share a process); ms/step medians inside each "
                      "child.", "", "| XLA_FLAGS | raw JAX ms | funcnet manual ms |", "|---|---|---|"]
        for name, r in R["flags"].items():
            if "error" in r:
                B["flags"].append(f"| {name} (`{FLAG_SETS[name]}`) | error | {r['error'][:80]} |")
            else:
                B["flags"].append(f"| {name} (`{FLAG_SETS[name]}`) | {r['raw JAX'] * 1e3:.2f} | "
                                  f"{r['funcnet manual'] * 1e3:.2f} |")
    if "numgrad" in R:
        g = R["numgrad"]
        B["numgrad"] = [
            f"Full centred-difference gradient of all {g['params']:,} LeNet parameters (float64, "
            f"batch {g['batch']}) with `fn.numerical_grad`: **{g['full_s']:.1f} s** "
            f"(rel_error vs jax.grad {g['rel_error']:.1e}). cs231n-style Python loop over coordinates "
            f"(same jitted loss, one coordinate at a time), timed on {g['loop_sample']} random "
            f"coordinates and scaled: **{g['loop_s_scaled']:.0f} s** (rel_error {g['loop_rel_error']:.1e}). "
            f"Speed-up **{g['speedup']:.1f}×**."]
    if "digits" in R:
        B["digits"] = [
            f"scikit-learn digits (1,797 8×8 images, x/16), 25% stratified test split; MLP 64-{extras.HIDDEN[0]}-10, "
            f"ReLU, Adam (lr {extras.LR}), batch {extras.BATCH}; test accuracy checked after every epoch; "
            "the clock includes building the model and compiling (funcnet) and stops at the first "
            "epoch with test accuracy ≥ 97%. Runs interleaved, one seed per repeat.", "",
            "| competitor | seconds, median [min–max] | epochs | accuracy |", "|---|---|---|---|"]
        for k, rows in R["digits"].items():
            s = [r[0] for r in rows]
            B["digits"].append(f"| {k} | {np.nanmedian(s):.2f} [{np.nanmin(s):.2f}–{np.nanmax(s):.2f}] | "
                               f"{', '.join(str(r[1]) for r in rows)} | {', '.join(f'{r[2]:.3f}' for r in rows)} |")
    return {name: "\n".join(lines) for name, lines in B.items()}


def splice(text, blocks):
    """text with each block put between its markers, `<!-- benchmarks.run:NAME -->` and
    `<!-- /benchmarks.run:NAME -->`. Everything outside the markers (headings, conclusions,
    links) is kept as it is; a block whose markers are missing is appended under its heading."""
    headings = {name: heading for name, heading, _ in SECTIONS}
    text = text or "# Benchmark results\n"
    for name, body in blocks.items():
        begin, end = f"<!-- benchmarks.run:{name} -->", f"<!-- /benchmarks.run:{name} -->"
        i, j = text.find(begin), text.find(end)
        if 0 <= i < j:  # the blank line ends a table before the marker
            text = text[:i + len(begin)] + "\n" + body + "\n\n" + text[j:]
        else:
            text = text.rstrip("\n") + f"\n\n## {headings[name]}\n\n{begin}\n{body}\n\n{end}\n"
    return text


def write_results(R, args, elapsed, load_before, load_after):
    """Writes this run's tables between their markers in RESULTS.md and the two investigations
    (or all into --out), keeping the prose around them; a new file gets each under its heading."""
    blocks = _blocks(R, args, elapsed, load_before, load_after)
    files = {}
    for name, _, where in SECTIONS:
        files.setdefault(args.out or os.path.join(HERE, where), {})[name] = blocks[name]
    for path, these in files.items():
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
        with open(path, "w", encoding="utf-8") as f:
            f.write(splice(old, these))
        print(f"wrote {path}")


def check_pytorch(n=8):
    """Before timing: PyTorch's nets compute raw JAX's loss and gradients on one batch
    (both layouts for LeNet), so the peers time the same computation."""
    for kind in ("mlp", "lenet"):
        weights = workloads.init_weights(kind, seed=5)
        x, y = workloads.batch(kind, seed=6, n=n)
        params, _ = raw_jax.params_from(kind, weights)
        loss, grads = raw_jax.loss_and_grads(kind, params, jnp.asarray(x), jnp.asarray(y))
        for cl in ((False, True) if kind == "lenet" else (False,)):
            net = workloads.torch_model(kind, weights, channels_last=cl)
            _, loss_and_grads = workloads.torch_step(net, workloads.torch_input(kind, x, cl), y)
            tloss, tgrads = loss_and_grads()
            assert abs(tloss - float(loss)) < 1e-5
            # PyTorch's parameter order is the network's; compare after converting back
            names = sorted(weights)
            for (name, (gw, gb)) in zip(names, zip(tgrads[0::2], tgrads[1::2])):
                if gw.ndim == 4:
                    gw = gw.transpose(2, 3, 1, 0)
                else:
                    gw = gw.T
                    if name == "d1" and kind == "lenet":  # NCHW rows back to NHWC rows
                        gw = gw.reshape(16, 5, 5, 120).transpose(1, 2, 0, 3).reshape(400, 120)
                np.testing.assert_allclose(gw, np.asarray(grads[name]["w"]), rtol=2e-4, atol=2e-6)
                np.testing.assert_allclose(gb, np.asarray(grads[name]["b"]), rtol=2e-4, atol=2e-6)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and paths (~2 minutes)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--inner", type=int, default=None)
    ap.add_argument("--out", default=None, help="where to write the results (default benchmarks/RESULTS.md)")
    ap.add_argument("--flags-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or 7
    args.inner = args.inner or (5 if args.quick else 10)
    if args.flags_child:
        return flags_child(args.repeats, args.inner)
    try:
        import torch
        torch.manual_seed(0)
    except ImportError:
        sys.exit("benchmarks need PyTorch CPU: pip install torch==2.13.0 (see benchmarks/README.md)")
    check_pytorch()
    load_before = os.getloadavg()
    t0 = time.time()
    R = {"ceiling": matmul_ceiling(args.repeats)}
    R["mlp"] = step_comparison("mlp", args.repeats, args.inner)
    R["mlp_bn"] = step_comparison("mlp_bn", args.repeats, args.inner)
    R["lenet"] = step_comparison("lenet", args.repeats, max(2, args.inner // 2), numpy_on=True)
    R["paths"] = conv_paths(args.repeats, max(2, args.inner // 2), args.quick)
    if not args.quick:
        R["flags"] = flags_probe(args.repeats, max(2, args.inner // 2))
    print("\n== numerical gradient", flush=True)
    # A gradient check runs on a couple of examples (tiny shapes), as cs231n's do.
    R["numgrad"] = extras.numerical_gradient_benchmark(batch=2,
                                                       sample=30 if args.quick else 200)
    print("  ", R["numgrad"], flush=True)
    R["digits"] = digits(1 if args.quick else 3)
    elapsed = time.time() - t0
    write_results(R, args, elapsed, tuple(round(v, 2) for v in load_before),
                  tuple(round(v, 2) for v in os.getloadavg()))
    for name, val, met in targets(R):
        print(f"  {'MET ' if met else 'MISS'} {name}: {val:.2f}")


if __name__ == "__main__":
    main()
