"""One process of a test run of `fit` (tests/test_distributed.py starts it, alone or as one
of several with FUNCNET_COORDINATOR / FUNCNET_NUM_PROCESSES / FUNCNET_PROCESS_ID set).

    python tests/distributed_worker.py OUT_DIR [--epochs 3] [--checkpoint-dir D]
                                                [--die-after-epoch E --die-process P]

Trains a tiny MLP with batch norm and dropout on fixed random data over every device of
every process and writes OUT_DIR/result_<process>.npz: the final parameters and model
state (flattened), every step's loss and the history (timings left out).
"""
import os
import signal
import sys

import numpy as np

# This checkout's funcnet, not an installed one (the script's own folder is tests/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--die-after-epoch", type=int, default=None)
    p.add_argument("--die-process", type=int, default=1)
    p.add_argument("--model-axis", type=int, default=1, help="devices per weight (2-D mesh)")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    args = p.parse_args(argv)

    import funcnet as fn
    # From the arguments, else the FUNCNET_* variables, if any.
    fn.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax
    import optax

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)
    model = fn.serial(fn.dense(8), fn.batch_norm(), fn.relu, fn.dropout(0.25), fn.dense(4))
    me = jax.process_index()
    devices = (fn.sharding.make_mesh_2d(jax.devices(), model=args.model_axis)
               if args.model_axis > 1 else jax.devices())

    def die(row, _ts):
        if args.die_after_epoch == row["epoch"] and me == args.die_process:
            print(f"worker {me}: killing myself after epoch {row['epoch']}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        ts, history = fn.train.fit(
            model, optax.sgd(0.2, momentum=0.9), (x, y), epochs=args.epochs, batch_size=16,
            key=jax.random.PRNGKey(3), val_data=(x[:20], y[:20]), eval_batch_size=8,
            devices=devices, checkpoint_dir=args.checkpoint_dir, progress=False,
            callback=die)
    except fn.distributed.ProcessLostError as e:  # as `funcnet train` does
        print(f"worker {me}: error: {e}", flush=True)
        fn.distributed.exit_now(3)
    leaves = jax.device_get(jax.tree_util.tree_leaves((ts.params, ts.state)))
    rows = [[r[k] for k in sorted(r) if k != "seconds"] for r in history]
    np.savez(os.path.join(args.out, f"result_{me}.npz"),
             flat=np.concatenate([np.ravel(a) for a in leaves]),
             losses=np.asarray(history.step_losses), history=np.asarray(rows, np.float64),
             devices=jax.device_count(), processes=jax.process_count(), step=int(ts.step),
             w_shard=ts.params[0]["w"].addressable_shards[0].data.shape)
    print(f"worker {me}: done, {int(ts.step)} steps on {jax.device_count()} devices", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
