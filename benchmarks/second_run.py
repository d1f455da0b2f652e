"""First run against second run: `funcnet train`, and time to 97 % on digits beside scikit-learn.

    python -m benchmarks.second_run [--repeats 3] [--skip-train]

Every measurement is a fresh process (what a user runs), so process start, imports and
compilation all count. A repeat gets its own empty cache folder (XDG_CACHE_HOME, where
funcnet keeps JAX's persistent compilation cache): its first run compiles and fills it,
its second run reads it.

- `funcnet train` (LeNet on digits, 20 epochs, gradient check on): wall seconds of the
  first and of the second run, and second / first (issue 13's target: ≤ 40 %).
- time to 97 %: benchmarks.extras' MLP 64-128-10 (Adam, batch 32, test accuracy after
  every epoch); in-process seconds from building the model to the first epoch at ≥ 97 %
  (compilation included), and the whole process's wall time. funcnet with an empty cache,
  funcnet with the warm cache, scikit-learn's MLPClassifier (the same protocol).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, env):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-1500:]}")
    return wall, p.stdout


def _env(cache_home):
    env = dict(os.environ, XDG_CACHE_HOME=cache_home)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("FUNCNET_NO_CACHE", None)
    return env


def train_runs(repeats):
    rows = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = _env(os.path.join(tmp, "cache"))
            cmd = [sys.executable, "-m", "funcnet", "train", "--no-progress"]
            first, out1 = _run(cmd + ["--out", os.path.join(tmp, "a")], env)
            second, out2 = _run(cmd + ["--out", os.path.join(tmp, "b")], env)
            acc = [line for line in out2.splitlines() if "accuracy" in line.lower()][-1:]
            rows.append({"first_s": first, "second_s": second, "ratio": second / first,
                         "last_line": acc[0] if acc else ""})
            print(f"funcnet train: first {first:.1f} s, second {second:.1f} s "
                  f"({100 * second / first:.0f} %)", flush=True)
    return rows


def child(kind, seed):
    """In the child: one time-to-97 % run, printed as a JSON line."""
    if kind.startswith("funcnet"):
        import funcnet as fn
        fn.enable_compilation_cache()
    from . import extras
    data = extras.digits_data(seed)
    f = extras.time_to_97_sklearn if kind == "sklearn" else extras.time_to_97_funcnet
    secs, epochs, acc = f(data, seed)
    print("JSON" + json.dumps({"seconds": secs, "epochs": epochs, "accuracy": acc}), flush=True)


def digits_runs(repeats):
    rows = {"funcnet, empty cache": [], "funcnet, warm cache": [], "scikit-learn MLPClassifier": []}
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = _env(os.path.join(tmp, "cache"))
            for name, kind in (("funcnet, empty cache", "funcnet"), ("funcnet, warm cache", "funcnet"),
                               ("scikit-learn MLPClassifier", "sklearn")):
                wall, out = _run([sys.executable, "-m", "benchmarks.second_run", "--child", kind,
                                  "--seed", str(r)], env)
                res = json.loads([line for line in out.splitlines() if line.startswith("JSON")][0][4:])
                rows[name].append(dict(res, process_s=wall))
                print(f"{name}: {res['seconds']:.2f} s to 97 % ({res['epochs']} epochs), "
                      f"process {wall:.1f} s", flush=True)
    return rows


def report(train, digits):
    med = statistics.median
    lines = []
    if train:
        lines += ["| `funcnet train` | first run s | second run s | second / first |", "|---|---|---|---|",
                  f"| median of {len(train)} | {med(r['first_s'] for r in train):.1f} | "
                  f"{med(r['second_s'] for r in train):.1f} | {100 * med(r['ratio'] for r in train):.0f} % |",
                  ""]
    lines += ["| time to 97 % on digits | in-process s, median [min–max] | process wall s | epochs |",
              "|---|---|---|---|"]
    for name, rs in digits.items():
        s = [r["seconds"] for r in rs]
        lines.append(f"| {name} | {med(s):.2f} [{min(s):.2f}–{max(s):.2f}] | "
                     f"{med(r['process_s'] for r in rs):.1f} | {', '.join(str(r['epochs']) for r in rs)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.seed)
    print(f"load average before: {os.getloadavg()}")
    train = [] if args.skip_train else train_runs(args.repeats)
    digits = digits_runs(args.repeats)
    print(f"load average after: {os.getloadavg()}")
    print(report(train, digits))


if __name__ == "__main__":
    main()
