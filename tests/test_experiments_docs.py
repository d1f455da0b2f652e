"""experiments.docs: study pages whose numbers are the metrics' numbers, figures copied and
linked relatively, clear errors for a missing key or figure, experiments without outputs
skipped."""
import json
import re

import pytest

from experiments import docs

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # the generator copies figures; it does not decode them
RUN = {"command": "python -m experiments.xor", "started_utc": "2026-12-03T10:00:00Z",
       "finished_utc": "2026-12-03T10:00:19Z", "wall_s": 18.8,
       "load_average": {"start": [3.76, 2.9, 4.09], "end": [4.79, 3.17, 4.16]},
       "cpu_cores": 2, "backend": "cpu", "devices": ["cpu"], "jax": "0.10.2"}


def xor_metrics():
    return {"epochs": 2000, "delta_rule_vs_autodiff_rel_error": 4.63e-07,
            "perceptron": {"predictions": [0.5, 0.5, 0.5, 0.5], "accuracy": 0.5, "final_mse": 0.25},
            "mlp_tanh": {"predictions": [0.003, 0.991, 0.992, 0.01], "accuracy": 1.0,
                         "final_mse": 6.37e-05},
            "perceptron_solves_xor": False, "mlp_solves_xor": True,
            "experiment": "xor", "quick": False, "seed": 0, "run": RUN}


def resnet_metrics():
    def net(err, loss, acc, params):
        return {"train_error": err, "train_loss": loss, "test_accuracy": acc, "test_loss": 0.1,
                "curve": {"train_error": [0.5, err + 0.01], "train_loss": [1.0, loss],
                          "test_error": [0.4, 1 - acc]},
                "conv_grad_norms_at_init": [2.0, 1.0], "first_over_last_grad_norm": 2.0,
                "parameters": params, "train_seconds": 12.5}
    nets = {"8": {"plain": net(0.0125, 0.04, 0.97, 1000), "residual": net(0.01, 0.03, 0.975, 1100)},
            "56": {"plain": net(0.0475, 0.15, 0.95, 5000), "residual": net(0.0075, 0.02, 0.98, 5200)}}
    # what experiments.resnet.degradation(nets) gives (tests/test_experiments.py checks it)
    degradation = {"deepest": 56, "shallower": [8], "tolerance": 0.001, "plain_best_shallower_depth": 8,
                   "plain_deepest_minus_best_shallower": 0.035, "plain_degrades": True,
                   "residual_best_shallower_depth": 8, "residual_deepest_minus_best_shallower": -0.0025,
                   "residual_degrades": False, "shown": True}
    return {"depths": [8, 56], "width": 16, "epochs": 2, "batch_size": 128, "lr": 0.1, "warmup_epochs": 1,
            "l2": 1e-4, "optimizer": "SGD", "train_examples": 4000, "test_examples": 1000,
            "nets": nets, "degradation": degradation,
            "experiment": "resnet", "quick": False, "seed": 0, "run": RUN}


def write(runs, name, metrics, *figures):
    (runs / name).mkdir(parents=True)
    (runs / name / "metrics.json").write_text(json.dumps(metrics))
    for f in figures:
        (runs / name / f).write_bytes(PNG)


def test_a_page_holds_the_metrics_numbers_and_its_figures(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "studies"
    write(runs, "xor", xor_metrics(), "decision_boundaries.png")
    assert docs.main(["--runs", str(runs), "--out", str(out)]) == 0
    assert "skipped cnn: no " in capsys.readouterr().out  # no outputs: a message, no page
    assert sorted(p.name for p in out.glob("*.md")) == ["xor.md"]
    page = (out / "xor.md").read_text()
    assert page.startswith("# XOR")
    assert "`python -m experiments.xor`" in page and "2026-12-03T10:00:00Z" in page
    assert "3.76/2.90/4.09 at the start, 4.79/3.17/4.16 at the end, on 2 CPU cores" in page
    row = re.search(r"\| mlp_tanh \| (\d)/4 \| ([^|]+) \| ([^|]+) \|", page)
    assert row and row[1] == "4" and float(row[2]) == 6.37e-05
    assert [float(v) for v in row[3].split(",")] == [0.003, 0.991, 0.992, 0.01]
    assert "| perceptron | 2/4 | 0.25 |" in page and "to 4.6e-07 relative" in page
    # the figure is copied beside the page and linked relatively
    assert "](xor/decision_boundaries.png)" in page
    assert (out / "xor" / "decision_boundaries.png").read_bytes() == PNG
    assert "## What the figures show" in page and "## What they do not show" in page


def test_the_resnet_page_states_the_verdict_from_the_metrics(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "studies"
    write(runs, "resnet", resnet_metrics(), "training_error.png", "grad_norms.png")
    docs.generate(runs, out, ["resnet"])
    page = (out / "resnet.md").read_text()
    # plain-56 4.75 % against plain-8 1.25 %: +3.50 points, degrades; residual does not
    assert "depth 56 ends at 4.75 % training error against 1.25 % for depth 8 (+3.50 points)" in page
    assert "0.75 % against 1.00 % for depth 8 (-0.25 points): no degradation" in page
    assert "**The degradation problem is shown.**" in page
    assert "| plain-56 | 5,000 | 4.75 % | 0.15 | 5.75 % | 95.00 % | 2 | 12 s |" in page


def test_a_missing_key_or_figure_is_an_error_naming_the_file(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "studies"
    metrics = xor_metrics()
    del metrics["mlp_solves_xor"]
    write(runs, "xor", metrics, "decision_boundaries.png")
    assert docs.main(["--runs", str(runs), "--out", str(out), "xor"]) == 1
    err = capsys.readouterr().err
    assert str(runs / "xor" / "metrics.json") in err and "'mlp_solves_xor'" in err
    write(runs, "resnet", resnet_metrics())  # without its figures
    with pytest.raises(docs.StudyError, match=r"resnet: figure \w+\.png is missing"):
        docs.generate(runs, out, ["resnet"])
