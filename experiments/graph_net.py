"""The notes' "graph network", made precise.

Note 001 ends with an idea: store a network as an n×n matrix (a graph) and edit it with
matrix operations — keep only weights above a threshold A, swap two columns or two rows,
add a multiple of one row or column to another, swap the order of the nodes. Made precise:

- The network is a DAG of N neurons: nodes 0..n_in−1 are the inputs, the last n_out nodes
  are the outputs (linear: logits), the rest are hidden (tanh). adjacency[i, j] = 1 is an
  edge i → j, and the weight matrix is masked by it:
      z_j = b_j + Σ_i h_i · W[i, j] · A[i, j],     h_j = act(z_j)
  evaluated in a topological order of A (found at construction; a cycle is an error).
  Its backward is the notes' δ rule on the graph, in reverse topological order:
      δ_j = g_j · act'(z_j),  dW[:, j] = A[:, j] ⊙ hᵀ δ_j,  db_j = Σ δ_j,  g_i += δ_j W[i, j] A[i, j].
- Structural edits are pure functions on (params, adjacency):
  `prune` keeps only the edges with |w| > A;  `relabel` applies a permutation P to both
  rows and columns (A' = P A Pᵀ, W' = P W Pᵀ, b' = P b) — `swap_nodes` is one transposition.
  A relabeling leaves the function unchanged; a one-sided row swap (the notes' "D" alone)
  does not: it moves a node's outgoing edges to another node. (Elementary row/column
  operations preserve a determinant, but a DAG's adjacency is nilpotent — its determinant
  is always 0 — and only permutation similarity preserves the network.)

The study trains such a DAG on the digits with the same jit step as any model, checks
numerically that relabelings preserve the outputs, and measures test accuracy as the
pruning threshold rises.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnet as fn
from experiments import common

NAME = "graph_net"


# --- the graph --------------------------------------------------------------------------

def random_dag(key, n_in: int, n_hidden: int, n_out: int, density: float = 0.3) -> np.ndarray:
    """A random DAG on N = n_in + n_hidden + n_out nodes, as a 0/1 matrix (N, N).

    Edges go from lower to higher index (so the identity order is topological), never into
    an input and never out of an output; each edge is present with probability `density`,
    and every non-input node gets at least one incoming edge.
    """
    n = n_in + n_hidden + n_out
    k1, k2 = jax.random.split(key)
    a = np.asarray(jax.random.bernoulli(k1, density, (n, n)), np.float32)
    a = np.triu(a, 1)
    a[:, :n_in] = 0          # nothing flows into an input
    a[n - n_out:, :] = 0     # nothing flows out of an output
    sources = np.asarray(jax.random.randint(k2, (n,), 0, n))
    for j in range(n_in, n):
        if a[:, j].sum() == 0:  # give an isolated node one parent among the earlier non-outputs
            a[sources[j] % min(j, n - n_out), j] = 1
    return a


def topological_order(adjacency) -> np.ndarray:
    """Kahn's algorithm: the nodes in an order where every edge goes forward.
    Raises FuncnetError naming the nodes on a cycle."""
    a = np.asarray(adjacency) != 0
    indegree = a.sum(0)
    ready = [j for j in range(len(a)) if indegree[j] == 0]
    order = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for j in np.flatnonzero(a[i]):
            indegree[j] -= 1
            if indegree[j] == 0:
                ready.append(int(j))
    if len(order) != len(a):
        stuck = sorted(set(range(len(a))) - set(order))
        raise fn.FuncnetError(f"graph network: the adjacency has a cycle through nodes {stuck[:10]}"
                              f"{'...' if len(stuck) > 10 else ''}; a network must be a DAG")
    return np.asarray(order)


@partial(jax.jit, static_argnames=("n_out", "activation"))
def dag_forward(w, b, mask, compute, h, *, n_out, activation):
    """Evaluate the nodes `compute` in order; h (batch, N) holds the inputs in its first
    columns. Returns (h, z): every node's output and pre-activation. Jit-compiled with the
    mask and order as arguments, so a pruned or relabeled graph reuses the compilation."""
    wm = w * mask
    n = h.shape[1]

    def node(k, hz):
        h, z = hz
        j = compute[k]
        zj = h @ wm[:, j] + b[j]
        hj = jnp.where(j >= n - n_out, zj, activation.apply({}, {}, zj)[0])
        return h.at[:, j].set(hj), z.at[:, j].set(zj)

    return jax.lax.fori_loop(0, compute.shape[0], node, (h, jnp.zeros_like(h)))


@partial(jax.jit, static_argnames=("n_out", "activation"))
def dag_backward(w, mask, compute, h, z, dy, *, n_out, activation):
    """The δ rule on the graph, nodes in reverse topological order:
    δ_j = g_j · act'(z_j) (g_j for a linear output),  dW[:, j] = A[:, j] ⊙ hᵀ δ_j,
    db_j = Σ_batch δ_j,  and every parent i of j gets g_i += δ_j · W[i, j].
    act' comes from the activation layer's own backward. Returns (g, dW, db)."""
    wm = w * mask
    n = h.shape[1]
    g = jnp.zeros_like(h).at[:, n - n_out:].set(dy)

    def node(k, carry):
        g, dw, db = carry
        j = compute[compute.shape[0] - 1 - k]
        act_cache = activation.forward({}, {}, z[:, j])[2]
        delta = jnp.where(j >= n - n_out, g[:, j], activation.backward({}, act_cache, g[:, j])[1])
        dw = dw.at[:, j].set((h.T @ delta) * mask[:, j])
        db = db.at[j].set(delta.sum())
        return g + delta[:, None] * wm[:, j][None, :], dw, db

    return jax.lax.fori_loop(0, compute.shape[0], node,
                             (g, jnp.zeros_like(wm), jnp.zeros((n,), wm.dtype)))


def dag_network(adjacency, n_in: int, n_out: int, activation: fn.Layer = fn.tanh) -> fn.Layer:
    """The network of a DAG as a funcnet Layer: input (batch, n_in) -> logits (batch, n_out).

    params {"w": (N, N), "b": (N,)}; only the entries where adjacency is 1 are used (and get
    gradient). Weights start as N(0, 1/fan_in(j)) per node j, Xavier on the graph.
    """
    mask_np = np.asarray(adjacency, np.float32)
    n = mask_np.shape[0]
    if mask_np.shape != (n, n) or n_in + n_out > n:
        raise fn.FuncnetError(f"graph network: adjacency must be square (N, N) with N >= n_in + "
                              f"n_out = {n_in + n_out}, got shape {mask_np.shape}")
    if mask_np[:, :n_in].any():
        raise fn.FuncnetError("graph network: an input node (the first n_in) has an incoming edge")
    order = topological_order(mask_np)
    compute = np.asarray([j for j in order if j >= n_in], np.int32)  # non-input nodes, in order
    static = dict(n_out=n_out, activation=activation)

    def output_shape(shape):
        if len(shape) != 2 or shape[1] != n_in:
            raise fn.LayerError(f"graph network expects input (batch, {n_in}), got shape {shape}")
        return (shape[0], n_out)

    def init(key, input_shape, dtype=None):
        output_shape(tuple(input_shape))
        dtype = jnp.float32 if dtype is None else dtype
        fan_in = np.maximum(mask_np.sum(0), 1)
        w = jax.random.normal(key, (n, n), dtype) / jnp.sqrt(jnp.asarray(fan_in, dtype))
        return {"w": w * mask_np.astype(dtype), "b": jnp.zeros((n,), dtype)}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        w = params["w"]
        h0 = jnp.zeros((x.shape[0], n), w.dtype).at[:, :n_in].set(x)
        h, z = dag_forward(w, params["b"], jnp.asarray(mask_np, w.dtype), compute, h0, **static)
        return h[:, n - n_out:], state, {"h": h, "z": z}

    def backward(params, cache, dy):
        """The δ rule on the graph (see `dag_backward`)."""
        w = params["w"]
        g, dw, db = dag_backward(w, jnp.asarray(mask_np, w.dtype), compute, cache["h"],
                                 cache["z"], dy, **static)
        return {"w": dw, "b": db}, g[:, :n_in]

    return fn.Layer(init, forward, backward, "graph_network", output_shape)


# --- structural edits: pure functions on (params, adjacency) ----------------------------

def prune(params, adjacency, threshold: float):
    """The notes' "A": keep only the edges whose weight has |w| > threshold."""
    keep = (np.asarray(adjacency) != 0) & (np.abs(np.asarray(params["w"])) > threshold)
    adjacency = keep.astype(np.float32)
    return {"w": params["w"] * adjacency, "b": params["b"]}, adjacency


def relabel(params, adjacency, perm):
    """Rename node perm[k] as node k: A' = P A Pᵀ, W' = P W Pᵀ, b' = P b (P the permutation
    matrix). Swapping rows *and* the same columns: the same graph under new names."""
    perm = np.asarray(perm)
    a = np.asarray(adjacency)[perm][:, perm]
    w = jnp.asarray(params["w"])[perm][:, perm]
    return {"w": w, "b": jnp.asarray(params["b"])[perm]}, a


def swap_nodes(params, adjacency, i: int, j: int):
    """The notes' "H" (swap the order of two nodes): the transposition relabeling."""
    perm = np.arange(len(adjacency))
    perm[[i, j]] = perm[[j, i]]
    return relabel(params, adjacency, perm)


def swap_rows(params, adjacency, i: int, j: int):
    """The notes' "D" alone: swap rows i and j of A and W but not the columns. Node i takes
    node j's outgoing edges and vice versa: a different network (or not a DAG at all)."""
    perm = np.arange(len(adjacency))
    perm[[i, j]] = perm[[j, i]]
    return {"w": jnp.asarray(params["w"])[perm], "b": params["b"]}, np.asarray(adjacency)[perm]


def hidden_permutation(key, n_in: int, n_hidden: int, n_out: int) -> np.ndarray:
    """A random permutation of the hidden nodes; inputs and outputs keep their places."""
    hidden = np.asarray(jax.random.permutation(key, n_hidden)) + n_in
    return np.concatenate([np.arange(n_in), hidden, np.arange(n_in + n_hidden, n_in + n_hidden + n_out)])


# --- the study --------------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("--hidden", type=int, default=64, help="hidden nodes (default %(default)s)")
    p.add_argument("--density", type=float, default=0.3,
                   help="probability of each forward edge (default %(default)s)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default %(default)s)")


def main(argv=None) -> dict:
    args = common.parse(NAME, __doc__, argv, add_arguments)
    hidden, epochs = (16, 8) if args.quick else (args.hidden, args.epochs)
    key = jax.random.PRNGKey(args.seed)
    k_graph, k_init, k_fit, k_perm = jax.random.split(key, 4)
    (xtr, ytr), (xte, yte) = fn.data.load("digits", scale="standard", seed=args.seed)
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    n_in, n_out = xtr.shape[1], 10
    n = n_in + hidden + n_out

    adjacency = random_dag(k_graph, n_in, hidden, n_out, args.density)
    model = dag_network(adjacency, n_in, n_out)
    times = {}
    with common.timed(times, "train_s"):
        params, state = model.init(k_init, (1, n_in))
        train_state, history = fn.train.fit(
            model, optax.adam(3e-3), (xtr, ytr), loss=fn.losses.softmax_cross_entropy,
            epochs=epochs, batch_size=64, key=k_fit, val_data=(xte, yte),
            progress=args.progress, initial=(params, state))
    params, state = train_state.params, train_state.state

    def test_accuracy(model, params):
        logits = model.apply(params, state, xte)[0]
        return float(fn.accuracy(logits, yte))

    acc = test_accuracy(model, params)
    y0 = model.apply(params, state, xte)[0]

    # Relabelings: a random permutation of the hidden nodes, and one swap of two nodes.
    p_perm, a_perm = relabel(params, adjacency, hidden_permutation(k_perm, n_in, hidden, n_out))
    y_perm = dag_network(a_perm, n_in, n_out).apply(p_perm, state, xte)[0]
    i, j = n_in, n_in + hidden - 1
    p_swap, a_swap = swap_nodes(params, adjacency, i, j)
    y_swap = dag_network(a_swap, n_in, n_out).apply(p_swap, state, xte)[0]
    p_row, a_row = swap_rows(params, adjacency, i + 1, i + 2)
    try:
        y_row = dag_network(a_row, n_in, n_out).apply(p_row, state, xte)[0]
        row_diff, row_note = float(jnp.max(jnp.abs(y_row - y0))), "a DAG, but a different network"
    except fn.FuncnetError as e:
        row_diff, row_note = float("inf"), f"not a DAG: {e}"

    # Pruning: accuracy (without retraining) as the threshold A rises.
    weights = np.abs(np.asarray(params["w"]))[adjacency != 0]
    thresholds = np.quantile(weights, np.linspace(0, 0.98, 8 if args.quick else 25))
    curve = []
    for a in thresholds:
        p_pruned, a_pruned = prune(params, adjacency, float(a))
        curve.append({"threshold": float(a), "edges_kept": int(a_pruned.sum()),
                      "fraction_kept": float(a_pruned.sum() / adjacency.sum()),
                      "test_accuracy": test_accuracy(dag_network(a_pruned, n_in, n_out), p_pruned)})
    half = min(curve, key=lambda c: abs(c["fraction_kept"] - 0.5))

    metrics = {
        "nodes": n, "hidden": hidden, "edges": int(adjacency.sum()), "epochs": epochs,
        "test_accuracy": acc,
        "relabel_max_abs_diff": float(jnp.max(jnp.abs(y_perm - y0))),
        "swap_nodes_max_abs_diff": float(jnp.max(jnp.abs(y_swap - y0))),
        "relabeled_is_upper_triangular": bool(np.allclose(a_perm, np.triu(a_perm))),
        "swap_rows_only_max_abs_diff": row_diff, "swap_rows_only": row_note,
        "accuracy_at_half_edges": half["test_accuracy"], "pruning": curve,
        "train_loss": history["loss"], **times,
    }

    fig, ax = common.figure(3, size=(4.2, 3.8))
    ax[0, 0].imshow(adjacency, cmap="Greys", interpolation="nearest")
    ax[0, 0].set_title(f"adjacency ({int(adjacency.sum())} edges)")
    ax[0, 1].imshow(a_perm, cmap="Greys", interpolation="nearest")
    ax[0, 1].set_title(f"relabeled: max |Δy| = {metrics['relabel_max_abs_diff']:.1e}")
    ax[0, 2].imshow(np.abs(np.asarray(params["w"])) * adjacency, cmap="viridis",
                    interpolation="nearest")
    ax[0, 2].set_title("|W ⊙ A| after training")
    for a in ax[0]:
        a.set_xlabel("to node j")
        a.set_ylabel("from node i")
    common.save(fig, args, "graph.png")

    fig, ax = common.figure(2)
    common.plot_curves(ax[0, 0], {"train": metrics["train_loss"]}, title="training loss")
    ax[0, 1].plot([c["threshold"] for c in curve], [c["test_accuracy"] for c in curve], "o-",
                  label="test accuracy")
    ax[0, 1].plot([c["threshold"] for c in curve], [c["fraction_kept"] for c in curve], "s--",
                  label="fraction of edges kept")
    ax[0, 1].set_xlabel("threshold A (keep |w| > A)")
    ax[0, 1].set_title("pruning without retraining")
    ax[0, 1].legend(fontsize=7)
    ax[0, 1].grid(alpha=0.3)
    common.save(fig, args, "pruning.png")
    print(f"graph network: {n} nodes, {metrics['edges']} edges, test accuracy {acc:.4f}; "
          f"relabeling changes outputs by {metrics['relabel_max_abs_diff']:.1e}; "
          f"{half['fraction_kept']:.0%} of edges keep {half['test_accuracy']:.4f}")
    return common.write_metrics(args, metrics)


if __name__ == "__main__":
    common.cli(main)
