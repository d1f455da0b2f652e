"""Character-level language model on the Python reference manual's text that ships with
Python itself (`pydoc_data.topics.topics`, the dict's values joined in sorted-key order:
≈ 465,000 characters, 103 distinct symbols). The vocabulary is built from the whole text;
the first 90 % trains, the last 10 % validates.

Baselines, fitted on the training part and scored on the validation part (both with
add-one (Laplace) smoothing, so a character or pair never seen in training still gets a
finite cost): the unigram model p(c) ≈ 4.67 bits/char, the bigram model p(c | previous c)
≈ 3.35 bits/char. (Validation pairs are taken inside the validation part only.)

Two models of about the same size are trained on random windows of T characters (the
targets: the same window shifted one character on), on the hand-derived backward
formulas (`fn.with_manual_grads`), AdamW with warm-up and cosine decay, the same number of
steps of the same batch size (each model draws its own random windows, from its own seed):

- `fn.models.transformer(vocab, T, dim, heads, depth)`: the decoder-only (GPT-style)
  model, pre-norm causal self-attention and gelu MLP blocks;
- embedding - lstm - time_distributed(dense): an LSTM language model.

Validation bits/char = mean cross-entropy (nats) / ln 2 over every position of every
non-overlapping validation window of T characters (the learning curve uses a fixed sample
of 256 of them). Text is sampled from each by a jitted `lax.scan`: a window of T ids is
rolled forward one character per step, the model run on it, and the next character drawn
from softmax(logits / temperature) at the last filled position (a causal model's output
there does not depend on the not-yet-filled positions after it).

`--quick` trains only a tiny transformer (dim 32, one block, T 32) for 60 steps: a few
seconds once compiled, for tests/test_experiments.py.
"""
from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "char_model"
EVAL_SAMPLE = 256  # validation windows scored at every point of the learning curve


def add_arguments(p):
    p.add_argument("--context", type=int, default=64, help="window length T (default %(default)s)")
    p.add_argument("--dim", type=int, default=128, help="transformer width (default %(default)s)")
    p.add_argument("--depth", type=int, default=2, help="transformer blocks (default %(default)s)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default %(default)s)")
    p.add_argument("--hidden", type=int, default=288,
                   help="LSTM units, about the transformer's parameter count (default %(default)s)")
    p.add_argument("--steps", type=int, default=1500, help="updates per model (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=100, help="(default %(default)s)")
    p.add_argument("--sample-length", type=int, default=300, help="(default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="(default %(default)s)")
    p.add_argument("--prompt", default="The ", help="(default %(default)r)")
    p.add_argument("--models", default=None,
                   help="comma-separated, of transformer and lstm (default: both; with "
                        "--quick only the transformer, as each model's compilations take "
                        "most of a quick run)")


# ----------------------------------------------------------------------------- data

def load_text():
    """(text, vocabulary string, ids of the whole text as int32)."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    vocab = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocab)) + 1, np.int32)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    ids = lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
    return text, vocab, ids


def split(ids, train_fraction=0.9):
    n = int(len(ids) * train_fraction)
    return ids[:n], ids[n:]


def baselines(train, val, vocab_size) -> dict:
    """Validation bits/char of the add-one-smoothed unigram and bigram models."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0
    unigram = -np.mean(np.log2(counts[val] / counts.sum()))
    pairs = np.ones((vocab_size, vocab_size))
    np.add.at(pairs, (train[:-1], train[1:]), 1)
    bigram = -np.mean(np.log2(pairs[val[:-1], val[1:]] / pairs[val[:-1]].sum(1)))
    return {"unigram": float(unigram), "bigram": float(bigram), "smoothing": "add-one (Laplace)"}


def windows(ids, starts, T):
    """Inputs ids[s : s+T] and targets ids[s+1 : s+T+1] for every start s."""
    idx = np.asarray(starts)[:, None] + np.arange(T)
    return ids[idx], ids[idx + 1]


def validation_windows(val, T):
    """Every non-overlapping window of the validation part (inputs, targets)."""
    return windows(val, np.arange(0, len(val) - T - 1, T), T)


# ----------------------------------------------------------------------------- models

def lstm_model(vocab_size, hidden, embed=64):
    """embedding - lstm - dense at every step: the LSTM language model."""
    return fn.serial(fn.embedding(vocab_size, embed, w_init=fn.initializers.gaussian(0.1)),
                     fn.lstm(hidden), fn.time_distributed(fn.dense(vocab_size)))


def bits(model, params, state, data, compute_dtype=None) -> float:
    """Mean cross-entropy over every position of data = (inputs, targets), in bits/char."""
    return fn.train.evaluate(model, params, state, *data, batch_size=EVAL_SAMPLE,
                             compute_dtype=compute_dtype)["loss"] / math.log(2)


def count_params(params) -> int:
    return sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))


def train_model(model, cfg, train, evals, key, progress=True, label="", compute_dtype=None):
    """AdamW (warm-up, cosine decay, clipping at norm 1) on random windows; the learning
    curve (validation bits/char on evals["curve"]) and the final bits on evals["full"].
    `compute_dtype` (e.g. jnp.bfloat16) trains and evaluates in it on float32 masters
    (experiments/precision.py)."""
    steps, T = cfg["steps"], cfg["context"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], max(steps // 20, 1), steps,
                                                  cfg["lr"] / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    manual = fn.with_manual_grads(model)
    k_init, k_data = jax.random.split(key)
    ts = fn.train.init_train_state(manual, opt, (1, T), k_init)
    step = fn.train.make_step(manual, opt, fn.losses.softmax_cross_entropy,
                              compute_dtype=compute_dtype)
    rng = np.random.default_rng(int(jax.random.randint(k_data, (), 0, 2 ** 31 - 1)))
    curve = {"step": [], "val_bits": [], "train_seconds": []}
    losses, train_seconds = [], 0.0

    def record(i):
        curve["step"].append(i)
        curve["val_bits"].append(bits(model, ts.params, ts.state, evals["curve"], compute_dtype))
        curve["train_seconds"].append(round(train_seconds, 2))
        if progress:
            print(f"  {label} step {i:5d}  val {curve['val_bits'][-1]:.3f} bits/char  "
                  f"({train_seconds:.0f} s training)", flush=True)

    record(0)
    compile_seconds = 0.0
    for i in range(1, steps + 1):
        x, y = windows(train, rng.integers(0, len(train) - T - 1, cfg["batch_size"]), T)
        start = time.perf_counter()
        ts, m = step(ts, x, y)
        losses.append(m["loss"])
        if i == 1 or i % cfg["eval_every"] == 0 or i == steps:
            losses[-1] = float(m["loss"])  # waits for the step: the timing includes it
            train_seconds += time.perf_counter() - start
            if i == 1:  # the first step compiles (or loads from the cache): kept apart
                compile_seconds, train_seconds = train_seconds, 0.0
            if i % cfg["eval_every"] == 0 or i == steps:
                record(i)
        else:
            train_seconds += time.perf_counter() - start
    final = bits(model, ts.params, ts.state, evals["full"], compute_dtype)
    train_bits = np.asarray(jax.device_get(losses), float) / math.log(2)
    return ts, {"params": count_params(ts.params), "val_bits": final, "curve": curve,
                "train_seconds": round(train_seconds, 2),
                "compile_seconds": round(compile_seconds, 2),
                "train_bits_last_100": float(train_bits[-100:].mean()),
                "steps": steps, "batch_size": cfg["batch_size"], "context": T}


# ----------------------------------------------------------------------------- sampling

@functools.partial(jax.jit, static_argnames=("model", "n"))
def _sample_ids(model, params, state, window, filled, n, temperature, key):
    T = window.shape[0]

    def step(carry, k):
        window, filled = carry
        logits, _ = model.apply(params, state, window[None])
        last = logits[0, jnp.minimum(filled, T) - 1] / temperature
        c = jax.random.categorical(k, last).astype(window.dtype)
        # not yet full: write at `filled`; full: drop the oldest id and append at the end
        rolled = jnp.where(filled < T, window, jnp.roll(window, -1))
        window = rolled.at[jnp.minimum(filled, T - 1)].set(c)
        return (window, filled + 1), c

    _, out = jax.lax.scan(step, (window, filled), jax.random.split(key, n))
    return out


def sample(model, params, state, vocab, prompt, n, *, context, temperature=1.0, seed=0) -> str:
    """n characters generated after `prompt` (≤ context characters, all in vocab), each
    drawn from softmax(logits / temperature); the same seed gives the same text."""
    if not prompt or len(prompt) > context or any(c not in vocab for c in prompt):
        raise fn.FuncnetError(f"char_model: the prompt must be 1 to {context} characters of "
                              f"the vocabulary, got {prompt!r}")
    window = np.zeros(context, np.int32)
    window[:len(prompt)] = [vocab.index(c) for c in prompt]
    ids = _sample_ids(model, params, state, jnp.asarray(window), jnp.int32(len(prompt)), int(n),
                      jnp.float32(temperature), jax.random.PRNGKey(seed))
    return "".join(vocab[i] for i in np.asarray(ids))


# ----------------------------------------------------------------------------- study

def configuration(args) -> dict:
    models = args.models or ("transformer" if args.quick else "transformer,lstm")
    common_ = {"temperature": args.temperature, "prompt": args.prompt,
               "models": [m.strip() for m in models.split(",") if m.strip()]}
    if args.quick:
        return {"context": 32, "dim": 32, "depth": 1, "heads": 2, "hidden": 48, "steps": 60,
                "batch_size": 16, "lr": 1e-2, "eval_every": 30, "sample_length": 100,
                **common_}
    keys = ("context", "dim", "depth", "heads", "hidden", "steps", "batch_size", "lr",
            "eval_every", "sample_length")
    return {**{k: getattr(args, k) for k in keys}, **common_}


def plot(args, runs, base):
    fig, ax = common.figure(2, size=(4.8, 3.4))
    for name, r in runs.items():
        ax[0, 0].plot(r["curve"]["step"], r["curve"]["val_bits"], "o-", ms=3, label=name)
        ax[0, 1].plot(r["curve"]["train_seconds"], r["curve"]["val_bits"], "o-", ms=3, label=name)
    for a, xlabel in zip(ax[0], ("step", "training seconds (2 shared CPU cores)")):
        for b, style in (("unigram", ":"), ("bigram", "--")):
            a.axhline(base[b], color="gray", ls=style, lw=1, label=f"{b} {base[b]:.2f}")
        a.axhline(2.5, color="red", lw=0.8, alpha=0.5, label="target 2.5")
        a.set(xlabel=xlabel, ylabel="validation bits/char", ylim=(1, max(base["unigram"] + 0.5, 5)))
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax[0, 0].set_title("pydoc_data.topics, character level")
    common.save(fig, args, "learning_curve.png")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    cfg = configuration(args)
    text, vocab, ids = load_text()
    train, val = split(ids)
    base = baselines(train, val, len(vocab))
    print(f"{len(text)} characters, {len(vocab)} symbols; validation bits/char: unigram "
          f"{base['unigram']:.3f}, bigram {base['bigram']:.3f} ({base['smoothing']})")
    T, V = cfg["context"], len(vocab)
    full = validation_windows(val, T)
    rng = np.random.default_rng(args.seed)
    curve_rows = np.sort(rng.choice(len(full[0]), min(EVAL_SAMPLE, len(full[0])), replace=False))
    evals = {"full": full, "curve": (full[0][curve_rows], full[1][curve_rows])}
    build = {"transformer": lambda: fn.models.transformer(V, T, cfg["dim"], cfg["heads"],
                                                          cfg["depth"]),
             "lstm": lambda: lstm_model(V, cfg["hidden"])}
    unknown = set(cfg["models"]) - set(build)
    if unknown or not cfg["models"]:
        raise fn.FuncnetError(f"char_model: --models takes transformer and/or lstm, got "
                              f"{','.join(cfg['models'])!r}")
    models = {name: build[name]() for name in cfg["models"]}
    key = jax.random.PRNGKey(args.seed)
    runs, samples = {}, {}
    for i, (name, model) in enumerate(models.items()):
        start = time.perf_counter()  # wall: compilation, training, evaluation and sampling
        ts, runs[name] = train_model(model, cfg, train, evals, jax.random.fold_in(key, i),
                                     args.progress, name)
        draw = functools.partial(sample, model, ts.params, ts.state, vocab, cfg["prompt"],
                                 cfg["sample_length"], context=T, temperature=cfg["temperature"])
        with common.timed(runs[name], "sample_seconds"):
            samples[name] = draw(seed=args.seed)
        # reproducibility, recorded: the same seed again, and the next seed
        runs[name]["same_seed_same_sample"] = draw(seed=args.seed) == samples[name]
        runs[name]["next_seed_sample"] = draw(seed=args.seed + 1)
        runs[name]["wall_seconds"] = round(time.perf_counter() - start, 2)
        r = runs[name]
        print(f"{name}: {r['params']:,} params, validation {r['val_bits']:.3f} bits/char after "
              f"{r['steps']} steps ({r['train_seconds']:.0f} s training, {r['wall_seconds']:.0f} s "
              f"wall in all)\n--- sample "
              f"(T = {cfg['temperature']}) ---\n{cfg['prompt']}{samples[name]}\n---", flush=True)
    plot(args, runs, base)
    return common.write_metrics(args, {
        "characters": len(text), "vocab_size": V, "train_characters": len(train),
        "validation_characters": len(val), "validation_windows": len(full[0]),
        "baselines": base, "config": cfg,
        "val_bits": {name: r["val_bits"] for name, r in runs.items()},
        "transformer_reaches_2_5": (bool(runs["transformer"]["val_bits"] <= 2.5)
                                    if "transformer" in runs else None),
        "samples": samples, "runs": runs})


if __name__ == "__main__":
    common.cli(main)
