"""Every experiment's --quick mode, run in-process, and the claim it exists to show.

Each test calls the module's main(["--quick", "--out", tmp]) and checks the metrics it
returns (and wrote to metrics.json) plus the figures it saved.
"""
import json
import math

import pytest

from experiments import (char_model, cnn, fc_net, gpt2_char, gradcheck, graph_net, init_study,
                         losses, optimizers, precision, regularization, resnet, sequence,
                         xor)


def run(module, tmp_path, *figures):
    """Run module --quick into tmp_path; check metrics.json and the figures; return metrics."""
    metrics = module.main(["--quick", "--no-progress", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["experiment"] == module.NAME and metrics["quick"] is True
    for name in figures:
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    return metrics


def test_xor_needs_a_hidden_layer(tmp_path):
    m = run(xor, tmp_path, "decision_boundaries.png")
    assert m["mlp_tanh"]["accuracy"] == 1.0 and m["mlp_solves_xor"]
    assert m["mlp_tanh"]["final_mse"] < 0.02
    # No line separates XOR: the single neuron gets at most 3 of the 4 points.
    assert m["perceptron"]["accuracy"] <= 0.75 and not m["perceptron_solves_xor"]
    assert m["perceptron"]["final_mse"] > 0.15
    # Training on the δ rule (with_manual_grads) is training on the gradient.
    assert m["delta_rule_vs_autodiff_rel_error"] < 1e-4


def test_graph_net_relabeling_preserves_the_function(tmp_path):
    m = run(graph_net, tmp_path, "graph.png", "pruning.png")
    assert m["test_accuracy"] > 0.7
    # A relabeling changes the matrices (no longer upper triangular) but not the outputs.
    assert not m["relabeled_is_upper_triangular"]
    assert m["relabel_max_abs_diff"] < 1e-4 and m["swap_nodes_max_abs_diff"] < 1e-4
    # Swapping rows alone is not a relabeling: a different network, or no DAG at all.
    assert m["swap_rows_only_max_abs_diff"] in ("inf", None) or m["swap_rows_only_max_abs_diff"] > 1e-2
    kept = [c["fraction_kept"] for c in m["pruning"]]
    assert kept == sorted(kept, reverse=True) and kept[0] > 0.99 and kept[-1] < 0.1
    # The lowest threshold drops one edge: accuracy barely moves; pruning 98% hurts.
    assert abs(m["pruning"][0]["test_accuracy"] - m["test_accuracy"]) < 0.01
    assert m["pruning"][-1]["test_accuracy"] < m["test_accuracy"] - 0.1


def test_graph_net_rejects_a_cycle():
    import numpy as np
    a = np.zeros((4, 4))
    a[0, 1] = a[1, 2] = a[2, 1] = a[2, 3] = 1
    with pytest.raises(graph_net.fn.FuncnetError, match="cycle through nodes \\[1, 2"):
        graph_net.dag_network(a, 1, 1)


def test_gradcheck_passes_and_catches_copy_to_all_max_pool(tmp_path):
    m = run(gradcheck, tmp_path, "gradcheck.png")
    assert m["ok"] and m["passed"] == m["checks"] >= 7
    assert m["networks"]["resnet/depth 8, train mode"]["ok"]
    assert all(r["worst_manual_vs_autodiff"] < 1e-6 for r in m["networks"].values())
    assert m["max_pool_argmax_ok"] and not m["max_pool_copy_to_all_ok"]
    # The wrong rule corrupts every gradient below the pool, not the dense layer above it.
    wrong = m["max_pool_rel_errors"]["copy_to_all"]
    assert wrong["0:conv2d/w"] > 0.1 and wrong["input"] > 0.1 and wrong["4:dense/w"] < 1e-8
    assert m["l2_rel_error"] < 1e-10


def test_init_study_spreads(tmp_path):
    m = run(init_study, tmp_path, "spreads.png", "training.png")
    last = m["last_activation_std"]
    # Ten layers multiply the spread by (s·√n·√½)^10 for ReLU: it vanishes or explodes.
    assert last["relu/gaussian(0.01)"] < 1e-6
    assert last["relu/gaussian(1)"] > 1e3
    assert 0.1 < last["relu/he"] < 10 and 0.05 < last["tanh/xavier"] < 1
    assert last["tanh/gaussian(1)"] > 0.9  # saturated at ±1
    acc = m["test_accuracy"]
    assert acc["relu/gaussian(0.01)"] < 0.2 < acc["relu/he"]


def test_losses_beat_the_mean_and_relus_fit_a_curve(tmp_path):
    m = run(losses, tmp_path, "losses.png")
    d = m["diabetes"]
    mean = d["predict_the_mean"]
    for row in ("trained_with_mse", "trained_with_mae", "trained_with_rmse"):
        assert all(d[row][k] < 0.9 * mean[k] for k in ("mse", "mae", "rmse")), row
        assert math.isclose(d[row]["rmse"] ** 2, d[row]["mse"], rel_tol=1e-4)
    assert min(float(v) for v in m["relu_sum_mse"].values()) < 0.05


def test_fc_net_quick_accuracy(tmp_path):
    m = run(fc_net, tmp_path, "curves_digits.png", "weights_digits.png")
    acc = m["test_accuracy"]["digits"]
    assert acc["plain"] > 0.9 and acc["batch_norm"] > 0.93


def test_cnn_quick_accuracy(tmp_path):
    m = run(cnn, tmp_path, "curves_digits.png", "filters_digits.png")
    assert m["digits_accuracy"] > 0.93


def test_regularization_shrinks_weights_and_gap(tmp_path):
    m = run(regularization, tmp_path, "regularization.png")
    r = m["results"]
    assert r["none"]["train_accuracy"] > 0.99 and r["none"]["gap"] > 0
    l2 = next(k for k in r if k.startswith("l2"))
    assert r[l2]["weight_norm"] < 0.8 * r["none"]["weight_norm"]
    assert all(v["test_accuracy"] > 0.85 for v in r.values())


def test_optimizers_all_descend(tmp_path):
    m = run(optimizers, tmp_path, "optimizers.png")
    for name, curve in m["curves"].items():
        assert curve["step"][0] == 0 and curve["step"][-1] == m["steps"]
        assert curve["loss"][-1] < 0.6 * curve["loss"][0], name
        assert curve["seconds"] == sorted(curve["seconds"])


def test_resnet_study_measures_both_nets(tmp_path):
    m = run(resnet, tmp_path, "grad_norms.png", "training_error.png")
    assert m["depths"] == [8] and m["epochs"] == 1 and list(m["nets"]) == ["8"]
    nets = m["nets"]["8"]
    for name in ("plain", "residual"):
        norms = nets[name]["conv_grad_norms_at_init"]
        # the stem and the six block convolutions (projection shortcuts left out), all reached
        assert len(norms) == 7 and all(0 < v < 1e3 for v in norms)
        assert 0 <= nets[name]["test_accuracy"] <= 1 and nets[name]["train_loss"] > 0
        assert 0 <= nets[name]["train_error"] <= 1
        curve = nets[name]["curve"]
        assert len(curve["train_error"]) == len(curve["test_error"]) == 1 and curve["train_loss"][0] > 0
    # the same layers, plus the two 1x1 conv-bn projections (8 -> 16, 16 -> 32 channels)
    extra = nets["residual"]["parameters"] - nets["plain"]["parameters"]
    assert extra == (8 * 16 + 16 + 32) + (16 * 32 + 32 + 64)
    # one depth: nothing to compare
    assert m["degradation"]["plain_degrades"] is None and not m["degradation"]["shown"]


def test_resnet_degradation_compares_the_deepest_with_the_best_shallower():
    def net(plain, residual):
        return {"plain": {"train_error": plain}, "residual": {"train_error": residual}}

    d = resnet.degradation({"8": net(0.05, 0.04), "20": net(0.02, 0.01), "56": net(0.09, 0.005)})
    assert d["deepest"] == 56 and d["plain_best_shallower_depth"] == 20
    assert math.isclose(d["plain_deepest_minus_best_shallower"], 0.07)
    assert d["plain_degrades"] and d["residual_degrades"] is False and d["shown"]
    d = resnet.degradation({"20": net(0.02, 0.01), "56": net(0.01, 0.02)})
    assert not d["plain_degrades"] and d["residual_degrades"] and not d["shown"]
    # a difference within the tolerance (4 of 4,000 images by default) is a tie, not degradation
    d = resnet.degradation({"20": net(0.002, 0.0), "56": net(0.0025, 0.0005)})
    assert d["tolerance"] == 0.001 and not d["plain_degrades"] and d["residual_degrades"] is False
    assert resnet.degradation({"20": net(0.002, 0.0), "56": net(0.0025, 0.0005)}, 1e-4)["plain_degrades"]
    with pytest.raises(ValueError, match="6n"):
        resnet.depths_list("8,21")
    assert resnet.depths_list("56,8,20") == [8, 20, 56]


def test_sequence_lstm_vs_rnn_and_hidden_gradient_norms(tmp_path):
    m = run(sequence, tmp_path, "sequence.png")
    for cell in ("lstm", "rnn"):
        r = m["runs"][cell]
        for when in ("init", "trained"):
            norms = r[f"grad_norm_{when}"]
            assert len(norms) == 28 and all(math.isfinite(v) and v > 0 for v in norms)
            # the gradient reaching the first row is smaller than at the last: it vanishes
            assert m["first_over_last_grad_norm"][f"{cell}/{when}"] < 0.5
        assert r["train_loss"][-1] < r["train_loss"][0]
        assert m[f"{cell}_accuracy"] > 0.12  # above chance after 2 quick epochs


def test_char_model_beats_the_unigram_and_samples_from_the_vocabulary(tmp_path):
    m = run(char_model, tmp_path, "learning_curve.png")
    # add-one smoothed baselines on the same 90/10 split of pydoc_data.topics
    assert m["characters"] > 400_000 and m["vocab_size"] > 90
    assert 4.5 <= m["baselines"]["unigram"] <= 4.8 and 3.2 <= m["baselines"]["bigram"] <= 3.5
    _, vocab, _ = char_model.load_text()
    assert list(m["runs"]) == ["transformer"]  # --quick: the LSTM's compilations left out
    for name, r in m["runs"].items():
        # even 60 quick steps learn more than the character frequencies
        assert math.isfinite(r["val_bits"]) and r["val_bits"] < m["baselines"]["unigram"]
        assert r["curve"]["val_bits"][-1] < r["curve"]["val_bits"][0]
        text = m["samples"][name]
        assert len(text) == m["config"]["sample_length"] and set(text) <= set(vocab)
        # sampling is a pure function of the seed (the study drew each seed twice)
        assert r["same_seed_same_sample"] and r["next_seed_sample"] != text


def test_precision_trains_in_16_bits_on_float32_masters(tmp_path):
    m = run(precision, tmp_path)
    assert (tmp_path / "results.md").read_text().startswith("# Mixed precision")
    assert "claims" not in m and "char" not in m  # --quick: the study's claims are full-size
    for study, low in (("lenet", "bfloat16"), ("mlp", "float16+dynamic")):
        runs = m[study]["runs"]
        assert list(runs) == ["float32", low] and m[study]["dataset"] == "digits"
        for r in runs.values():  # the master copy stays float32 whatever the compute dtype
            assert r["param_dtypes"] == ["float32"] and r["opt_state_float_dtypes"] == ["float32"]
            assert r["step_seconds"] > 0 and math.isfinite(r["final_train_loss"])
        # the same seed, data and steps: one epoch lands within a few points of float32
        assert abs(runs[low]["accuracy_minus_float32_points"]) < 5
        assert abs(runs[low]["test_accuracy_float32_eval"] - runs[low]["test_accuracy"]) < 0.05
    scaled = m["mlp"]["runs"]["float16+dynamic"]
    assert scaled["final_loss_scale"] == 2.0 ** (15 - scaled["skipped_steps"])
    assert m["mlp"]["runs"]["float32"]["test_accuracy"] > 0.5


def test_gpt2_char_trains_both_models_and_generates_faster_with_the_cache(tmp_path):
    m = run(gpt2_char, tmp_path, "learning_curve.png")
    assert list(m["runs"]) == ["gpt2", "transformer"]
    # the same sizes; GPT-2's output layer is the token table: dim·vocab + vocab fewer params
    c, V = m["config"], m["vocab_size"]
    assert m["params"]["transformer"] - m["params"]["gpt2"] == c["dim"] * V + V
    _, vocab, _ = char_model.load_text()
    for name, r in m["runs"].items():
        assert r["steps"] == c["steps"] and r["batch_size"] == c["batch_size"]
        # both learn more than the character frequencies
        assert math.isfinite(r["val_bits"]) and r["val_bits"] < m["baselines"]["unigram"]
        assert r["curve"]["val_bits"][-1] < r["curve"]["val_bits"][0]
        # generate fills the model's positions: T − len(prompt) characters of the vocabulary
        text = m["samples"][name]
        assert len(text) == c["sample_length"] == c["context"] - len(c["prompt"])
        assert set(text) <= set(vocab)
    speed = m["generation_speed"]  # same model, same number of new characters
    assert speed["new_tokens"] == c["sample_length"] and speed["speedup"] > 1
    saved = (tmp_path / "samples.txt").read_text()
    assert all(c["prompt"] + m["samples"][name] in saved for name in m["runs"])
    assert len(m["load_average"]["before"]) == 3
