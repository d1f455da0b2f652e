"""Generation speed: tokens/s of `fn.models.generate` (key/value cache, one compiled program)
against a full recompute and Hugging Face's GPT-2 on torch CPU, greedy, same sizes.

Workload: `fn.models.transformer(vocab, max_len=128, dim=256, num_heads=4, depth=4)` at its
init (`--model gpt2`: `fn.models.gpt2` of the same sizes, tied head), a prompt of 16 random
ids, 112 new tokens (128 positions), batch 1 and 8.

- funcnet generate: `fn.models.generate(..., temperature=0)`, the prompt in one chunk, then
  a scan of single-token steps over the caches.
- full recompute: the same model's full forward over a padded (batch, 128) buffer at every
  step, argmax at the last filled position, written into the buffer: one jitted program (a
  fori_loop of 112 forwards), the cost without a cache.
- HF generate: `GPT2LMHeadModel.generate(use_cache=True, do_sample=False)`, exactly 112
  new tokens, torch CPU, when torch and transformers import (the `bench` extra). The GPT-2
  is the same network with the same weights: GPT2Config(n_embd=256, n_layer=4, n_head=4,
  n_positions=128, activation "gelu" (exact, as funcnet's), untied head); funcnet's head
  bias is zero at init, so GPT-2's bias-free head computes the same logits. With `--model
  gpt2` it is GPT-2 itself ("gelu_new", tied head), its weights from
  `fn.models.gpt2_params_to_hf`. Greedy tokens are compared before anything is timed
  (agreement printed; float32 near-ties may differ).

Competitors run in one process, interleaved (benchmarks.timing), after a warm-up; medians
[min–max] over the repeats of one whole generation each; ratios are funcnet generate's
tokens/s over the competitor's.

    python -m benchmarks.generate_speed [--model transformer|gpt2] [--repeats 3]
        [--vocab 50257] [--batches 1 8] [--no-recompute]

The full recompute is the slow one (at vocab 50257, batch 8: ~3.7 TFLOP per generation, the
logits of all 128 positions at each of 112 steps); `--vocab 8192`, `--batches 1` or
`--no-recompute` for a shorter run. benchmarks/gpt2.py runs this (`report`) for GPT-2.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from benchmarks.timing import interleaved

MAX_LEN, DIM, HEADS, DEPTH, PROMPT, NEW = 128, 256, 4, 4, 16, 112


MODELS = {"transformer": fn.models.transformer, "gpt2": fn.models.gpt2}


def build(vocab, kind="transformer"):
    model = MODELS[kind](vocab, MAX_LEN, DIM, HEADS, DEPTH)
    params, state = model.init(jax.random.PRNGKey(0), (1, MAX_LEN))
    return model, params, state


def prompt_ids(vocab, batch, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, (batch, PROMPT)).astype(np.int32)


def funcnet_runner(model, params, prompt):
    """run(n): n greedy generations; the first's ids; the first call's seconds (compile)."""
    key = jax.random.PRNGKey(0)

    def once():
        return fn.models.generate(model, params, prompt, NEW, key=key, temperature=0)

    t0 = time.perf_counter()
    ids = jax.block_until_ready(once())
    return _loop(once), np.asarray(ids), time.perf_counter() - t0


def recompute_runner(model, params, state, prompt):
    """The full forward over the padded buffer each step, one jitted program."""
    @jax.jit
    def program(params, prompt):
        buffer = jnp.zeros((prompt.shape[0], PROMPT + NEW), jnp.int32).at[:, :PROMPT].set(prompt)

        def step(t, buffer):
            logits = model.apply(params, state, buffer)[0]
            token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t - 1, 1, keepdims=False), -1)
            return buffer.at[:, t].set(token.astype(jnp.int32))

        return jax.lax.fori_loop(PROMPT, PROMPT + NEW, step, buffer)

    t0 = time.perf_counter()
    ids = jax.block_until_ready(program(params, prompt))
    return _loop(lambda: program(params, prompt)), np.asarray(ids), time.perf_counter() - t0


def _loop(once):
    def run(n):
        for _ in range(n):
            out = once()
        jax.block_until_ready(out)
    return run


def hf_model(params, vocab, kind="transformer"):
    """GPT2LMHeadModel holding funcnet's transformer or gpt2 weights (module docstring)."""
    import torch
    if kind == "gpt2":
        from benchmarks.gpt2 import hf_model as hf_gpt2  # imported here: gpt2.py imports this
        hf = hf_gpt2(vocab, MAX_LEN, DIM, HEADS, DEPTH).eval()
        sd = {k: torch.tensor(np.asarray(v)) for k, v in fn.models.gpt2_params_to_hf(params).items()}
        hf.load_state_dict(dict(sd, **{"lm_head.weight": sd["transformer.wte.weight"]}))
        return hf
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=vocab, n_positions=MAX_LEN, n_embd=DIM, n_layer=DEPTH,
                        n_head=HEADS, activation_function="gelu", layer_norm_epsilon=1e-5,
                        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(config).eval()
    p = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a)), params)
    sd = {"transformer.wte.weight": p[0]["w"], "transformer.wpe.weight": p[1]["w"],
          "transformer.ln_f.weight": p[-2]["gamma"], "transformer.ln_f.bias": p[-2]["beta"],
          "lm_head.weight": p[-1]["w"].T}
    assert not np.asarray(params[-1]["b"]).any()  # a zero head bias: GPT-2's head has none
    for i in range(DEPTH):
        (_, (att, _), _), (_, (mlp, _), _) = p[2 + 2 * i], p[3 + 2 * i]
        h = f"transformer.h.{i}."
        sd.update({h + "ln_1.weight": att[0]["gamma"], h + "ln_1.bias": att[0]["beta"],
                   h + "attn.c_attn.weight": att[1]["w_qkv"], h + "attn.c_attn.bias": att[1]["b_qkv"],
                   h + "attn.c_proj.weight": att[1]["w_o"], h + "attn.c_proj.bias": att[1]["b_o"],
                   h + "ln_2.weight": mlp[0]["gamma"], h + "ln_2.bias": mlp[0]["beta"],
                   h + "mlp.c_fc.weight": mlp[1]["w"], h + "mlp.c_fc.bias": mlp[1]["b"],
                   h + "mlp.c_proj.weight": mlp[3]["w"], h + "mlp.c_proj.bias": mlp[3]["b"]})
    missing = hf.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=False).missing_keys
    assert not [k for k in missing if not k.endswith("attn.bias")], missing  # only causal masks
    return hf


def hf_runner(hf, prompt):
    import torch
    ids = torch.tensor(prompt, dtype=torch.long)
    mask = torch.ones_like(ids)

    def once():
        with torch.no_grad():
            return hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                               do_sample=False, use_cache=True, pad_token_id=0)

    t0 = time.perf_counter()
    out = once().numpy()
    assert out.shape == (prompt.shape[0], PROMPT + NEW)

    def run(n):
        for _ in range(n):
            once()
    return run, out, time.perf_counter() - t0


def _with_threads(run, k):
    import torch

    def run_k(n):
        threads = torch.get_num_threads()
        torch.set_num_threads(k)
        try:
            run(n)
        finally:
            torch.set_num_threads(threads)
    return run_k


def agreement(a, b) -> str:
    """How many rows agree token for token, and the first position where any row differs."""
    same = (a[:, PROMPT:] == b[:, PROMPT:]).all(1)
    diff = np.nonzero((a[:, PROMPT:] != b[:, PROMPT:]).any(0))[0]
    first = f", first difference at new token {diff[0]}" if len(diff) else ""
    return f"{int(same.sum())}/{len(same)} rows identical{first}"


def competitors(batch, model, params, state, vocab, hf, recompute=True):
    prompt = prompt_ids(vocab, batch)
    runners, ids, first_s = {}, {}, {}
    makers = {"funcnet generate (cache)": lambda: funcnet_runner(model, params, prompt),
              "full recompute (jit, padded)": lambda: recompute_runner(model, params, state, prompt)}
    for name, make in list(makers.items())[:2 if recompute else 1]:
        runners[name], ids[name], first_s[name] = make()
    if hf is not None:
        import torch
        threads = torch.get_num_threads()
        name = f"HF GPT2LMHeadModel.generate (torch CPU, {threads} threads)"
        runners[name], ids[name], first_s[name] = hf_runner(hf, prompt)
        if threads > 1:  # under load, one thread can beat two fighting for the cores
            one = "HF GPT2LMHeadModel.generate (torch CPU, 1 thread)"
            runners[one], first_s[one] = _with_threads(runners[name], 1), float("nan")
    ours = ids["funcnet generate (cache)"]
    for name in list(ids)[1:]:
        print(f"  batch {batch}: funcnet generate vs {name}: {agreement(ours, ids[name])}")
    return runners, first_s


def parser():
    p = argparse.ArgumentParser(prog="python -m benchmarks.generate_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="transformer")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=50257, help="GPT-2's by default")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-recompute", dest="recompute", action="store_false",
                   help="leave the full recompute out (the slow competitor)")
    return p


def report(args):
    """Measure and print the table for parsed `args` (see `parser`); returns its rows."""
    model, params, state = build(args.vocab, args.model)
    try:
        import torch
        hf = hf_model(params, args.vocab, args.model)
        note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        hf, note = None, "torch/transformers not installed: no HF column"
    print(f"{args.model} vocab {args.vocab}, dim {DIM}, depth {DEPTH}, {HEADS} heads; prompt {PROMPT}, "
          f"{NEW} new tokens, greedy; jax {jax.__version__}; {note}")
    rows = []
    for batch in args.batches:
        runners, first_s = competitors(batch, model, params, state, args.vocab, hf, args.recompute)
        # each runner has run once already (its compile, and the agreement check): the warm-up
        times = interleaved(runners, repeats=args.repeats, inner=1, warmup=0)
        rows += [(batch, name, times[name], first_s[name]) for name in runners]
    print(f"\ntokens/s = batch × {NEW} / seconds per generation; median [min–max] over "
          f"{args.repeats} interleaved repeats; × = funcnet generate's tokens/s over the row's")
    print("| batch | competitor | s / generation | tokens/s | × | first call s |\n|---|---|---|---|---|---|")
    for batch, name, t, first in rows:
        ours = next(np.median(v) for b, n, v, _ in rows if b == batch and n.startswith("funcnet"))
        med = float(np.median(t))
        print(f"| {batch} | {name} | {med:.3f} [{min(t):.3f}–{max(t):.3f}] | {batch * NEW / med:,.0f} | "
              f"{med / ours:.2f} | {'' if first != first else f'{first:.1f}'} |")
    return rows


def main(argv=None):
    return report(parser().parse_args(argv))


if __name__ == "__main__":
    main()
