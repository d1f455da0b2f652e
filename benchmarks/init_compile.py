"""Seconds XLA spends compiling a jitted `model.init`, one draw per leaf against the batched
normal draws fit's init program uses (`funcnet._random.batched_normals`), and a check that
both give the same values bit for bit. One child process per model and way, compilation
cache off, so neither way reuses the other's compiled draws.

    python -m benchmarks.init_compile

Models: resnet depth 8 width 8 and LeNet at 28x28 (batch 4), a 2-block transformer
(vocab 7, length 5, dim 8), an LSTM classifier.
"""
import json
import os
import subprocess
import sys

MODELS = ("resnet", "lenet", "transformer", "lstm")


def child(name, way):
    import hashlib
    import time

    import jax
    import numpy as np

    import funcnet as fn
    from funcnet import _random
    model, shape = {
        "resnet": (lambda: fn.models.resnet(10, 28, depth=8, width=8), (4, 28, 28, 1)),
        "lenet": (lambda: fn.models.lenet(10, 28), (4, 28, 28, 1)),
        "transformer": (lambda: fn.models.transformer(7, 5, 8, 2, 2), (2, 5)),
        "lstm": (lambda: fn.models.lstm_classifier(3, 4), (2, 5, 3)),
    }[name]
    model = model()

    def init(k):
        return model.init(k, shape)

    fun = _random.batched_normals(init) if way == "batched" else init
    key = jax.random.PRNGKey(0)
    lowered = jax.jit(fun).lower(key)
    t0 = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(compiled(key))]
    digest = hashlib.sha1(b"".join(a.tobytes() for a in leaves)).hexdigest()
    print(json.dumps({"seconds": seconds, "digest": digest}))


def main():
    # XLA's own flags, as `import funcnet` leaves them (set XLA_FLAGS to measure others)
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false", FUNCNET_XLA_DEFAULTS="0")
    print("| model | per-leaf draws, compile s | batched draws, compile s | same values |")
    print("|---|---|---|---|")
    for name in MODELS:
        out = {}
        for way in ("per-leaf", "batched"):
            res = subprocess.run([sys.executable, "-m", "benchmarks.init_compile", name, way],
                                 env=env, capture_output=True, text=True, check=True)
            out[way] = json.loads(res.stdout.strip().splitlines()[-1])
        same = out["per-leaf"]["digest"] == out["batched"]["digest"]
        print(f"| {name} | {out['per-leaf']['seconds']:.2f} | {out['batched']['seconds']:.2f} | "
              f"{'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        child(*sys.argv[1:])
    else:
        main()
