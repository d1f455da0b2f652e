"""The measuring protocol shared by every comparison.

Competitors of one comparison run in one process, interleaved: after a warm-up call each,
repeat r runs competitor 1, 2, ..., k, then repeat r+1 does the same, so a burst of load
from elsewhere on the machine hits every competitor alike. Each timed call runs `inner`
steps and waits for the result (`jax.block_until_ready`; NumPy and PyTorch eager are
synchronous on CPU). We report the median time per step and the min–max over repeats.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional


@dataclass
class Timing:
    """Seconds per step of one competitor: every repeat's value, median, min and max."""

    name: str
    per_step: List[float]
    flops: Optional[float] = None          # floating-point operations of one step
    compile_s: Optional[float] = None      # jit compile time (JAX competitors)
    note: str = ""
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.per_step)

    @property
    def lo(self) -> float:
        return min(self.per_step)

    @property
    def hi(self) -> float:
        return max(self.per_step)

    @property
    def steps_per_s(self) -> float:
        return 1.0 / self.median

    @property
    def gflops(self) -> Optional[float]:
        return None if self.flops is None else self.flops / self.median / 1e9


def interleaved(runners: Dict[str, Callable[[int], None]], *, repeats: int = 7, inner: int = 10,
                warmup: int = 2) -> Dict[str, List[float]]:
    """Time each runner(n) — which must run n steps and block until done — `repeats` times,
    alternating between runners; returns seconds per step for every repeat."""
    for run in runners.values():
        for _ in range(warmup):
            run(1)
    out = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(inner)
            out[name].append((time.perf_counter() - t0) / inner)
    return out


def calls(fn, *args):
    """A runner for `interleaved`: runner(n) calls fn(*args) n times, then blocks on the
    last result (a jitted JAX function's calls are asynchronous)."""
    import jax

    def run(n):
        for _ in range(n):
            result = fn(*args)
        jax.block_until_ready(result)
    return run


def timed(fn, *args):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def child_options(doc: str, argv, *, repeats: int, inner: int):
    """Parse the options of a benchmark run once per flag setting by `per_flag_setting`:
    --repeats, --inner, and the hidden --child its child processes get."""
    import argparse
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--inner", type=int, default=inner)
    return p.parse_args(argv)


def per_flag_setting(module: str, argv: List[str]):
    """Run `python -m module --child *argv` twice, under XLA's default flags and under
    funcnet's, each a fresh process (XLA reads XLA_FLAGS once, when its backend starts).
    Yields (label, flags, result): the child's printed `JSON{...}` line, or {"error": the
    end of its stderr}."""
    import json
    import os
    import subprocess
    import sys

    from funcnet._xla_env import DEFAULT_XLA_FLAGS
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for label, flags in (("XLA default", None), ("funcnet default", DEFAULT_XLA_FLAGS)):
        env = dict(os.environ, FUNCNET_XLA_DEFAULTS="0")
        env.pop("XLA_FLAGS", None)
        if flags:
            env["XLA_FLAGS"] = flags
        proc = subprocess.run([sys.executable, "-m", module, "--child", *argv], env=env,
                              capture_output=True, text=True, cwd=root)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")]
        yield label, flags, (json.loads(line[0][4:]) if line else {"error": proc.stderr[-800:]})
