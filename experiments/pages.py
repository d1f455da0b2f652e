"""What each study page says: its title, tables and prose, as functions of the run's metrics.

One function per experiment, `NAME(m) -> Page`, where `m(*keys)` reads runs/NAME/metrics.json
(experiments/docs.py: a missing key is an error naming the file and the key). Every number
on a page is formatted here from `m`; the prose around the numbers is what the study is
known to show (experiments/README.md, "What each study shows"), and says so when a target
is missed or a result goes the other way.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Page:
    """What one study page says. tables: (caption, header, rows); figures: {file: caption}
    for the PNGs the study writes (each must exist beside metrics.json); optional: captions
    of figures written only sometimes (the mistakes of a net that made none)."""
    title: str
    summary: str
    tables: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    shows: str = ""
    not_shows: str = ""
    optional: dict = field(default_factory=dict)  # captions of figures a run may not write


# ----------------------------------------------------------------------------- formatting

def pct(v, digits=2) -> str:
    """An accuracy (a fraction) as a percentage: 0.98333 -> '98.33 %'; None (a run that
    diverged) -> 'diverged'."""
    return "diverged" if v is None else f"{100 * float(v):.{digits}f} %"


def num(v, digits=3) -> str:
    """`digits` significant digits, scientific when below 1e-3 or from 1e5 up."""
    if v is None or isinstance(v, str):
        return "n/a" if v is None else v
    v = float(v)
    return f"{v:.{digits - 1}e}" if v != 0 and not 1e-3 <= abs(v) < 1e5 else f"{v:.{digits}g}"


def sec(v) -> str:
    """Seconds: whole ones from 10 s, two significant digits below."""
    return f"{float(v):.0f} s" if float(v) >= 10 else f"{float(v):.2g} s"


def yes(v) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[v]


def met(v) -> str:
    return "met" if v else "**missed**"


def table(header, rows) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the pages

def fc_net(m) -> Page:
    acc = m("test_accuracy")
    rows = [[ds, *(pct(a) for a in runs.values())] for ds, runs in acc.items()]
    header = ["data set", *next(iter(acc.values()))]
    digits_bn = m("test_accuracy", "digits", "batch_norm")
    return Page(
        "Fully connected nets: batch norm and dropout",
        f"cs231n's {{affine - [batch norm] - relu - [dropout]}} × (L−1) - affine - softmax, hidden "
        f"layers {m('hidden')}, N(0, {m('weight_scale')}²) weights, L2 λ = {m('l2')}, Adam, "
        f"{m('epochs')} epochs. Target: batch norm on the digits ≥ 97.5 %: {pct(digits_bn)}, "
        f"{met(digits_bn >= 0.975)}.",
        [("Test accuracy after the last epoch:", header, rows),
         ("Training wall time per net:", ["net", "seconds"],
          [[k, sec(v)] for k, v in m("wall_s").items()])],
        {f"curves_{ds}.png": f"{ds}: training loss and test accuracy per epoch, one line per variant"
         for ds in acc} | {f"weights_{ds}.png": f"{ds}: the first layer's weights of the batch-norm "
                           "net, one unit per cell" for ds in acc},
        "The loss curves show how fast each variant fits its training set and the accuracy "
        "curves where each levels off. The weight images show the first layer of the "
        "batch-norm net as images, one hidden unit per cell.",

        "One seed and one small test split per data set: differences of a few tenths of a "
        "point are a handful of test images, within the noise of the split and the seed. "
        "Nothing here is tuned per variant, so the ranking says little about the best each "
        "could do. The first-layer weights show little visible stroke structure: they are "
        "not evidence of what the net has learned.")


def cnn(m) -> Page:
    d = m("digits")
    best = m("digits_accuracy")
    lenet = m("mnist5k_accuracy") if m.has("mnist5k_accuracy") else None
    summary = (f"On the 8×8 digits, a small CNN (conv-bn-act ×2, pool, conv-bn-act, pool, dense, "
               f"dropout, dense; {m('digits_epochs')} epochs) with one design choice changed at a "
               f"time. Target relu/max/pad ≥ 98.5 %: {pct(best)}, {met(best >= 0.985)}.")
    tables = [("Digits, test accuracy per variant (activation/pool/edge):", ["variant", "test accuracy"],
               [[k, pct(v)] for k, v in d.items()])]
    figures = {"curves_digits.png": "digits: test accuracy per epoch of every variant",
               "filters_digits.png": "digits: the first layer's 3×3 filters (relu/max/pad)"}
    optional = {"mistakes_digits.png": "digits: misclassified test images (the first 32), "
                                       "true→predicted"}
    if lenet is not None:
        summary += (f" LeNet-5 on MNIST-5k ({m('mnist_epochs')} epochs): {pct(lenet)}, target ≥ "
                    f"96.5 % {met(lenet >= 0.965)}.")
        tables.append(("MNIST-5k LeNet-5:", ["test accuracy", "test errors", "wall time"],
                       [[pct(lenet), m("mnist5k_errors"), sec(m("wall_s", "mnist5k/lenet5"))]]))
        figures |= {"curves_mnist5k.png": "MNIST-5k LeNet-5: training loss and test accuracy per epoch",
                    "filters_mnist5k.png": "MNIST-5k: LeNet-5's first-layer 5×5 filters"}
        optional["mistakes_mnist5k.png"] = ("MNIST-5k: misclassified test images (the first 32), "
                                            "true→predicted")
    return Page(
        "Convolutional nets: LeNet-5 and one design choice at a time", summary, tables, figures,
        "The curves show how fast each variant's test accuracy rises and where it levels off; "
        "the filter images show the first layer's learned weights, and the mistake images "
        "the test images the net got wrong (the first 32), with true and predicted class.",
        "The digits test split is small, so the variants' differences are a handful of "
        "images, from one seed: they do not rank pooling, edge handling or activations in "
        "general. Filters this small (3×3, 5×5) do not show recognizable features, and the "
        "mistakes are not a measure of which errors are hard.", optional)


def gradcheck(m) -> Page:
    nets = m("networks")
    rows = [[k, yes(v["ok"]), num(v["worst_manual_vs_autodiff"], 2),
             num(v["worst_autodiff_vs_numerical"], 2)] for k, v in nets.items()]
    wrong = m("max_pool_rel_errors", "copy_to_all")
    return Page(
        "Gradient checks on every network",
        f"`fn.check_gradients` (hand formulas, `jax.grad` and centred differences, float64) on "
        f"every network of the experiments at a tiny size: **{m('passed')} of {m('checks')}** "
        f"pass. The notes' copy-to-all max-pool backward fails "
        f"({yes(not m('max_pool_copy_to_all_ok'))} that it is caught), the arg-max rule passes "
        f"({yes(m('max_pool_argmax_ok'))}).",
        [("Per network (worst relative errors over its leaves; the pass/fail of each element "
          "uses a relative tolerance plus an absolute floor for finite-difference noise):",
          ["network", "passes", "hand vs jax.grad", "jax.grad vs numerical"], rows),
         ("The copy-to-all max pool, relative error per leaf:", ["leaf", "copy to all", "arg max"],
          [[k, num(v, 2), num(m("max_pool_rel_errors", "argmax", k), 2)] for k, v in wrong.items()])],
        {"gradcheck.png": "worst relative error per network, hand formulas against jax.grad "
                          "(float64; a bar at the left edge is an exact match)"},
        "The hand-derived backward of every layer in these networks agrees with autodiff to "
        "round-off, and autodiff agrees with finite differences within their noise; a wrong "
        "formula (copy-to-all max pooling) is caught on the leaves below the pool and not on "
        "the dense layer above it.",
        "A large 'jax.grad vs numerical' maximum is a relative error on an element whose true "
        "gradient is near zero (the absolute floor passes it), not a wrong gradient. The checks "
        "run at tiny sizes in float64: they say the formulas are right, not that float32 "
        "training at full size is stable.")


def xor(m) -> Page:
    runs = [k for k in ("perceptron", "mlp_tanh", "mlp_sigmoid") if m.has(k)]
    return Page(
        "XOR: why a hidden layer",
        f"Trained with squared error for {m('epochs')} epochs through `fn.with_manual_grads` "
        f"(the layers' δ-rule formulas; they agree with autodiff to "
        f"{num(m('delta_rule_vs_autodiff_rel_error'), 2)} relative). The MLP solves XOR: "
        f"{yes(m('mlp_solves_xor'))}; the single neuron: {yes(m('perceptron_solves_xor'))}.",
        [("Per model:", ["model", "accuracy (of 4)", "final MSE", "outputs for (0,0), (0,1), (1,0), (1,1)"],
          [[k, f"{round(4 * m(k, 'accuracy'))}/4", num(m(k, "final_mse")),
            ", ".join(f"{p:.3f}" for p in m(k, "predictions"))] for k in runs])],
        {"decision_boundaries.png": "the decision surface of each model over the unit square"},
        "The hidden layer bends the decision surface around the two classes; the single "
        "sigmoid neuron cannot separate XOR, and under squared error its best fit is the "
        "constant 0.5 (the flat panel).",
        "Four points, one seed: it shows what one neuron cannot represent, not how hidden "
        "layers behave on real data.")


def losses(m) -> Page:
    d = m("diabetes")
    rows = [[k.replace("_", " "), num(v["mse"], 4), num(v["mae"], 4), num(v["rmse"], 4)]
            for k, v in d.items()]
    relu = m("relu_sum_mse")
    return Page(
        "Regression losses: MSE, MAE, RMSE",
        f"The same net trained on the diabetes data set with each loss ({m('epochs')} epochs), "
        f"each scored in all three metrics on the test split (targets' std "
        f"{num(m('target_std'), 4)}), and a 1-D curve fitted by sums of ReLUs.",
        [("Diabetes, test metrics:", ["trained with", "MSE", "MAE", "RMSE"], rows),
         ("1-D curve fitted by n ReLUs:", ["n", "MSE"], [[k, num(v)] for k, v in relu.items()])],
        {"losses.png": "training curves per loss, and the 1-D fits with each ReLU's hinge drawn"},
        "The training curves show each loss going down on diabetes (standardized targets); the "
        "ReLU panels show the 1-D curve built from hinges, one thin line per unit, and their "
        "sum. More units are not always a better fit (the table): units whose hinge lies "
        "outside the data at initialization stay dead.",
        "The three losses end within a few units of each other on a small test split: "
        "which loss is best here is within the noise of the split and the seed.")


def init_study(m) -> Page:
    runs = m("runs")
    rows = []
    for k, r in runs.items():
        trained = ("diverged at step " + str(r["diverged_at_step"]) if "diverged_at_step" in r
                   else pct(r["test_accuracy"]))
        rows.append([k, num(m("last_activation_std", k), 2), trained])
    return Page(
        "Initialization: vanishing, exploding and the right scale",
        f"A {m('depth')}-layer net of width {m('width')} (ReLU or tanh) on the digits, with N(0, "
        f"0.01²), N(0, 1), Xavier and He weights: per-layer spread of activations and weight "
        f"gradients (`fn.backprop`) at initialization, then {m('epochs')} epochs of SGD with "
        f"momentum.",
        [("Std of the last hidden activation at init, and test accuracy after training:",
          ["activation/init", "last activation std", "test accuracy"], rows)],
        {"spreads.png": "per-layer std of activations and of weight gradients at initialization",
         "training.png": "training loss per epoch for each initialization"},
        "Ten layers raise each layer's gain to the tenth power: N(0, 0.01²) makes activations "
        "and gradients vanish (the net stays at chance), N(0, 1) makes ReLU activations explode "
        "(training diverges, so the training panel leaves it out) and saturates tanh; Xavier and "
        "He keep the spread of order one and both train." + _loss_rose(m("runs", "relu/he", "train_loss")),
        "Xavier against He after training is one seed on a small test split: the ranking of the "
        "two can flip between runs. The study is about the spreads at initialization, not "
        "about which good scale trains best.")


def _loss_rose(loss) -> str:
    """A sentence when a training loss ended well above its lowest value (an instability)."""
    low = min(loss)
    if loss[-1] <= 2 * low:
        return ""
    return (f" He's ReLU training loss fell to {num(low)} and then rose to {num(loss[-1])} by the "
            "last epoch (SGD with momentum at this learning rate), which is why it ends behind "
            "Xavier in test accuracy.")


def regularization(m) -> Page:
    res = m("results")
    rows = [[k, pct(v["train_accuracy"]), pct(v["test_accuracy"]), num(v["test_loss"]),
             num(v["weight_norm"])] for k, v in res.items()]
    none = m("results", "none")
    best = m("best")
    best_acc, helped = m("results", best, "test_accuracy"), best != "none"
    return Page(
        "Regularization: L2 and dropout on a small training set",
        f"An MLP (256, 256) trained for {m('epochs')} epochs with Adam on {m('train_size')} "
        f"training digits, without regularization, with L2 and with dropout. Best test "
        f"accuracy: **{best}** ({pct(m('results', best, 'test_accuracy'))}; none "
        f"{pct(none['test_accuracy'])}).",
        [("Per setting:", ["setting", "train accuracy", "test accuracy", "test loss", "‖w‖"], rows)],
        {"regularization.png": "train and test accuracy per setting, and the test loss per epoch"},
        "L2 does what its gradient says: it shrinks the weights (‖w‖ column; "
        f"{num(none['weight_norm'])} without it). " + (
            f"The best test accuracy, {best}'s, is {100 * (best_acc - none['test_accuracy']):+.2f} "
            "points above no regularization's." if helped else
            "Neither L2 nor dropout improved the test accuracy here: no regularization scored best."),
        "One seed and a small test split: differences of a point or less are a few images. A "
        "finding at this size and budget, not a tuned demonstration; the regularized nets' "
        "settings were not searched.")


def optimizers(m) -> Page:
    s = m("summary")
    rows = [[k, v["batch_size"], num(v["final_loss"]), f"{v['ms_per_step']:.2f}",
             v["steps_to_threshold"] if v["steps_to_threshold"] is not None else "not reached",
             sec(v["seconds_to_threshold"]) if v["seconds_to_threshold"] is not None else "–"]
            for k, v in s.items()]
    return Page(
        "Optimizers: GD, SGD, momentum and Adam",
        f"The same initial weights trained on the digits for {m('steps')} steps by each optimizer "
        f"(`fn.train.make_step`, the compiled step timed alone); the full training loss every "
        f"10 steps, and when it first falls below {m('threshold')}.",
        [("Per optimizer:", ["optimizer", "batch", "final loss",
                             "ms/step", f"steps to loss < {m('threshold')}", "seconds to it"], rows)],
        {"optimizers.png": "training loss against steps and against seconds"},
        _optimizer_steps(s, m("threshold")),
        "Milliseconds per step come from a shared CPU and vary between runs; the "
        "learning rates are not tuned per optimizer, so this is not a ranking of optimizers.")


def _optimizer_steps(summary, threshold) -> str:
    """Which optimizers reached the threshold in how many steps, and what a step cost."""
    sgd = {k: v for k, v in summary.items() if k.startswith(("SGD", "GD"))}
    steps = sorted({v["steps_to_threshold"] for v in sgd.values() if v["steps_to_threshold"]})
    cost = {k: v["ms_per_step"] for k, v in sgd.items()}
    cheap, dear = min(cost, key=cost.get), max(cost, key=cost.get)
    same = ", so in seconds the cheapest step wins" if len(steps) == 1 else ""
    others = ", ".join(f"{k} after {v['steps_to_threshold']}" for k, v in summary.items()
                       if k not in sgd and v["steps_to_threshold"])
    return (f"Plain SGD at every batch size and full-batch GD reached loss {threshold} after "
            f"{' to '.join(map(str, steps))} steps; a step cost {cost[cheap]:.2f} ms ({cheap}) to "
            f"{cost[dear]:.2f} ms ({dear}){same}. Momentum and Adam: {others} steps.")


def graph_net(m) -> Page:
    pruning = m("pruning")
    half = min(pruning, key=lambda r: abs(r["fraction_kept"] - 0.5))
    shown = pruning[::3] + ([pruning[-1]] if (len(pruning) - 1) % 3 else [])
    return Page(
        "A graph network: a DAG of neurons",
        f"A DAG of {m('nodes')} neurons ({m('hidden')} hidden) and {m('edges'):,} edges, given by "
        f"an adjacency matrix, trained on the digits for {m('epochs')} epochs: "
        f"**{pct(m('test_accuracy'))}** test accuracy. Relabeling the hidden nodes (P A Pᵀ) "
        f"changes the outputs by {num(m('relabel_max_abs_diff'), 2)} (float32 round-off); "
        f"swapping rows only (the notes' one-sided swap) by {num(m('swap_rows_only_max_abs_diff'), 3)}.",
        [("Pruning (keep |w| > threshold, no retraining), every third threshold:",
          ["threshold", "edges kept", "fraction", "test accuracy"],
          [[num(r["threshold"]), r["edges_kept"], pct(r["fraction_kept"], 1), pct(r["test_accuracy"])]
           for r in shown])],
        {"graph.png": "the adjacency matrix, the same graph relabeled (P A Pᵀ) with the largest "
                      "output change, and |W ⊙ A| after training", "pruning.png":
         "test accuracy against the fraction of edges kept"},
        f"A relabeling is the same function (outputs equal to round-off) while a one-sided row "
        f"swap is a different network; about half the edges can go without retraining "
        f"({pct(half['fraction_kept'], 0)} kept: {pct(half['test_accuracy'])}) before accuracy "
        f"falls.",
        "One trained graph and one seed; pruning without retraining understates what a pruned "
        "and retrained graph would reach.")


def _stuck(m, depth) -> str:
    """A sentence when the deepest plain net hardly trained: its error per epoch, first and
    last, and its final training loss."""
    r = m("nets", str(depth), "plain")
    curve = r["curve"]["train_error"]
    if r["train_error"] < 0.5:
        return ""
    worst = max(m("nets", d, kind, "train_error") for d in m("nets") if int(d) < depth
                for kind in ("plain", "residual"))
    return (f" The plain-{depth} net hardly trained at all: its training error was "
            f"{pct(curve[0])} in the first epoch and {pct(curve[-1])} in the last (loss "
            f"{num(r['train_loss'])}), while every shallower net, plain or residual, ended at "
            f"{pct(worst)} or less. An extreme form of He et al.'s degradation: the deep plain "
            "stack failed to optimize on this budget; it did not overfit.")


def resnet(m) -> Page:
    nets, deg = m("nets"), m("degradation")
    rows = []
    for depth in nets:
        for kind in ("plain", "residual"):
            r = m("nets", depth, kind)
            rows.append([f"{kind}-{depth}", f"{r['parameters']:,}", pct(r["train_error"]),
                         num(r["train_loss"]), pct(r["curve"]["train_error"][-1]),
                         pct(r["test_accuracy"]), num(r["first_over_last_grad_norm"]),
                         sec(r["train_seconds"])])
    deepest = deg["deepest"]
    if deg["plain_degrades"] is None:
        verdict = "Only one depth ran: there is nothing to compare."
    else:
        shallow_p, shallow_r = deg["plain_best_shallower_depth"], deg["residual_best_shallower_depth"]
        verdict = (f"Plain: depth {deepest} ends at {pct(m('nets', str(deepest), 'plain', 'train_error'))} "
                   f"training error against {pct(m('nets', str(shallow_p), 'plain', 'train_error'))} "
                   f"for depth {shallow_p} ({100 * deg['plain_deepest_minus_best_shallower']:+.2f} "
                   f"points): {'it degrades' if deg['plain_degrades'] else 'it does **not** degrade'}. "
                   f"Residual: depth {deepest} {pct(m('nets', str(deepest), 'residual', 'train_error'))} "
                   f"against {pct(m('nets', str(shallow_r), 'residual', 'train_error'))} for depth "
                   f"{shallow_r} ({100 * deg['residual_deepest_minus_best_shallower']:+.2f} points): "
                   f"{'it degrades too' if deg['residual_degrades'] else 'no degradation'}. "
                   + f"(A difference of {100 * deg['tolerance']:.2g} point or less counts as none.) "
                   + ("**The degradation problem is shown.**" if deg["shown"] else
                      "**The degradation problem is not shown by this run.**")
                   + _stuck(m, deepest))
    return Page(
        "ResNet: the degradation problem",
        f"He et al. (2016) saw deeper plain nets train to a *higher training error* than "
        f"shallower ones, and residual nets of the same depths not. Here plain and residual "
        f"`fn.models.resnet` nets of depths {', '.join(map(str, m('depths')))} (width "
        f"{m('width')}, batch norm in both) train on the {m('train_examples'):,} MNIST-5k "
        f"training images without augmentation, on the same budget: {m('epochs')} epochs of "
        f"{m('optimizer')} (peak {m('lr')} after {m('warmup_epochs'):g} epoch(s) of warm-up), "
        f"batch {m('batch_size')}, L2 {m('l2')}. {verdict}",
        [("Per net (training error and loss: the whole training set in evaluation mode after "
          "the last epoch; 'last epoch' is the mean over that epoch's batches in train mode; "
          f"test: {m('test_examples'):,} images; grad ratio: ‖∂L/∂W‖ of the first convolution "
          "over the last at initialization):",
          ["net", "parameters", "training error", "training loss", "training error, last epoch",
           "test accuracy", "grad ratio at init", "training time"], rows)],
        {"training_error.png": "training error (left) and test error (right) per epoch; colour "
                               "per depth, plain dashed, residual solid (as He et al. Fig. 1 and 4)",
         "grad_norms.png": "‖∂L/∂W‖ of every convolution at initialization, input side first, "
                           "one panel per depth"},
        "The left panel is He et al.'s figure at MNIST scale: for each depth, how fast the "
        "plain (dashed) and residual (solid) nets bring their training error down on the same "
        "budget (a net at 0 % leaves the log scale). The gradient norms show what the skips "
        "change at initialization: " + "; ".join(
            f"at depth {d} the first convolution's gradient is "
            f"{num(m('nets', d, 'plain', 'first_over_last_grad_norm'))}× the last one's in the "
            f"plain net and {num(m('nets', d, 'residual', 'first_over_last_grad_norm'))}× in "
            "the residual net" for d in nets) + ".",
        "One seed, a short budget on a small, easy data set, one learning rate: a longer budget "
        "or another rate may close or reverse the gaps between the shallower nets, and the "
        "smallest nets may simply be undertrained at this rate. Test accuracy is not what the "
        f"study measures: without augmentation and on {m('test_examples'):,} images (one image "
        f"is {100 / m('test_examples'):.2g} point) its differences are noisy. This is not "
        "CIFAR-10, and the budget is far below He et al.'s.")


def sequence(m) -> Page:
    runs = m("runs")
    reach = m("first_over_last_grad_norm")
    rows = [[c, pct(r["test_accuracy"]), r["epochs"], num(reach[f"{c}/init"], 2),
             num(reach[f"{c}/trained"], 2), sec(r["fit_seconds"])] for c, r in runs.items()]
    lstm = m("lstm_accuracy")
    return Page(
        "Sequences: MNIST read row by row, LSTM against RNN",
        f"MNIST-5k read one row per step (28 steps × 28 pixels), trained on the hand BPTT "
        f"(Adam, cosine decay). Target LSTM ≥ 95 %: {pct(lstm)}, {met(m('lstm_reaches_95'))}; "
        f"RNN {pct(m('rnn_accuracy'))}.",
        [("Per cell (‖∂L/∂h_1‖ / ‖∂L/∂h_28‖: how much of the last step's gradient reaches the "
          "first row):", ["cell", "test accuracy", "epochs", "grad ratio at init",
                          "grad ratio trained", "training time"], rows)],
        {"sequence.png": "test accuracy per epoch, and ‖∂L/∂h_t‖ over the steps at init and trained"},
        f"Test accuracy per epoch (right): LSTM {pct(lstm)} against RNN "
        f"{pct(m('rnn_accuracy'))} at the end ({100 * (lstm - m('rnn_accuracy')):+.1f} points). "
        f"The gradient norms per step (left): at initialization the LSTM's first row gets "
        f"{num(reach['lstm/init'], 2)} of the last row's gradient (its forget gate, σ(0) = ½, "
        f"scales the gradient at every step), the RNN's {num(reach['rnn/init'], 2)}; after "
        f"training {num(reach['lstm/trained'], 2)} and {num(reach['rnn/trained'], 2)}.",
        "One seed and one test split; the RNN is a plain tanh cell with the same budget, "
        "not a tuned one. The gradient ratios describe one batch.")


def _ahead(m, first, second) -> str:
    """Where `first`'s validation curve lies against `second`'s, at the steps both measured
    (the first point, before training, left out)."""
    a, b = (dict(zip(m("runs", n, "curve", "step"), m("runs", n, "curve", "val_bits")))
            for n in (first, second))
    steps = sorted(set(a) & set(b))[1:]
    below = [s for s in steps if a[s] < b[s]]
    if not steps:
        return ""
    if len(below) == len(steps):
        return f"Per step, {first} is below {second} at every measured point after the first."
    return (f"Per step, {first} is below {second} at {len(below)} of the {len(steps)} measured "
            "points after the first.")


def _bits_table(m, names):
    rows = []
    for name in names:
        r = m("runs", name)
        rows.append([name, f"{r['params']:,}", f"{r['val_bits']:.3f}", f"{r['train_bits_last_100']:.2f}",
                     r["steps"], sec(r["train_seconds"]), sec(r["wall_seconds"])])
    return ["model", "parameters", "validation bits/char", "train bits/char, last 100 steps",
            "steps", "training time", "wall time"], rows


def _against_bigram(m) -> str:
    """Each model's final validation bits/char against the bigram baseline, and whether its
    curve was still falling at its last measured step."""
    bigram, parts = m("baselines", "bigram"), []
    for name in m("runs"):
        curve = m("runs", name, "curve", "val_bits")
        side = "below" if m("runs", name, "val_bits") < bigram else "not below"
        falling = "still falling" if len(curve) > 1 and curve[-1] < curve[-2] else "flat or rising"
        parts.append(f"{name} ends {side} the bigram baseline, its curve {falling} at the last step")
    return "; ".join(parts) + "."


def char_model(m) -> Page:
    base, cfg = m("baselines"), m("config")
    header, rows = _bits_table(m, list(m("runs")))
    tf = m("val_bits", "transformer") if m.has("val_bits", "transformer") else None
    samples = m("samples")
    return Page(
        "A character-level language model",
        f"On Python's own reference text ({m('characters'):,} characters, {m('vocab_size')} "
        f"symbols, the last 10 % validates): {cfg['steps']:,} AdamW steps of "
        f"{cfg['batch_size']} windows of {cfg['context']} characters on the hand-derived "
        f"backward. Baselines (add-one smoothing): unigram {base['unigram']:.3f}, bigram "
        f"{base['bigram']:.3f} bits/char."
        + (f" Target transformer ≤ 2.5 bits/char: {tf:.3f}, {met(m('transformer_reaches_2_5'))}."
           if tf is not None else ""),
        [("Validation bits/char over every position of all validation windows:", header, rows),
         ("Samples (temperature " f"{cfg['temperature']}, prompt \"{cfg['prompt']}\"):",
          ["model", "sample"], [[k, "`" + (cfg["prompt"] + v).replace("\n", "⏎").replace("|", "\\|")
                                 .replace("`", "'") + "`"] for k, v in samples.items()])],
        {"learning_curve.png": "validation bits/char against step and against training seconds, "
                               "baselines as lines"},
        _against_bigram(m) + " " + (_ahead(m, "transformer", "lstm") if m.has("runs", "lstm")
                                   else "Only the transformer ran.")
        + " The right panel puts the same curves against training seconds, where a model "
        "with cheaper steps gains.",
        "One seed and one text; the two models' per-second comparison ran under different "
        "load, so it is rough. The samples show spelling and syntax-like structure, not meaning.")


def precision(m) -> Page:
    rows = []
    for study, unit in (("lenet", "acc"), ("mlp", "acc"), ("char", "bits")):
        if not m.has(study):
            continue
        for dtype, r in m(study, "runs").items():
            result = (pct(r["test_accuracy"]) if unit == "acc" else f"{r['val_bits']:.4f} bits/char")
            diff = (f"{r['accuracy_minus_float32_points']:+.2f} points" if unit == "acc"
                    else f"{r['bits_minus_float32']:+.4f}")
            rows.append([study, dtype, result, diff, f"{1000 * r['step_seconds']:.1f}",
                         f"{r['step_time_ratio_to_float32']:.2f}"])
    claims = m("claims") if m.has("claims") else {}
    return Page(
        "Mixed precision: 16-bit compute on float32 masters",
        "Each pair trained from one key (same initial float32 parameters, batch order, dropout "
        "masks); the 16-bit run through `fit(..., compute_dtype=..., loss_scale=...)`, its "
        "parameters and optimizer state kept in float32.",
        [("Per run:", ["study", "compute dtype", "result", "vs float32", "ms/step",
                       "step time / float32"], rows),
         ("Claims:", ["claim", "holds"], [[k, yes(v)] for k, v in claims.items()])],
        {},
        "The study writes no figure. Its table shows the 16-bit runs reaching float32's "
        "accuracy or bits/char within the stated tolerances, on float32 master copies.",
        "The step times come from a shared CPU under heavy load and vary widely between "
        "repeats: the study is about correctness, not speed. float16 without loss scaling "
        "also trained here, because this MLP's gradients stay inside float16's range; the "
        "scaling is shown at work on a crafted overflow in the tests, not here.")


def _overfit(m, name) -> str:
    """Validation against training bits/char (last 100 steps) of one model, in words."""
    val, train = m("runs", name, "val_bits"), m("runs", name, "train_bits_last_100")
    where = "above" if val > train else "below"
    return f"{name}'s validation bits/char is {abs(val - train):.2f} {where} its training bits/char."


def gpt2_char(m) -> Page:
    base, cfg, speed = m("baselines"), m("config"), m("generation_speed")
    header, rows = _bits_table(m, list(m("runs")))
    gpt2 = m("val_bits", "gpt2")
    return Page(
        "GPT-2 on characters, and generation with a key/value cache",
        f"`fn.models.gpt2` (tied output layer, dropout {cfg['dropout']}) against "
        f"`fn.models.transformer` of the same sizes (dim {cfg['dim']}, {cfg['depth']} blocks, "
        f"{cfg['heads']} heads, T {cfg['context']}), each {cfg['steps']:,} AdamW steps of "
        f"{cfg['batch_size']} windows on char_model's text (unigram {base['unigram']:.3f}, "
        f"bigram {base['bigram']:.3f} bits/char). Target GPT-2 ≤ {m('target_bits')} bits/char: "
        f"{gpt2:.3f}, {met(m('gpt2_meets_target'))}.",
        [("Validation bits/char:", header, rows),
         ("Generation speed (trained GPT-2, medians of repeats after a warm-up call):",
          ["new tokens", "with cache, tokens/s", "full recompute, tokens/s", "speed-up"],
          [[speed["new_tokens"], f"{speed['cache_tokens_per_s']:,.0f}",
            f"{speed['recompute_tokens_per_s']:,.0f}", f"{speed['speedup']:.1f}×"]])],
        {"learning_curve.png": f"validation bits/char against step and training seconds; "
                               f"baselines and the {m('target_bits')} target as lines"},
        _ahead(m, "transformer", "gpt2") + " " + _overfit(m, "gpt2") + " " + _overfit(m, "transformer"),
        (f"The target was missed: with this budget GPT-2 reached {gpt2:.3f}, not "
         f"{m('target_bits')}; the curves do not say what a larger GPT-2 trained longer would "
         "reach. " if not m("gpt2_meets_target") else "")
        + "GPT-2's training bits/char are measured with dropout on, so its gap is not "
        "comparable with the transformer's. One seed; times on a shared CPU are upper bounds.")


PAGES = {"fc_net": fc_net, "cnn": cnn, "gradcheck": gradcheck, "xor": xor, "losses": losses,
         "init_study": init_study, "regularization": regularization, "optimizers": optimizers,
         "graph_net": graph_net, "resnet": resnet, "sequence": sequence,
         "char_model": char_model, "precision": precision, "gpt2_char": gpt2_char}
