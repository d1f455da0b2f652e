"""funcnet's sequence layers against PyTorch's, in float64: rnn / lstm against torch.nn.RNN /
LSTM and self_attention (causal and not) against torch.nn.MultiheadAttention.

The test suite checks every one of these layers against NumPy loop references (torch is not a
test dependency); this is the cross-framework check, run by `python -m benchmarks.sequence`
before it times anything, or alone: `python -m benchmarks.torch_agreement`.
"""
import jax
import numpy as np

import funcnet as fn

B, T, D, H, HEADS = 2, 4, 6, 5, 3


def _params(layer, shape, seed):
    params, state = layer.init(jax.random.PRNGKey(seed), shape, np.float64)
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_unflatten(tree, [rng.normal(0, 0.5, leaf.shape) for leaf in leaves])
    return params, state, rng.normal(size=shape)


def recurrent(name, torch):
    """Max |funcnet − torch| of rnn or lstm's output sequence."""
    layer = getattr(fn, name)(H)
    with jax.enable_x64(True):
        params, state, x = _params(layer, (B, T, D), 7)
        y = np.asarray(layer.apply(params, state, x)[0])
    w_x, w_h, b = (np.asarray(params[k]) for k in ("w_x", "w_h", "b"))
    if name == "lstm":  # funcnet's gates are i, f, o, g; torch's i, f, g, o
        order = np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]
        w_x, w_h, b = w_x[:, order], w_h[:, order], b[order]
    module = (torch.nn.RNN if name == "rnn" else torch.nn.LSTM)(D, H, batch_first=True).double()
    module.load_state_dict({"weight_ih_l0": torch.tensor(w_x.T), "weight_hh_l0": torch.tensor(w_h.T),
                            "bias_ih_l0": torch.tensor(b),
                            "bias_hh_l0": torch.zeros(len(b), dtype=torch.float64)})
    with torch.no_grad():
        expected, _ = module(torch.tensor(x))
    return float(np.max(np.abs(y - expected.numpy())))


def attention(causal, torch):
    """Max |funcnet − torch| of self_attention's output."""
    layer = fn.self_attention(HEADS, causal=causal)
    with jax.enable_x64(True):
        params, state, x = _params(layer, (B, T, D), 1)
        y = np.asarray(layer.apply(params, state, x)[0])
    mha = torch.nn.MultiheadAttention(D, HEADS, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.asarray(params["w_qkv"]).T))
        mha.in_proj_bias.copy_(torch.tensor(np.asarray(params["b_qkv"])))
        mha.out_proj.weight.copy_(torch.tensor(np.asarray(params["w_o"]).T))
        mha.out_proj.bias.copy_(torch.tensor(np.asarray(params["b_o"])))
        xt = torch.tensor(x)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
        expected, _ = mha(xt, xt, xt, need_weights=False, attn_mask=mask)
    return float(np.max(np.abs(y - expected.numpy())))


def check(tol=1e-10) -> dict:
    """Every comparison's max |difference|; raises AssertionError past `tol`."""
    import torch
    diffs = {"rnn": recurrent("rnn", torch), "lstm": recurrent("lstm", torch),
             "self_attention": attention(False, torch),
             "causal self_attention": attention(True, torch)}
    bad = {k: v for k, v in diffs.items() if not v <= tol}
    assert not bad, f"funcnet and torch disagree: {bad}"
    return diffs


if __name__ == "__main__":
    for name, diff in check().items():
        print(f"{name:>22}: max |funcnet − torch| = {diff:.1e}")
