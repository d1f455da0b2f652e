"""What every experiment shares: the command line, the run folder, metrics.json and figures.

Each experiment is a module with `main(argv=None) -> dict` (its metrics). Run it as
`python -m experiments.NAME [--quick] [--out DIR] [--seed N]`; it writes DIR/metrics.json
and PNG figures into DIR (default runs/NAME).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from funcnet._xla_env import setup_for_command

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are files; never open a window
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment takes."""
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few-second version (smaller data, fewer epochs) for CI")
    p.add_argument("--out", type=Path, default=Path("runs") / name,
                   help="folder for metrics.json and the figures (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random thing")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.add_argument("--no-cache", action="store_true",
                   help="no persistent compilation cache (default: on; also FUNCNET_NO_CACHE=1)")
    return p


def parse(name: str, doc: str, argv=None, add_arguments=None) -> argparse.Namespace:
    """Parse argv (None: sys.argv) and create the output folder."""
    p = parser(name, doc)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    setup_for_command(no_cache=args.no_cache)  # XLA flags (if JAX has not started), cache
    args.out.mkdir(parents=True, exist_ok=True)
    args.name = name
    args.started = _now()
    args.command = " ".join([f"python -m experiments.{name}",
                             *(sys.argv[1:] if argv is None else map(str, argv))])
    return args


def _now() -> dict:
    """The time (UTC, ISO 8601), the clock (perf_counter) and the load average now."""
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "clock": time.perf_counter(), "load_average": load}


def run_record(args) -> dict:
    """Where and when the run happened, as the run saw it: the command, start and end (UTC),
    wall seconds, the 1/5/15-minute load averages at both ends, the cores and the JAX
    backend. The generated study pages (experiments/docs.py) print it as it is."""
    import jax  # already started by every experiment; imported here to keep parse() light

    end = _now()
    start = getattr(args, "started", end)
    return {"command": getattr(args, "command", f"python -m experiments.{args.name}"),
            "started_utc": start["utc"], "finished_utc": end["utc"],
            "wall_s": round(end["clock"] - start["clock"], 1),
            "load_average": {"start": start["load_average"], "end": end["load_average"]},
            "cpu_cores": os.cpu_count(), "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()], "jax": jax.__version__}


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.ndarray, np.generic)) or hasattr(v, "__array__"):
        a = np.asarray(v)
        return _jsonable(a.tolist()) if a.ndim else _jsonable(a.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, Path):
        return str(v)
    return v


def write_metrics(args, metrics: dict) -> dict:
    """Write metrics (plus the run's settings) to OUT/metrics.json and return them."""
    metrics = dict(metrics)
    metrics.setdefault("experiment", args.name)
    metrics.setdefault("quick", bool(args.quick))
    metrics.setdefault("seed", args.seed)
    metrics.setdefault("run", run_record(args))
    metrics = _jsonable(metrics)
    path = args.out / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    return metrics


def save(fig, args, filename: str) -> Path:
    """Save a figure as OUT/filename (PNG) and close it."""
    path = args.out / filename
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def figure(ncols=1, nrows=1, size=(4.5, 3.4), **kw):
    """A figure with a grid of axes, each about `size` inches."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False, **kw)
    return fig, axes


def plot_curves(ax, curves: dict, *, xlabel="epoch", ylabel="loss", title=None, logy=False,
                x=None):
    """One line per entry of {label: values} (or {label: (xs, values)})."""
    for label, values in curves.items():
        if isinstance(values, tuple):
            xs, ys = values
        else:
            ys = np.asarray(values, float)
            xs = np.arange(1, len(ys) + 1) if x is None else x
        ax.plot(xs, ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7)


def image_grid(images, titles=None, ncols=8, size=1.2, cmap="gray", suptitle=None):
    """A figure showing images (N, H, W) or (N, H, W, 1), one per cell, with optional titles."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return fig


@contextmanager
def timed(record: dict, key: str):
    """Store the wall time of the block, in seconds, as record[key]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record[key] = round(time.perf_counter() - start, 3)


def cli(main):
    """Run main(sys.argv[1:]) as a script: exit status 1 when the metrics say ok is False."""
    metrics = main(sys.argv[1:])
    sys.exit(1 if isinstance(metrics, dict) and metrics.get("ok") is False else 0)
