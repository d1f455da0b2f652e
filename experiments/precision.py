"""Mixed precision, checked by training: the same networks, seeds and data trained with
float32 and with a 16-bit compute dtype on float32 master parameters
(`fn.train.fit(..., compute_dtype=..., loss_scale=...)`, funcnet/mixed_precision.py).

- LeNet-5 on MNIST-5k (experiments/cnn.py's model and schedule), float32 vs bfloat16:
  test accuracy within 0.3 points;
- the character transformer of experiments/char_model.py, float32 vs bfloat16: validation
  bits/char within 0.03;
- the cs231n MLP (experiments/fc_net.py, hidden 256-256, batch norm) on MNIST-5k in float16
  with dynamic loss scaling reaches float32's test accuracy (within 0.3 points); float16
  without loss scaling is trained alongside for contrast, and the steps skipped for
  overflow and the final scale are recorded.

Every pair shares its key: the same initial float32 parameters, batch order and dropout
masks. Step times (a compiled step, median over repeats, after warm-up) are recorded for
each dtype; on XLA:CPU 16-bit arithmetic is not faster than float32 and may be slower
(the point here is correctness; on accelerators bfloat16 is where the speed is).

Writes OUT/metrics.json and OUT/results.md. `--quick` runs tiny versions (digits, one
epoch; no character model, whose compilation alone takes most of a minute) for
tests/test_experiments.py; its numbers are not the study's.
"""
from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import char_model, cnn, common, fc_net

NAME = "precision"
CE = fn.losses.softmax_cross_entropy
BF16 = {"compute_dtype": jnp.bfloat16, "loss_scale": None}
F32 = {"compute_dtype": None, "loss_scale": None}
F16_DYNAMIC = {"compute_dtype": jnp.float16, "loss_scale": "dynamic"}
F16_PLAIN = {"compute_dtype": jnp.float16, "loss_scale": None}
TOLERANCE = {"accuracy_points": 0.3, "bits_per_char": 0.03}


def add_arguments(p):
    p.add_argument("--lenet-epochs", type=int, default=10, help="(default %(default)s)")
    p.add_argument("--mlp-epochs", type=int, default=15, help="(default %(default)s)")
    p.add_argument("--char-steps", type=int, default=1500, help="(default %(default)s)")
    p.add_argument("--timing-repeats", type=int, default=None,
                   help="timed steps per dtype (default 20; 3 with --quick)")
    p.add_argument("--skip-char", action="store_true", help="no character transformer")


# ----------------------------------------------------------------------------- measuring

def step_seconds(model, optimizer, batch, policy, *, l2=0.0, repeats=20) -> float:
    """Median seconds of one compiled update on `batch` (fit's own step: same model,
    optimizer, loss and policy, so the compilation is reused), after two warm-up steps."""
    x, y = batch
    step = fn.train.make_step(model, optimizer, CE, l2=l2, **policy)
    ts = fn.train.init_train_state(model, optimizer, x.shape, jax.random.PRNGKey(0))
    for _ in range(2):
        ts, m = step(ts, x, y)
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ts, m = step(ts, x, y)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dtypes(tree) -> list:
    return sorted({np.dtype(a.dtype).name for a in jax.tree_util.tree_leaves(tree)})


def train_classifier(model, data, *, epochs, optimizer, key, policy, l2=0.0, progress=False,
                     repeats=20) -> dict:
    """fit with `policy` (compute_dtype, loss_scale), then the test accuracy (evaluated in
    the compute dtype, and in float32 from the same float32 parameters) and a step time."""
    (xtr, ytr), (xte, yte) = data
    start = time.perf_counter()
    ts, history = fn.train.fit(model, optimizer, (xtr, ytr), loss=CE, epochs=epochs,
                               batch_size=64, key=key, val_data=(xte, yte), l2=l2,
                               drop_remainder=True, progress=progress, **policy)
    seconds = time.perf_counter() - start
    result = {
        "test_accuracy": history["val_accuracy"][-1],
        "test_accuracy_float32_eval": fn.train.evaluate(model, ts.params, ts.state, xte, yte)["accuracy"],
        "final_train_loss": history["train_loss"][-1], "val_accuracy_curve": history["val_accuracy"],
        "param_dtypes": dtypes(ts.params), "opt_state_float_dtypes": [
            d for d in dtypes(ts.opt_state) if d.startswith(("float", "bfloat"))],
        "fit_seconds": round(seconds, 2),
        "step_seconds": step_seconds(model, optimizer, (xtr[:64], ytr[:64]), policy, l2=l2,
                                     repeats=repeats)}
    if policy["loss_scale"] is not None:
        result["skipped_steps"] = int(sum(history["skipped"]))
        result["final_loss_scale"] = float(ts.loss_scale.scale)
    return result


def compare(name, model, data, policies, *, epochs, optimizer, key, l2=0.0, args) -> dict:
    """One fit per policy, each from the same key (so the same initial parameters; the
    model and optimizer objects are shared, so are their compiled init and float32
    evaluation); accuracy differences in points."""
    runs = {}
    for label, policy in policies.items():
        print(f"{name}: training in {label} ...", flush=True)
        runs[label] = train_classifier(model, data, epochs=epochs, optimizer=optimizer, key=key,
                                       policy=policy, l2=l2, progress=args.progress,
                                       repeats=args.timing_repeats)
        print(f"  {label}: test accuracy {runs[label]['test_accuracy']:.4f}, "
              f"{1e3 * runs[label]['step_seconds']:.1f} ms/step", flush=True)
    base = runs["float32"]
    for r in runs.values():
        r["accuracy_minus_float32_points"] = 100 * (r["test_accuracy"] - base["test_accuracy"])
        r["step_time_ratio_to_float32"] = r["step_seconds"] / base["step_seconds"]
    return {"dataset": data_name(data), "epochs": epochs, "runs": runs}


def data_name(data) -> str:
    (x, _), _ = data
    return "MNIST-5k" if x.shape[1] == 28 else "digits"


# ----------------------------------------------------------------------------- the studies

def lenet_study(args, key) -> dict:
    if args.quick:  # the digits (8x8), a small LeNet, one epoch
        data = fn.data.load("digits", scale="unit", seed=args.seed)
        model, epochs = cnn.lenet((4, 8), 3, (32,)), 1
    else:
        data = fn.data.load("mnist5k", scale="unit", seed=args.seed)
        model, epochs = cnn.lenet(), args.lenet_epochs
    steps = epochs * (len(data[0][0]) // 64)
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, steps))  # cnn.py's schedule
    return compare("LeNet-5", model, data, {"float32": F32, "bfloat16": BF16}, epochs=epochs,
                   optimizer=opt, key=key, args=args)


def mlp_study(args, key) -> dict:
    dataset, hidden, epochs = (("digits", (64,), 1) if args.quick
                               else ("mnist5k", (256, 256), args.mlp_epochs))
    data = fn.data.load(dataset, scale="standard", seed=args.seed)
    policies = {"float32": F32, "float16+dynamic": F16_DYNAMIC}
    if not args.quick:
        policies["float16 (no scaling)"] = F16_PLAIN
    return compare("MLP", fc_net.fc_net(hidden, batch_norm=True), data, policies,
                   epochs=epochs, optimizer=optax.adam(1e-3), key=key, l2=1e-4, args=args)


def char_study(args, key) -> dict:
    """char_model's transformer and training loop, once per dtype, from the same key."""
    cfg = {"context": 64, "dim": 128, "depth": 2, "heads": 4, "steps": args.char_steps,
           "batch_size": 32, "lr": 3e-3, "eval_every": max(args.char_steps // 5, 1)}
    _, vocab, ids = char_model.load_text()
    train, val = char_model.split(ids)
    full = char_model.validation_windows(val, cfg["context"])
    evals = {"full": full, "curve": (full[0][:char_model.EVAL_SAMPLE], full[1][:char_model.EVAL_SAMPLE])}
    runs = {}
    for label, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        print(f"char transformer: training in {label} ...", flush=True)
        model = fn.models.transformer(len(vocab), cfg["context"], cfg["dim"], cfg["heads"],
                                      cfg["depth"])
        ts, r = char_model.train_model(model, cfg, train, evals, key, args.progress, label,
                                       compute_dtype=dtype)
        r["param_dtypes"] = dtypes(ts.params)
        r["step_seconds"] = r["train_seconds"] / max(cfg["steps"] - 1, 1)
        runs[label] = r
        print(f"  {label}: {r['val_bits']:.4f} bits/char, {1e3 * r['step_seconds']:.1f} ms/step",
              flush=True)
    for r in runs.values():
        r["bits_minus_float32"] = r["val_bits"] - runs["float32"]["val_bits"]
        r["step_time_ratio_to_float32"] = r["step_seconds"] / runs["float32"]["step_seconds"]
    return {"config": cfg, "runs": runs}


# ----------------------------------------------------------------------------- report

def verdicts(metrics) -> dict:
    """The study's three claims, each True or False."""
    points = TOLERANCE["accuracy_points"]
    lenet, mlp = metrics["lenet"]["runs"], metrics["mlp"]["runs"]
    out = {"lenet_bfloat16_within_0.3_points":
           abs(lenet["bfloat16"]["accuracy_minus_float32_points"]) <= points,
           "mlp_float16_dynamic_reaches_float32":
           mlp["float16+dynamic"]["accuracy_minus_float32_points"] >= -points}
    if "char" in metrics:
        out["char_bfloat16_within_0.03_bits"] = (
            abs(metrics["char"]["runs"]["bfloat16"]["bits_minus_float32"]) <= TOLERANCE["bits_per_char"])
    return out


def markdown(metrics) -> str:
    rows = ["| study | dtype | result | vs float32 | ms/step | step time / float32 | notes |",
            "|---|---|---|---|---|---|---|"]
    for study, title in (("lenet", "LeNet-5"), ("mlp", "MLP + batch norm")):
        title = f"{title}, {metrics[study]['dataset']}, {metrics[study]['epochs']} epochs"
        for label, r in metrics[study]["runs"].items():
            notes = (f"{r['skipped_steps']} steps skipped, final scale {r['final_loss_scale']:g}"
                     if "skipped_steps" in r else "")
            rows.append(f"| {title} | {label} | {100 * r['test_accuracy']:.2f} % | "
                        f"{r['accuracy_minus_float32_points']:+.2f} pts | {1e3 * r['step_seconds']:.1f} | "
                        f"{r['step_time_ratio_to_float32']:.2f} | {notes} |")
    if "char" in metrics:
        for label, r in metrics["char"]["runs"].items():
            rows.append(f"| char transformer | {label} | {r['val_bits']:.4f} bits/char | "
                        f"{r['bits_minus_float32']:+.4f} | {1e3 * r['step_seconds']:.1f} | "
                        f"{r['step_time_ratio_to_float32']:.2f} | |")
    lines = ["# Mixed precision: 16-bit compute on float32 masters", "",
             f"Command: `{metrics['command']}`; load average at the start "
             f"{metrics['load_average']:.1f} (2 shared CPU cores).", "", *rows, ""]
    lines += [f"- {claim}: {'yes' if ok else 'NO'}" for claim, ok in metrics.get("claims", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    if args.timing_repeats is None:
        args.timing_repeats = 3 if args.quick else 20
    key = jax.random.PRNGKey(args.seed)
    k_lenet, k_mlp, k_char = jax.random.split(key, 3)
    metrics = {"command": "python -m experiments.precision" + (" --quick" if args.quick else ""),
               "load_average": os.getloadavg()[0], "backend": jax.default_backend(),
               "tolerance": TOLERANCE, "wall_s": {}}
    with common.timed(metrics["wall_s"], "lenet"):
        metrics["lenet"] = lenet_study(args, k_lenet)
    with common.timed(metrics["wall_s"], "mlp"):
        metrics["mlp"] = mlp_study(args, k_mlp)
    if not (args.skip_char or args.quick):
        with common.timed(metrics["wall_s"], "char"):
            metrics["char"] = char_study(args, k_char)
    if not args.quick:  # the claims are about the full-size runs
        metrics["claims"] = verdicts(metrics)
        metrics["ok"] = all(metrics["claims"].values())
    (args.out / "results.md").write_text(markdown(metrics))
    print(markdown(metrics))
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
