"""GPT-2 against the untied transformer on characters: the char_model study's text, splits,
bits/char and training loop (imported from experiments/char_model.py), with
`fn.models.gpt2` (Radford et al. 2019: the output layer tied to the token table through
`fn.share`, tanh GELU, dropout 0.1 at GPT-2's four places, its init) beside
`fn.models.transformer` of the same width, depth, heads and context (untied: its own
output dense layer with a bias, so it has dim·vocab + vocab more parameters; no dropout).

Both train the same number of AdamW steps (warm-up, cosine decay, clipping at norm 1,
weight decay 0.01) on the same batch size of random windows of T characters (each model
draws its own, from its own seed), on the hand-derived backward (`fn.with_manual_grads`).
Validation bits/char = mean cross-entropy / ln 2 over every position of every
non-overlapping validation window of T characters (the curve: a fixed 256 of them).

Samples come from `fn.models.generate` (the key/value cache, one compiled program) at
temperature 0.8 after a fixed prompt, T − len(prompt) characters (the positions the model
has), printed and written to samples.txt. Generation speed, on the trained GPT-2: the same
number of new characters after the same prompt, by `generate` (cache: each new character
runs one position through the model) and by char_model's sampler (full recompute: the whole
window of T through the model for every character, one jitted `lax.scan`); tokens/s from
the median of interleaved repeats after a warm-up call each (compilation left out).

The machine is shared: the load average before and after goes into metrics.json, and when
it is above the core count the times are upper bounds.

`--quick` trains tiny versions of both models (dim 32, one block, T 32, 60 steps): a few
seconds once compiled, for tests/test_experiments.py.
"""
from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np

import funcnet as fn
from experiments import char_model, common

NAME = "gpt2_char"
MODELS = ("gpt2", "transformer")
TARGET = 1.70  # GPT-2's validation bits/char target (issue 24)


def add_arguments(p):
    p.add_argument("--context", type=int, default=64, help="window length T (default %(default)s)")
    p.add_argument("--dim", type=int, default=128, help="width (default %(default)s)")
    p.add_argument("--depth", type=int, default=2, help="blocks (default %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default %(default)s)")
    p.add_argument("--steps", type=int, default=4500, help="updates per model (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--dropout", type=float, default=0.1,
                   help="GPT-2's dropout rate (the transformer has none; default %(default)s)")
    p.add_argument("--eval-every", type=int, default=500, help="(default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="(default %(default)s)")
    p.add_argument("--prompt", default="The ", help="(default %(default)r)")
    p.add_argument("--speed-repeats", type=int, default=5,
                   help="interleaved repeats of each generation timed (default %(default)s)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated, of gpt2 and transformer (default %(default)s)")


def configuration(args) -> dict:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        raise fn.FuncnetError(f"gpt2_char: --models takes gpt2 and/or transformer, got "
                              f"{args.models!r}")
    shared = {"temperature": args.temperature, "prompt": args.prompt, "models": models,
              "dropout": args.dropout}
    if args.quick:
        cfg = {"context": 32, "dim": 32, "depth": 1, "heads": 2, "steps": 60, "batch_size": 16,
               "lr": 1e-2, "eval_every": 30, "speed_repeats": 5, **shared}
    else:
        keys = ("context", "dim", "depth", "heads", "steps", "batch_size", "lr", "eval_every",
                "speed_repeats")
        cfg = {**{k: getattr(args, k) for k in keys}, **shared}
    cfg["sample_length"] = cfg["context"] - len(args.prompt)  # generate fills the positions
    if cfg["sample_length"] < 1:
        raise fn.FuncnetError(f"gpt2_char: the prompt ({len(args.prompt)} characters) must be "
                              f"shorter than --context={cfg['context']}")
    return cfg


def build(name: str, cfg: dict, vocab_size: int):
    """GPT-2 (tied, dropout) or the untied transformer, of the same sizes."""
    sizes = (vocab_size, cfg["context"], cfg["dim"], cfg["heads"], cfg["depth"])
    if name == "gpt2":
        return fn.models.gpt2(*sizes, dropout=cfg["dropout"])
    return fn.models.transformer(*sizes)


# ----------------------------------------------------------------------------- generation

def generate_text(model, params, vocab, prompt, n, *, temperature, seed) -> str:
    """n characters after `prompt` from `fn.models.generate` (the key/value cache)."""
    ids = np.array([[vocab.index(c) for c in prompt]], np.int32)
    out = fn.models.generate(model, params, ids, n, key=jax.random.PRNGKey(seed),
                             temperature=temperature)
    return "".join(vocab[i] for i in np.asarray(out)[0, len(prompt):])


def generation_speed(model, params, state, vocab, cfg, seed) -> dict:
    """Tokens/s of the same model generating the same number of characters after the same
    prompt: with the cache (`generate`) and by full recompute (char_model.sample). Each is
    called once first (its compilation, timed apart), then the two alternate."""
    n, prompt, T = cfg["sample_length"], cfg["prompt"], cfg["context"]
    ways = {"cache": lambda: generate_text(model, params, vocab, prompt, n,
                                           temperature=cfg["temperature"], seed=seed),
            "recompute": lambda: char_model.sample(model, params, state, vocab, prompt, n,
                                                   context=T, temperature=cfg["temperature"],
                                                   seed=seed)}
    first, times = {}, {name: [] for name in ways}
    for name, once in ways.items():
        start = time.perf_counter()
        assert len(once()) == n  # a str: the ids are on the host, the work is done
        first[name] = round(time.perf_counter() - start, 3)
    for _ in range(cfg["speed_repeats"]):
        for name, once in ways.items():
            start = time.perf_counter()
            once()
            times[name].append(time.perf_counter() - start)
    out = {"new_tokens": n, "prompt": prompt, "first_call_seconds": first,
           "seconds": {k: [round(t, 5) for t in v] for k, v in times.items()}}
    for name, v in times.items():
        out[f"{name}_tokens_per_s"] = n / statistics.median(v)
    out["speedup"] = out["cache_tokens_per_s"] / out["recompute_tokens_per_s"]
    return out


# ----------------------------------------------------------------------------- study

def plot(args, runs, base):
    fig, ax = common.figure(2, size=(4.8, 3.4))
    for name, r in runs.items():
        label = f"{name} ({r['params']:,} params)"
        ax[0, 0].plot(r["curve"]["step"], r["curve"]["val_bits"], "o-", ms=3, label=label)
        ax[0, 1].plot(r["curve"]["train_seconds"], r["curve"]["val_bits"], "o-", ms=3, label=label)
    for a, xlabel in zip(ax[0], ("step", "training seconds (2 shared CPU cores)")):
        for b, style in (("unigram", ":"), ("bigram", "--")):
            a.axhline(base[b], color="gray", ls=style, lw=1, label=f"{b} {base[b]:.2f}")
        a.axhline(TARGET, color="red", lw=0.8, alpha=0.5, label=f"target {TARGET}")
        a.set(xlabel=xlabel, ylabel="validation bits/char", ylim=(1, max(base["unigram"] + 0.5, 5)))
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax[0, 0].set_title("GPT-2 vs transformer, pydoc_data.topics characters")
    common.save(fig, args, "learning_curve.png")


def save_samples(args, cfg, samples):
    path = args.out / "samples.txt"
    path.write_text("".join(f"--- {name} (fn.models.generate, temperature {cfg['temperature']}) "
                            f"---\n{cfg['prompt']}{text}\n" for name, text in samples.items()))
    print(f"wrote {path}")


def train_one(name, model, cfg, train, evals, vocab, key, args):
    """Train (char_model.train_model), then sample with generate: (train state, run record,
    sample). The wall time covers compilation, training, evaluation and sampling."""
    start = time.perf_counter()
    ts, run = char_model.train_model(model, cfg, train, evals, key, args.progress, name)
    with common.timed(run, "sample_seconds"):
        text = generate_text(model, ts.params, vocab, cfg["prompt"], cfg["sample_length"],
                             temperature=cfg["temperature"], seed=args.seed)
    run["wall_seconds"] = round(time.perf_counter() - start, 2)
    print(f"{name}: {run['params']:,} params, validation {run['val_bits']:.3f} bits/char after "
          f"{run['steps']} steps ({run['train_seconds']:.0f} s training, {run['wall_seconds']:.0f} s "
          f"wall in all)\n--- sample (temperature {cfg['temperature']}) ---\n"
          f"{cfg['prompt']}{text}\n---", flush=True)
    return ts, run, text


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    load_before = os.getloadavg()
    cfg = configuration(args)
    text, vocab, ids = char_model.load_text()
    train, val = char_model.split(ids)
    base = char_model.baselines(train, val, len(vocab))
    T, V = cfg["context"], len(vocab)
    full = char_model.validation_windows(val, T)
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(len(full[0]), min(char_model.EVAL_SAMPLE, len(full[0])), replace=False))
    evals = {"full": full, "curve": (full[0][rows], full[1][rows])}
    print(f"{len(text)} characters, {V} symbols; validation bits/char: unigram "
          f"{base['unigram']:.3f}, bigram {base['bigram']:.3f}; load average "
          f"{load_before[0]:.1f} on {os.cpu_count()} cores")
    key = jax.random.PRNGKey(args.seed)
    runs, samples, speed = {}, {}, None
    for i, name in enumerate(cfg["models"]):
        model = build(name, cfg, V)
        ts, runs[name], samples[name] = train_one(name, model, cfg, train, evals, vocab,
                                                  jax.random.fold_in(key, i), args)
        if name == "gpt2":
            speed = generation_speed(model, ts.params, ts.state, vocab, cfg, args.seed)
            print(f"generation, {speed['new_tokens']} new characters: cache "
                  f"{speed['cache_tokens_per_s']:,.0f} tokens/s, full recompute "
                  f"{speed['recompute_tokens_per_s']:,.0f} tokens/s ({speed['speedup']:.1f}x)")
    plot(args, runs, base)
    save_samples(args, cfg, samples)
    load_after = os.getloadavg()
    gpt2 = runs.get("gpt2")
    return common.write_metrics(args, {
        "characters": len(text), "vocab_size": V, "train_characters": len(train),
        "validation_characters": len(val), "validation_windows": len(full[0]),
        "baselines": base, "config": cfg, "target_bits": TARGET,
        "params": {name: r["params"] for name, r in runs.items()},
        "val_bits": {name: r["val_bits"] for name, r in runs.items()},
        "gpt2_meets_target": (None if gpt2 is None else
                              bool(gpt2["val_bits"] <= TARGET and gpt2["wall_seconds"] < 600)),
        "samples": samples, "generation_speed": speed,
        "load_average": {"before": load_before, "after": load_after, "cores": os.cpu_count()},
        "times_are_upper_bounds": max(load_before[0], load_after[0]) > (os.cpu_count() or 1),
        "runs": runs})


if __name__ == "__main__":
    common.cli(main)
