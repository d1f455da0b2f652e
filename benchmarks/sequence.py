"""LSTM train step: funcnet (autodiff, and the hand BPTT through with_manual_grads) against
torch.nn.LSTM on CPU, with the same weights, data and optimizer (SGD, η 0.01).

Workload: batch 64, 28 steps of 28 features, LSTM 28 → 128, its last h to dense(10),
softmax cross-entropy (the sequence experiment's classifier). Competitors run in one
process, interleaved (benchmarks.timing). Also records the jit compile time of the
manual step at T = 28 and T = 112: a lax.scan keeps it flat in T.

    python -m benchmarks.sequence [--repeats 7] [--inner 10]
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import funcnet as fn
from benchmarks.timing import interleaved

BATCH, T, D, H, CLASSES = 64, 28, 28, 128, 10
LR = 0.01


def data(t=T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, t, D)).astype(np.float32), \
        rng.integers(0, CLASSES, BATCH).astype(np.int32)


def funcnet_runner(manual: bool, x, y, t=T):
    """run(n): n jitted train steps; the initial params; the step's compile seconds."""
    model = fn.models.lstm_classifier(CLASSES, H)
    model = fn.with_manual_grads(model) if manual else model
    optimizer = optax.sgd(LR)
    step = fn.train.make_step(model, optimizer, fn.losses.softmax_cross_entropy, donate=False)
    ts = fn.train.init_train_state(model, optimizer, (BATCH, t, D), jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    step.lower(ts, x, y).compile()
    compile_s = time.perf_counter() - t0
    box = [ts]

    def run(n):
        for _ in range(n):
            box[0], metrics = step(box[0], x, y)
        jax.block_until_ready(metrics["loss"])

    return run, ts.params, compile_s


def torch_runner(params, x, y):
    """The same network in PyTorch (gate order i, f, g, o; weight_ih = W_xᵀ), SGD η 0.01."""
    import torch
    p_lstm, p_dense = (jax.tree_util.tree_map(np.asarray, p) for p in params)
    order = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]
    lstm = torch.nn.LSTM(D, H, batch_first=True)
    head = torch.nn.Linear(H, CLASSES)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.tensor(p_lstm["w_x"][:, order].T))
        lstm.weight_hh_l0.copy_(torch.tensor(p_lstm["w_h"][:, order].T))
        lstm.bias_ih_l0.copy_(torch.tensor(p_lstm["b"][order]))
        lstm.bias_hh_l0.zero_()
        head.weight.copy_(torch.tensor(p_dense["w"].T))
        head.bias.copy_(torch.tensor(p_dense["b"]))
    opt = torch.optim.SGD(list(lstm.parameters()) + list(head.parameters()), lr=LR)
    xt, yt = torch.tensor(x), torch.tensor(y, dtype=torch.long)

    def step():
        opt.zero_grad()
        out, _ = lstm(xt)
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), yt)
        loss.backward()
        opt.step()
        return loss

    def run(n):
        for _ in range(n):
            step()

    return run, step


ATT_B, ATT_T, ATT_D, ATT_HEADS = 16, 128, 128, 4


def attention_runners(x, target):
    """Causal self-attention block (mse to a target), funcnet autodiff / manual and the
    same block in torch with F.scaled_dot_product_attention(is_causal=True)."""
    import torch
    layer = fn.self_attention(ATT_HEADS, causal=True)
    runners = {}
    for manual in (False, True):
        model = fn.with_manual_grads(layer) if manual else layer
        step = fn.train.make_step(model, optax.sgd(LR), fn.losses.mse, donate=False)
        ts = fn.train.init_train_state(model, optax.sgd(LR), x.shape, jax.random.PRNGKey(0))
        step.lower(ts, x, target).compile()
        runners["funcnet " + ("manual" if manual else "autodiff")] = _jax_loop(step, ts, x, target)
    p = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a)), ts.params)
    w_in, b_in = p["w_qkv"].T.clone().requires_grad_(), p["b_qkv"].clone().requires_grad_()
    w_o, b_o = p["w_o"].T.clone().requires_grad_(), p["b_o"].clone().requires_grad_()
    opt = torch.optim.SGD([w_in, b_in, w_o, b_o], lr=LR)
    xt, tt = torch.tensor(x), torch.tensor(target)
    F = torch.nn.functional

    def forward():
        q, k, v = F.linear(xt, w_in, b_in).split(ATT_D, -1)
        q, k, v = (a.unflatten(-1, (ATT_HEADS, -1)).transpose(1, 2) for a in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.linear(o.transpose(1, 2).flatten(2), w_o, b_o)

    with torch.no_grad():  # the same block: outputs agree before any step
        np.testing.assert_allclose(forward().numpy(), np.asarray(layer.apply(ts.params, {}, x)[0]),
                                   rtol=1e-4, atol=1e-5)

    def run(n):
        for _ in range(n):
            opt.zero_grad()
            F.mse_loss(forward(), tt).backward()
            opt.step()

    runners["torch block with sdpa"] = run
    return runners


def _jax_loop(step, ts, x, y):
    box = [ts]

    def run(n):
        for _ in range(n):
            box[0], metrics = step(box[0], x, y)
        jax.block_until_ready(metrics["loss"])

    return run


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.sequence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=10)
    args = p.parse_args(argv)
    x, y = data()
    auto, params, c_auto = funcnet_runner(False, x, y)
    manual, _, c_manual = funcnet_runner(True, x, y)
    runners = {"funcnet autodiff": auto, "funcnet manual BPTT": manual}
    try:
        import torch
        from .torch_agreement import check
        print("torch agreement (max |diff|):", check())
        torch_run, torch_step = torch_runner(params, x, y)
        first = float(torch_step().detach())
        ref = float(fn.losses.softmax_cross_entropy(
            fn.models.lstm_classifier(CLASSES, H).apply(params, ({}, {}), x)[0], y))
        assert abs(first - ref) < 1e-4 * max(1, abs(ref)), (first, ref)  # same network
        threads = torch.get_num_threads()

        def with_threads(k):
            def run(n):  # under load, one thread can beat two fighting for the cores
                torch.set_num_threads(k)
                torch_run(n)
                torch.set_num_threads(threads)
            return run

        runners[f"torch.nn.LSTM ({threads} threads)"] = torch_run
        if threads > 1:
            runners["torch.nn.LSTM (1 thread)"] = with_threads(1)
    except ImportError:
        pass
    times = interleaved(runners, repeats=args.repeats, inner=args.inner)
    _, _, c_long = funcnet_runner(True, *data(4 * T), t=4 * T)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    print(f"LSTM train step, batch {BATCH}, {T} steps, {D} → {H}, dense({CLASSES}), SGD; "
          f"ms/step median [min–max] over {args.repeats} repeats of {args.inner}")
    print("| competitor | ms/step | × best torch |\n|---|---|---|")
    base = min((v for k, v in med.items() if k.startswith("torch")), default=None)
    for k, v in times.items():
        ratio = f"{base / med[k]:.2f}" if base else ""
        print(f"| {k} | {med[k]:.2f} [{min(v) * 1e3:.2f}–{max(v) * 1e3:.2f}] | {ratio} |")
    print(f"manual / autodiff speed ratio: {med['funcnet autodiff'] / med['funcnet manual BPTT']:.2f}")
    print(f"jit compile s: autodiff {c_auto:.2f}, manual {c_manual:.2f} at T={T}; "
          f"manual {c_long:.2f} at T={4 * T}")
    rng = np.random.default_rng(1)
    xa, ta = (rng.standard_normal((ATT_B, ATT_T, ATT_D)).astype(np.float32) for _ in range(2))
    att = interleaved(attention_runners(xa, ta), repeats=args.repeats, inner=args.inner)
    att_med = {k: float(np.median(v)) * 1e3 for k, v in att.items()}
    print(f"\ncausal self-attention block, batch {ATT_B}, T {ATT_T}, dim {ATT_D}, {ATT_HEADS} heads")
    for k, v in att.items():
        print(f"| {k} | {att_med[k]:.2f} [{min(v) * 1e3:.2f}–{max(v) * 1e3:.2f}] | "
              f"{att_med['torch block with sdpa'] / att_med[k]:.2f} |")
    return med, att_med


if __name__ == "__main__":
    main()
