"""Gradient checks of every network in this folder (note 004's "gradient checking").

For each network, on a tiny input in float64, `fn.check_gradients` compares three
gradients of the loss for every parameter leaf and the input: the hand-derived backward
formulas (`model.backward`, i.e. `fn.backprop`), `jax.grad`, and centred finite differences.
Training mode is checked wherever it differs (batch norm's batch statistics, dropout's mask,
fixed by the key). The script prints each report and exits non-zero if any check fails.

It also checks the notes' rule for max pooling, "copy the gradient to all four cells of the
window": a max pool whose backward is replaced by that rule fails the check, while the
arg-max routing funcnet implements passes.
"""
from __future__ import annotations

import math

import jax

import funcnet as fn
from experiments import cnn, common, fc_net, graph_net, init_study, losses, xor

NAME = "gradcheck"


def copy_to_all_max_pool(window=(2, 2)) -> fn.Layer:
    """A max pool whose backward follows the notes' rule: δ copied to every cell of its
    window (the Kronecker product with a block of ones). Wrong: only the arg-max cell
    influences the output, so only it has a gradient."""
    pool = fn.max_pool(window)

    def forward(params, state, x, *, train=False, key=None):
        y, state, _ = pool.forward(params, state, x, train=train, key=key)
        return y, state, {"x": x}

    def backward(params, cache, dy):
        return {}, fn.ops.upsample(dy, window, cache["x"].shape[1:3])

    return pool._replace(forward=forward, backward=backward, name="max_pool(copy-to-all)")


def small_cnn(pool: fn.Layer) -> fn.Layer:
    return fn.serial(fn.conv2d(3, (3, 3)), fn.relu, pool, fn.flatten, fn.dense(4))


def transformer_block(dim: int, num_heads: int, mlp_ratio: int = 2) -> fn.Layer:
    """One pre-norm block of fn.models.transformer (x + attn(ln(x)), then x + mlp(ln(x))),
    flattened to a dense classifier."""
    return fn.serial(
        fn.residual(fn.layer_norm(), fn.self_attention(num_heads, causal=True)),
        fn.residual(fn.layer_norm(), fn.time_distributed(fn.dense(mlp_ratio * dim)), fn.gelu,
                    fn.time_distributed(fn.dense(dim))),
        fn.flatten, fn.dense(3))


def networks(quick: bool = False):
    """name -> (model, input shape, target kind, loss, train). Every network of the folder, at
    a tiny size, checked by check_gradients' default (samples="auto"): one compiled program
    that differences every coordinate of leaves up to 2048 elements (all of them here) and
    checks bigger ones along random directions; faster than separate programs and than
    sampling."""
    ce = fn.losses.softmax_cross_entropy
    nets = {
        "xor/perceptron": (xor.perceptron(), (4, 2), "regression1", fn.losses.mse, False),
        "xor/mlp_tanh": (xor.mlp(3, fn.tanh), (4, 2), "regression1", fn.losses.mse, False),
        "xor/mlp_sigmoid": (xor.mlp(3, fn.sigmoid), (4, 2), "regression1", fn.losses.mse,
                            False),
        "fc_net/batch_norm+dropout": (fc_net.fc_net((6, 5), 3, batch_norm=True, dropout=0.3),
                                      (5, 2, 2, 1), "classes3", ce, True),
        "fc_net/plain": (fc_net.fc_net((6, 5), 3), (5, 2, 2, 1), "classes3", ce, False),
        "cnn/digits relu/max/pad": (cnn.digits_net("relu", "max", "pad", (3, 4), 6), (2, 8, 8, 1),
                                    "classes10", ce, False),
        "cnn/digits tanh/mean/ignore": (cnn.digits_net("tanh", "mean", "ignore", (3, 4), 6), (2, 8, 8, 1),
                                        "classes10", ce, False),
        "cnn/digits sigmoid/max/pad": (cnn.digits_net("sigmoid", "max", "pad", (3, 4), 6), (2, 8, 8, 1),
                                       "classes10", ce, False),
        "cnn/lenet5 (28x28)": (cnn.lenet((2, 3), 5, (6, 5)), (1, 28, 28, 1), "classes10", ce, False),
        "losses/regressor (mse)": (losses.regressor((5,)), (6, 3), "regression1", fn.losses.mse,
                                   False),
        "losses/regressor (mae)": (losses.regressor((5,)), (6, 3), "regression1", fn.losses.mae,
                                   False),
        "losses/regressor (rmse)": (losses.regressor((5,)), (6, 3), "regression1",
                                    fn.losses.rmse, False),
        "losses/relu_sum": (losses.relu_sum(6), (7, 1), "regression1", fn.losses.mse, False),
        # Wide enough that no layer is entirely dead: a dead layer puts the next layer's
        # pre-activations exactly on relu's kink (z = b = 0), where no derivative exists.
        "init_study/10-layer relu": (init_study.deep_net(10, 12, fn.relu, fn.initializers.he, 3),
                                     (4, 6), "classes3", ce, False),
        "init_study/10-layer tanh": (init_study.deep_net(10, 6, fn.tanh, fn.initializers.xavier, 3),
                                     (3, 4), "classes3", ce, False),
        "graph_net/dag": (graph_net.dag_network(graph_net.random_dag(jax.random.PRNGKey(3), 4, 5, 3,
                                                                     0.5), 4, 3),
                          (5, 4), "classes3", ce, False),
    }
    nets["cnn/fn.models.lenet (8x8)"] = (fn.models.lenet(10, 8), (2, 8, 8, 1), "classes10", ce,
                                         False)
    # Branches and the newer layers (embedding takes integer ids: see tests/layers/test_embedding.py).
    nets["resnet/depth 8, train mode"] = (fn.models.resnet(10, 8, depth=8, width=2), (2, 8, 8, 1),
                                          "classes10", ce, True)
    nets["layers/conv_transpose2d+layer_norm+gelu"] = (
        fn.serial(fn.conv_transpose2d(2, 3, 2, 1), fn.layer_norm(), fn.gelu, fn.conv2d(3, 2),
                  fn.leaky_relu(0.1), fn.global_avg_pool, fn.dense(4)),
        (2, 3, 3, 1), "classes4", ce, False)
    nets["layers/conv1d+elu+softplus+time_distributed"] = (
        fn.serial(fn.conv1d(3, 3, padding="SAME"), fn.elu(), fn.time_distributed(fn.dense(2)),
                  fn.gelu_tanh, fn.fanout(2), fn.parallel(fn.softplus, fn.identity),
                  fn.fanin_concat(), fn.flatten, fn.dense(3)),
        (3, 5, 2), "classes3", ce, False)

    def attention(causal):
        return fn.serial(fn.positional_embedding(6), fn.self_attention(2, causal), fn.flatten,
                         fn.dense(3))

    nets.update({  # BPTT and attention (sequence.py): (batch, time, features) inputs
        "sequence/rnn": (fn.serial(fn.rnn(4, False), fn.dense(3)), (2, 5, 3), "classes3", ce,
                         False),
        "sequence/lstm_classifier": (fn.models.lstm_classifier(3, 4), (2, 5, 3), "classes3", ce,
                                     False),
        "sequence/self_attention": (attention(False), (2, 5, 4), "classes3", ce, False),
        "sequence/causal self_attention": (attention(True), (2, 5, 4), "classes3", ce, False),
    })
    nets.update({  # the transformer's pre-norm block, and a whole tiny one (char_model.py)
        "char_model/transformer block": (transformer_block(4, 2), (2, 5, 4), "classes3", ce,
                                         False),
        "char_model/transformer": (fn.models.transformer(7, 5, 4, 2, 2), (2, 5), "tokens7", ce,
                                   False),
    })
    if quick:  # one network per experiment (compilation dominates the time)
        keep = ("xor/mlp_tanh", "fc_net/batch_norm+dropout", "cnn/digits tanh/mean/ignore",
                "losses/regressor (rmse)", "init_study/10-layer tanh", "graph_net/dag",
                "resnet/depth 8, train mode")
        nets = {k: nets[k] for k in keep}
    return nets


def targets(kind: str, shape, key):
    """Labels for `kind`: "classesK" one class in [0, K) per example, "tokensV" one token id
    in [0, V) per position of the (batch, time) input, "regression1" one value."""
    n = shape[0]
    if kind.startswith("tokens"):
        return jax.random.randint(key, tuple(shape), 0, int(kind[len("tokens"):]))
    if kind.startswith("classes"):
        return jax.random.randint(key, (n,), 0, int(kind[len("classes"):]))
    return jax.random.uniform(key, (n, 1))


def check(model, input_shape, target_kind, loss, train, key, samples="auto"):
    k_init, k_x, k_y, k_drop = jax.random.split(key, 4)
    params, state = model.init(k_init, input_shape)
    if target_kind.startswith("tokens"):  # a language model: token ids in (as floats, as
        # fit stores them: embedding rounds them, finite differences stay on the same row)
        x = targets(target_kind, input_shape, k_x).astype(float)
    else:
        # jax.random.normal(k_x, input_shape)'s values, drawn flat: XLA:CPU compiles a
        # rank-4 draw several times slower than a flat one
        x = jax.random.normal(k_x, (math.prod(input_shape),)).reshape(input_shape)
    y = targets(target_kind, input_shape, k_y)
    return fn.check_gradients(model, params, state, x, y, loss, train=train,
                              key=k_drop if train else None, samples=samples, sample_key=k_drop)


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv)
    key = jax.random.PRNGKey(args.seed)
    results, reports = {}, {}
    for (name, spec), k in zip(networks(args.quick).items(), jax.random.split(key, 64)):
        report = check(*spec, k)
        reports[name] = report
        print(f"\n== {name} ==\n{report}")
        results[name] = {"ok": report.ok, "loss": report.loss,
                         "worst_manual_vs_autodiff": max(r.manual_vs_autodiff for r in report.rows),
                         "worst_autodiff_vs_numerical": max(r.autodiff_vs_numerical
                                                            for r in report.rows)}

    # L2: the penalty's hand gradient λw (not λ) against autodiff.
    params, _ = fc_net.fc_net((6, 5), 3).init(key, (5, 4))
    l2_error = fn.rel_error(fn.losses.l2.grad(params, 0.1), jax.grad(fn.losses.l2)(params, 0.1))
    print(f"\n== L2 penalty ½λΣw²: hand gradient λw vs jax.grad: rel. error {l2_error:.1e} ==")

    # The notes' max-pool rule against the arg-max rule, on the same small CNN and input.
    pools = {"argmax": fn.max_pool((2, 2)), "copy_to_all": copy_to_all_max_pool((2, 2))}
    pool_reports = {}
    for name, pool in pools.items():
        pool_reports[name] = check(small_cnn(pool), (2, 6, 6, 1), "classes4", fn.losses.softmax_cross_entropy,
                                   False, jax.random.PRNGKey(args.seed + 1), samples=None)
        print(f"\n== max pool backward, {name} rule ==\n{pool_reports[name]}")
    pool_rows = {name: {r.path: r.manual_vs_autodiff for r in rep.rows}
                 for name, rep in pool_reports.items()}

    # Passing means: every network passes, and the check catches the wrong pool rule.
    ok = (all(r["ok"] for r in results.values()) and l2_error < 1e-6
          and pool_reports["argmax"].ok and not pool_reports["copy_to_all"].ok)
    metrics = {"ok": ok, "networks": results, "checks": len(results),
               "passed": sum(r["ok"] for r in results.values()), "l2_rel_error": l2_error,
               "max_pool_argmax_ok": pool_reports["argmax"].ok,
               "max_pool_copy_to_all_ok": pool_reports["copy_to_all"].ok,
               "max_pool_rel_errors": pool_rows}

    fig, ax = common.figure(1, size=(7.5, 0.32 * len(results) + 1.2))
    names = list(results)
    worst = [max(results[n]["worst_manual_vs_autodiff"], 1e-17) for n in names]
    ax[0, 0].barh(names, worst, color=["tab:green" if results[n]["ok"] else "tab:red" for n in names])
    ax[0, 0].set_xscale("log")
    ax[0, 0].set_xlabel("worst relative error, hand formulas vs jax.grad (float64)")
    ax[0, 0].invert_yaxis()
    ax[0, 0].tick_params(axis="y", labelsize=7)
    common.save(fig, args, "gradcheck.png")
    print(f"\n{metrics['passed']} of {metrics['checks']} networks pass; max pool: arg-max rule "
          f"{'passes' if metrics['max_pool_argmax_ok'] else 'FAILS'}, copy-to-all rule "
          f"{'passes' if metrics['max_pool_copy_to_all_ok'] else 'fails'}")
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
