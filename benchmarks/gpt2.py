"""GPT-2: funcnet's `fn.models.gpt2` against Hugging Face's `GPT2LMHeadModel` (PyTorch), in
one process, in four parts (flags choose; default all, in this order):

- `--agreement`: float64 logits, loss and gradients against HF (below); it also runs first
  whenever `--step` or `--generate` does, so nothing is timed against a different network;
- `--step`: the AdamW train step (below);
- `--generate`: tokens/s of `fn.models.generate` (key/value cache) against HF
  `generate(use_cache=True)`, greedy, GPT-2 of dim 256, depth 4, 4 heads, vocab 50257, a
  prompt of 16, 112 new tokens, batch 1 and 8: benchmarks/generate_speed.py's `report` with
  `--model gpt2 --no-recompute` (`--recompute` adds its full-recompute row, slow at this vocab);
- `--attention`: peak memory and step time of causal self-attention, plain against blockwise
  (`block_size` 128), at T = 512, 1024, 2048: benchmarks/attention_memory.py's `report`.
Each part's script also runs alone, with more options.

Agreement: a randomly initialised GPT2LMHeadModel (n_embd 64, n_layer 2, n_head 4, vocab
101, n_positions 32, "gelu_new", no dropout), every parameter then moved off HF's init by
N(0, 0.05²) noise so biases and layer norms matter too, read into funcnet through
`gpt2_params_from_hf`. In float64 (torch double,
JAX x64): logits, loss and every parameter's gradient, from funcnet's autodiff and from the
hand backward (`fn.backprop`), compared by HF name through `gpt2_params_to_hf`, as
max |funcnet − torch| / max |torch| per tensor; they must agree to 1e-10.

The train step: dim 256, depth 4, 4 heads, T 128, batch 8, vocab 512 (a small vocab keeps
the step about the blocks rather than one big output matmul, and keeps the run short), AdamW
(lr 3e-4, weight decay 0.01, on every tensor on both sides), GPT-2's dropout (--dropout,
0.1 by default; 0 turns it off on both sides). Competitors: funcnet with the hand backward
(`fn.with_manual_grads`) and with autodiff, each one jitted `fn.train.make_step`; HF
`GPT2LMHeadModel` in torch eager (its default attention, sdpa) with `torch.optim.AdamW`,
torch threads = the machine's cores (and, when that is more than one, again with one thread:
under load from elsewhere one thread can beat several; the ratio is to the faster torch).
Same initial weights; the first step's losses are checked equal (without dropout) before
timing. One process, interleaved repeats, medians (benchmarks.timing).

    python -m benchmarks.gpt2                     # all four parts
    python -m benchmarks.gpt2 --agreement
    python -m benchmarks.gpt2 --step [--dropout 0.1] [--repeats 7] [--inner 3]
    python -m benchmarks.gpt2 --generate [--recompute] --attention
"""
from __future__ import annotations

import argparse
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from benchmarks import attention_memory, generate_speed
from benchmarks.timing import interleaved

# the agreement check's model (the brief's sizes)
A_VOCAB, A_LEN, A_DIM, A_HEADS, A_DEPTH, A_BATCH, A_T = 101, 32, 64, 4, 2, 3, 32
# the timed train step
VOCAB, MAX_LEN, DIM, HEADS, DEPTH, BATCH, T = 512, 128, 256, 4, 4, 8, 128
LR, WEIGHT_DECAY = 3e-4, 0.01


def hf_model(vocab, max_len, dim, heads, depth, dropout=0.0, attention="sdpa"):
    """A randomly initialised GPT2LMHeadModel of these sizes ("gelu_new", one dropout rate)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=vocab, n_positions=max_len, n_embd=dim, n_layer=depth,
                        n_head=heads, activation_function="gelu_new", resid_pdrop=dropout,
                        embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=0, eos_token_id=0,
                        attn_implementation=attention)
    return GPT2LMHeadModel(config)


def _rel(a, b) -> float:
    """max |a − b| / max |b|: the error relative to the tensor's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _group(name: str) -> str:
    """The HF name without its block number: transformer.h.1.ln_1.weight -> h.*.ln_1.weight."""
    return re.sub(r"^transformer\.h\.\d+\.", "h.*.", name).replace("transformer.", "")


def agreement(tol=1e-10, seed=0) -> dict:
    """{"logits", "loss", group: (autodiff, manual) max relative errors against torch}; raises
    AssertionError past `tol`."""
    import torch
    torch.manual_seed(seed)
    hf = hf_model(A_VOCAB, A_LEN, A_DIM, A_HEADS, A_DEPTH, attention="eager").double().eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, A_VOCAB, (A_BATCH, A_T))
    targets = rng.integers(0, A_VOCAB, (A_BATCH, A_T))
    logits_t = hf(torch.tensor(ids)).logits
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, A_VOCAB),
                                               torch.tensor(targets).reshape(-1))
    loss_t.backward()
    grads_t = {n: p.grad.numpy() for n, p in hf.named_parameters()}

    model = fn.models.gpt2(A_VOCAB, A_LEN, A_DIM, A_HEADS, A_DEPTH)
    loss_fn = fn.losses.softmax_cross_entropy
    with jax.enable_x64(True):
        like, state = jax.eval_shape(lambda k: model.init(k, (1, A_T), jnp.float64),
                                     jax.random.PRNGKey(0))
        params = fn.models.gpt2_params_from_hf(hf.state_dict(), like)  # lm_head.weight included
        logits = model.apply(params, state, ids)[0]
        loss, auto = jax.value_and_grad(lambda p: loss_fn(model.apply(p, state, ids)[0], targets))(params)
        manual, _ = fn.backprop(model, params, state, ids, loss_fn.grad(logits, targets))
        auto, manual = fn.models.gpt2_params_to_hf(auto), fn.models.gpt2_params_to_hf(manual)
    assert list(auto) == list(grads_t), "gpt2_params_to_hf's names are not named_parameters()'s"
    out = {"logits": _rel(logits, logits_t.detach().numpy()),
           "loss": _rel(loss, loss_t.detach().numpy())}
    for name, g in grads_t.items():
        a, m = out.get(_group(name), (0.0, 0.0))
        out[_group(name)] = (max(a, _rel(auto[name], g)), max(m, _rel(manual[name], g)))
    worst = max(max(v) if isinstance(v, tuple) else v for v in out.values())
    assert worst <= tol, f"funcnet and transformers disagree (worst {worst:.1e}): {out}"
    return out


def print_agreement(out):
    print(f"GPT-2 agreement with transformers' GPT2LMHeadModel, float64 (n_embd {A_DIM}, "
          f"n_layer {A_DEPTH}, n_head {A_HEADS}, vocab {A_VOCAB}, batch {A_BATCH}, T {A_T}); "
          f"max |funcnet − torch| / max |torch|")
    print(f"  logits {out['logits']:.1e}   loss {out['loss']:.1e}")
    print("| gradient (HF name) | autodiff | hand backward |\n|---|---|---|")
    for k, v in out.items():
        if isinstance(v, tuple):
            print(f"| {k} | {v[0]:.1e} | {v[1]:.1e} |")


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, VOCAB, (BATCH, T)).astype(np.int32),
            rng.integers(0, VOCAB, (BATCH, T)).astype(np.int32))


def funcnet_runner(manual: bool, dropout: float, x, y):
    """run(n): n jitted AdamW steps; the initial params; the step's compile seconds."""
    model = fn.models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, DEPTH, dropout=dropout)
    model = fn.with_manual_grads(model) if manual else model
    optimizer = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    step = fn.train.make_step(model, optimizer, fn.losses.softmax_cross_entropy, donate=False)
    ts = fn.train.init_train_state(model, optimizer, (BATCH, T), jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    step.lower(ts, x, y).compile()
    compile_s = time.perf_counter() - t0
    box = [ts]

    def run(n):
        for _ in range(n):
            box[0], metrics = step(box[0], x, y)
        jax.block_until_ready(metrics["loss"])

    return run, ts.params, compile_s


def torch_runner(params, dropout: float, x, y):
    """HF GPT2LMHeadModel with funcnet's initial weights, AdamW; run(n) and one step()."""
    import torch
    hf = hf_model(VOCAB, MAX_LEN, DIM, HEADS, DEPTH, dropout)
    weights = {k: torch.tensor(np.asarray(v)) for k, v in fn.models.gpt2_params_to_hf(params).items()}
    hf.load_state_dict(dict(weights, **{"lm_head.weight": weights["transformer.wte.weight"]}))
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, eps=1e-8)
    xt, yt = torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long)

    def step():
        opt.zero_grad()
        logits = hf(xt).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), yt.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    def run(n):
        for _ in range(n):
            step()

    return run, step


def _one_thread(torch, run, threads):
    def one(n):
        torch.set_num_threads(1)
        run(n)
        torch.set_num_threads(threads)
    return one


def first_losses_agree(x, y):
    """Without dropout, from the same weights, funcnet's loss and torch's first step's loss
    are equal (float32): the competitors compute the same thing."""
    model = fn.models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, DEPTH)
    params, state = model.init(jax.random.PRNGKey(1), (1, T))
    ref = float(fn.losses.softmax_cross_entropy(model.apply(params, state, x)[0], y))
    _, step = torch_runner(params, 0.0, x, y)
    got = float(step().detach())
    assert abs(got - ref) < 1e-4 * max(1.0, abs(ref)), (got, ref)
    return ref, got


def train_step(args):
    """The timed train step's table (HF's first loss checked equal first); the medians."""
    import torch
    torch.set_num_threads(os.cpu_count())
    x, y = data()
    ref, got = first_losses_agree(x, y)
    print(f"\nfirst step's loss without dropout: funcnet {ref:.6f}, torch {got:.6f}")
    manual, params, c_manual = funcnet_runner(True, args.dropout, x, y)
    auto, _, c_auto = funcnet_runner(False, args.dropout, x, y)
    torch_run, _ = torch_runner(params, args.dropout, x, y)
    threads = torch.get_num_threads()
    runners = {"funcnet hand backward": manual, "funcnet autodiff": auto,
               f"HF GPT2LMHeadModel, torch eager ({threads} threads)": torch_run}
    if threads > 1:  # under load from elsewhere, one thread can beat several fighting for cores
        runners["HF GPT2LMHeadModel, torch eager (1 thread)"] = _one_thread(torch, torch_run, threads)
    times = interleaved(runners, repeats=args.repeats, inner=args.inner)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    base = min(v for k, v in med.items() if "torch" in k)
    print(f"\nGPT-2 train step (AdamW), dim {DIM}, depth {DEPTH}, {HEADS} heads, T {T}, batch "
          f"{BATCH}, vocab {VOCAB}, dropout {args.dropout}; ms/step median [min–max] over "
          f"{args.repeats} repeats of {args.inner}")
    print("| competitor | ms/step | × best torch |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.1f} [{min(v) * 1e3:.1f}–{max(v) * 1e3:.1f}] | {base / med[k]:.2f} |")
    print(f"jit compile s: hand backward {c_manual:.1f}, autodiff {c_auto:.1f}; "
          f"torch {torch.__version__}, jax {jax.__version__}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    return med


PARTS = ("agreement", "step", "generate", "attention")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpt2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for part in PARTS:
        p.add_argument(f"--{part}", action="store_true", help="run this part (default: all)")
    p.add_argument("--dropout", type=float, default=0.1, help="the train step's (default %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="the train step's (default %(default)s)")
    p.add_argument("--inner", type=int, default=3, help="the train step's (default %(default)s)")
    p.add_argument("--recompute", action="store_true",
                   help="--generate: add the full-recompute row (slow at vocab 50257)")
    args = p.parse_args(argv)
    run = {part for part in PARTS if getattr(args, part)} or set(PARTS)
    out = {}
    if run & {"agreement", "step", "generate"}:  # HF is the reference: check it is the same net
        print_agreement(agreement())
    if "step" in run:
        out["step"] = train_step(args)
    if "generate" in run:
        print("\n## GPT-2 generation: fn.models.generate against HF generate(use_cache=True)")
        gen = ["--model", "gpt2"] + ([] if args.recompute else ["--no-recompute"])
        out["generate"] = generate_speed.report(generate_speed.parser().parse_args(gen))
    if "attention" in run:
        print("\n## Attention memory and time, plain against blockwise (block_size)")
        attention_memory.report(attention_memory.parser().parse_args([]))
    return out


if __name__ == "__main__":
    main()
