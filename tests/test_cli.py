"""The `funcnet` command: --help, train (a real, tiny run in a subprocess), gradcheck."""
import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import funcnet as fn
from funcnet import checkpoint, cli

ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def run(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "funcnet", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=cwd)


def test_help_lists_the_commands():
    proc = run("--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "gradcheck" in proc.stdout
    assert "usage: funcnet" in proc.stdout


def test_console_script_is_cli_main():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (entry,) = [e for e in scripts if e.name == "funcnet"]
    assert entry.load() is cli.main


def test_the_command_exits_with_atexit_handlers_run_and_streams_flushed():
    """The command ends its process without the interpreter's teardown
    (distributed.exit_now(rc, atexit_handlers=True)): atexit handlers still run, buffered
    output still arrives, the status is kept."""
    code = ("import atexit; from funcnet import distributed; atexit.register(print, 'atexit ran'); "
            "print('partial', end=''); distributed.exit_now(4, atexit_handlers=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 4 and proc.stdout == "partialatexit ran\n", proc


def test_the_console_script_ends_through_exit_now(monkeypatch):
    ended = []
    monkeypatch.setattr(sys, "argv", ["/usr/bin/funcnet", "gradcheck"])
    monkeypatch.setattr(cli, "_main", lambda argv: 5 if argv == ["gradcheck"] else 0)
    monkeypatch.setattr(fn.distributed, "exit_now", lambda rc, **kw: ended.append((rc, kw)))
    cli.main()
    assert ended == [(5, {"atexit_handlers": True})]
    assert cli.main(["gradcheck"]) == 5 and len(ended) == 1  # called with argv: returns


def test_train_one_epoch_writes_its_run(tmp_path):
    out = tmp_path / "runs" / "tiny"
    proc = run("train", "--model", "mlp", "--epochs", "1", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(l.startswith("gradient check PASS") for l in lines), proc.stdout
    (acc_line,) = [l for l in lines if l.startswith("test accuracy")]
    accuracy = float(acc_line.split()[2].rstrip("%")) / 100

    record = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in record["history"]] == [1]
    assert record["test"]["accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert record["test"]["accuracy"] > 0.8  # one epoch of an MLP on digits
    assert record["config"]["model"] == "mlp" and record["gradient_check"].startswith("gradient check PASS")
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the checkpoint holds the trained state: its parameters reproduce the test accuracy
    path = checkpoint.latest(out / "checkpoints")
    saved = checkpoint.restore(path)
    (_, _), (xt, yt) = fn.data.load("digits")
    model = fn.models.mlp(10)
    params = jax.tree_util.tree_map(np.asarray, tuple(saved.params))
    state = tuple(saved.state)
    got = fn.train.evaluate(model, params, state, xt, yt)
    assert got["accuracy"] == pytest.approx(record["test"]["accuracy"])
    assert int(saved.step) == record["history"][-1]["step"] == len(fn.data.load("digits")[0][0]) // 32


def test_gradcheck_prints_the_full_report(capsys):
    assert cli.main(["gradcheck", "--model", "mlp", "--examples", "3"]) == 0
    text = capsys.readouterr().out
    assert "manual/autodiff" in text and "autodiff/numerical" in text
    rows = [l.split() for l in text.splitlines()
            if l.split() and l.split()[-1] in ("ok", "FAIL") and not l.startswith("leaf")]
    # mlp: 2 dense layers (w, b) and the input
    assert [r[0] for r in rows] == ["1:dense/b", "1:dense/w", "3:dense/b", "3:dense/w", "input"]
    assert all(r[-1] == "ok" for r in rows) and "gradient check PASS" in text
    assert all(float(r[-4]) < 1e-8 for r in rows)  # manual vs autodiff: round-off only


def test_gradcheck_fails_on_a_wrong_formula(monkeypatch, capsys):
    def broken_mlp(num_classes):
        model = fn.models.mlp(num_classes, (8,))

        def backward(params, cache, dy):  # the dense layer's dW off by a factor of 2
            dparams, dx = model.backward(params, cache, dy)
            return (dparams[0], dict(dparams[1], w=2 * dparams[1]["w"])) + dparams[2:], dx

        return model._replace(backward=backward)

    monkeypatch.setitem(fn.models.MODELS, "mlp", broken_mlp)
    assert cli.main(["gradcheck", "--model", "mlp"]) == 1
    text = capsys.readouterr().out
    assert "1:dense/w" in text and "FAIL" in text


def test_train_on_idx_files(tmp_path, capsys):
    # MNIST-format files (what a user with the full MNIST has on disk), made from digits
    (x, y), _ = fn.data.load("digits", scale="raw")
    images = (x[..., 0] * 255 / 16).round().astype(np.uint8)
    fn.data.write_idx(tmp_path / "images.idx.gz", images)
    fn.data.write_idx(tmp_path / "labels.idx", y.astype(np.uint8))
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "mlp", "--data",
                     f"idx:{tmp_path / 'images.idx.gz'},{tmp_path / 'labels.idx'}",
                     "--epochs", "2", "--optimizer", "momentum", "--no-gradcheck",
                     "--no-progress", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "gradient check" not in text and "epoch   2" in text
    record = json.loads((out / "history.json").read_text())
    assert record["test"]["accuracy"] > 0.8 and len(record["history"]) == 2


def test_train_in_bfloat16_says_its_policy(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "mlp", "--epochs", "1", "--compute-dtype", "bfloat16",
                     "--no-gradcheck", "--no-progress", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "precision: bfloat16 compute, float32 master params and optimizer state" in lines
    record = json.loads((out / "history.json").read_text())
    assert record["config"]["compute_dtype"] == "bfloat16" and record["test"]["accuracy"] > 0.8
    saved = checkpoint.restore(checkpoint.latest(out / "checkpoints"))
    assert {a.dtype for a in jax.tree_util.tree_leaves(saved.params)} == {np.dtype("float32")}
    assert saved.loss_scale is None  # no loss scaling unless asked for (or float16)


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "cifar"], "cifar"),
    (["train", "--data", "idx:only-one-path"], "two paths"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--loss-scale", "-1"], "--loss-scale must be dynamic, none or a finite number > 0, got '-1'"),
    (["train", "--loss-scale", "lots"], "--loss-scale must be dynamic, none or a finite number > 0"),
])
def test_bad_arguments_are_clear_errors(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
