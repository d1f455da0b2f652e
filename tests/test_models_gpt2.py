"""fn.models.gpt2: GPT-2's layout and init, its gradients three ways with dropout on and
the tied table, dropout only in training, and the Hugging Face name mapping (checked here
against a NumPy GPT-2 written from HF's names; against transformers itself in
benchmarks/gpt2.py --agreement, torch being no test dependency)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import losses, models
from funcnet.core import check_model_input, param_paths
from funcnet.sharing import fill_shared

KEY = jax.random.PRNGKey(0)
VOCAB, MAX_LEN, DIM, HEADS, DEPTH, RATE = 11, 6, 8, 2, 2, 0.2
IDS = np.array([[1, 2, 3, 10, 0, 4], [5, 5, 6, 7, 8, 9]])
TARGETS = np.array([[2, 3, 10, 0, 4, 1], [5, 6, 7, 8, 9, 9]])


@pytest.fixture(scope="module")
def model():
    return models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, DEPTH, dropout=RATE)


@pytest.fixture(scope="module")
def params64(model):
    """float64 params with every leaf drawn at a scale that makes each term matter
    (biases and layer norms away from 0 and 1, a table of std 0.5); the model's own init
    (test_init_follows_gpt2) is not needed here, only its shapes."""
    with jax.enable_x64(True):
        params, state = jax.eval_shape(lambda k: model.init(k, (2, MAX_LEN), jnp.float64), KEY)
        leaves, tree = jax.tree_util.tree_flatten(params)
        rng = np.random.default_rng(1)
        leaves = [jnp.asarray(rng.normal(1.0 if leaf.ndim == 1 else 0.0, 0.5, leaf.shape))
                  for leaf in leaves]
        return jax.tree_util.tree_unflatten(tree, leaves), state


def hf_names(depth):
    block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
             "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
             "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    return (["transformer.wte.weight", "transformer.wpe.weight"]
            + [f"transformer.h.{i}.{n}" for i in range(depth) for n in block]
            + ["transformer.ln_f.weight", "transformer.ln_f.bias"])


def numpy_gpt2(sd, ids, depth, heads):
    """GPT-2's forward written from Hugging Face's names (modeling_gpt2.py), in NumPy."""
    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * sd[p + ".weight"] + sd[p + ".bias"]

    def conv1d(x, p):  # HF's Conv1D: x @ weight (in, out) + bias
        return x @ sd[p + ".weight"] + sd[p + ".bias"]

    t = ids.shape[1]
    h = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:t]
    for i in range(depth):
        b = f"transformer.h.{i}."
        q, k, v = np.split(conv1d(ln(h, b + "ln_1"), b + "attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(*a.shape[:2], heads, -1).transpose(0, 2, 1, 3) for a in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        s = np.where(np.tril(np.ones((t, t), bool)), s, np.finfo(s.dtype).min)
        a = np.exp(s - s.max(-1, keepdims=True))
        o = (a / a.sum(-1, keepdims=True)) @ v
        h = h + conv1d(o.transpose(0, 2, 1, 3).reshape(h.shape), b + "attn.c_proj")
        m = conv1d(ln(h, b + "ln_2"), b + "mlp.c_fc")
        m = 0.5 * m * (1 + np.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m ** 3)))
        h = h + conv1d(m, b + "mlp.c_proj")
    return ln(h, "transformer.ln_f") @ sd["transformer.wte.weight"].T


# ----------------------------------------------------------------------------- layout, init

def test_layout_the_head_owns_no_table_and_the_hf_names_cover_every_leaf(model):
    params, _ = jax.eval_shape(lambda k: model.init(k, (2, MAX_LEN)), KEY)
    paths = dict((p, leaf.shape) for p, leaf in param_paths(model, params))
    assert paths["0:embedding/w"] == (VOCAB, DIM) and paths["1:positional_embedding/w"] == (MAX_LEN, DIM)
    assert params[-1] == {"w": None} and params[2] == {}            # tied head, embedding dropout
    assert not any("lm_head" in p for p in paths)
    hf = models.gpt2_params_to_hf(params)
    assert list(hf) == hf_names(DEPTH)
    assert hf["transformer.h.1.attn.c_attn.weight"].shape == (DIM, 3 * DIM)
    assert hf["transformer.h.0.mlp.c_fc.weight"].shape == (DIM, 4 * DIM)
    assert hf["transformer.h.0.mlp.c_proj.weight"].shape == (4 * DIM, DIM)
    # every leaf has exactly one HF name
    assert sum(math.prod(a.shape) for a in hf.values()) == sum(math.prod(s) for s in paths.values())
    per_block = 2 * 2 * DIM + (3 * DIM * DIM + 3 * DIM + DIM * DIM + DIM) + (8 * DIM * DIM + 5 * DIM)
    assert fn.summary(model, (2, MAX_LEN)).split()[-1] == \
        f"{VOCAB * DIM + MAX_LEN * DIM + DEPTH * per_block + 2 * DIM:,}"


def test_init_follows_gpt2():
    depth, dim = 3, 64
    params, _ = models.gpt2(64, 64, dim, 4, depth).init(KEY, (1, 64))
    hf = models.gpt2_params_to_hf(params)
    proj = 0.02 / math.sqrt(2 * depth)
    for name, value in hf.items():
        value = np.asarray(value)
        if name.endswith(("wte.weight", "wpe.weight", "c_attn.weight", "c_fc.weight", "c_proj.weight")):
            std = proj if name.endswith("c_proj.weight") else 0.02
            assert abs(value.std() / std - 1) < 0.06, name
            assert abs(value.mean()) < 4 * std / math.sqrt(value.size), name   # centred
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            np.testing.assert_array_equal(value, 1.0, err_msg=name)
        else:
            np.testing.assert_array_equal(value, 0.0, err_msg=name)


# ----------------------------------------------------------------------------- gradients

def test_gradients_three_ways_with_dropout_on_and_the_tied_table(model, params64):
    params, state = params64
    with jax.enable_x64(True):
        report = fn.check_gradients(model, params, state, IDS, TARGETS,
                                    losses.softmax_cross_entropy, train=True, key=KEY)
        logits = model.apply(params, state, IDS, train=True, key=KEY)[0]
        dy = losses.softmax_cross_entropy.grad(logits, TARGETS)
        dparams, _ = fn.backprop(model, params, state, IDS, dy, train=True, key=KEY)
        # the same network with the head's table as a parameter of its own
        untied = fn.serial(*model.layers)
        d_untied, _ = fn.backprop(untied, fill_shared(model, params), state, IDS, dy, train=True, key=KEY)
    assert report.ok, report
    assert "0:embedding/w" in [r.path for r in report.rows]
    assert dparams[-1]["w"] is None
    np.testing.assert_allclose(dparams[0]["w"], d_untied[0]["w"] + d_untied[-1]["w"], rtol=1e-12)
    assert np.abs(d_untied[-1]["w"]).max() > 0.1 and np.abs(d_untied[0]["w"]).max() > 0.01


def test_dropout_only_in_training(model, params64):
    params, state = params64
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    with jax.enable_x64(True):
        eval1 = model.apply(params, state, IDS, key=k1)[0]
        eval2 = model.apply(params, state, IDS, key=k2)[0]
        train1 = model.apply(params, state, IDS, train=True, key=k1)[0]
        train2 = model.apply(params, state, IDS, train=True, key=k2)[0]
        plain = models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, DEPTH)
        no_drop = plain.apply(params, state, IDS, train=True, key=k1)[0]
    np.testing.assert_array_equal(eval1, eval2)
    np.testing.assert_array_equal(no_drop, eval1)   # rate 0 in training: the eval network
    assert np.abs(train1 - train2).max() > 1e-3 and np.abs(train1 - eval1).max() > 1e-3


def test_attention_block_size_reaches_self_attention(model, params64):
    """The blockwise attention's own tests compare its gradients; here: gpt2 passes the block
    size on (the same outputs, dropout included; a bad size is self_attention's error)."""
    params, state = params64
    blockwise = models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, DEPTH, dropout=RATE, attention_block_size=4)
    with jax.enable_x64(True):
        y, _, cache = model.forward(params, state, IDS, train=True, key=KEY)
        y_b, _, cache_b = blockwise.forward(params, state, IDS, train=True, key=KEY)
    np.testing.assert_allclose(y_b, y, rtol=1e-11, atol=1e-12)
    size = lambda c: sum(leaf.size for leaf in jax.tree_util.tree_leaves(c))
    assert size(cache_b) < size(cache)   # no (heads · T²) probabilities kept
    with pytest.raises(fn.LayerError, match="self_attention: block_size must be a positive int"):
        models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, DEPTH, attention_block_size=0)


def test_logits_match_a_numpy_gpt2_written_from_hf_names(model, params64):
    params, state = params64
    sd = {k: np.asarray(v) for k, v in models.gpt2_params_to_hf(params).items()}
    with jax.enable_x64(True):
        logits = model.apply(params, state, IDS)[0]
    np.testing.assert_allclose(logits, numpy_gpt2(sd, IDS, DEPTH, HEADS), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- HF conversion

def test_hf_round_trip_and_what_a_state_dict_may_hold(params64):
    params, _ = params64
    hf = {k: np.asarray(v) for k, v in models.gpt2_params_to_hf(params).items()}
    with jax.enable_x64(True):
        back = models.gpt2_params_from_hf(hf, params)
        full = dict(hf, **{"lm_head.weight": hf["transformer.wte.weight"],
                           "transformer.h.0.attn.bias": np.tril(np.ones((1, 1, 6, 6))),
                           "transformer.h.1.attn.masked_bias": np.array(-1e4)})
        back_full = models.gpt2_params_from_hf(full, params)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # the tied lm_head.weight and the causal-mask buffers, as a torch state_dict() holds them
    for a, b in zip(jax.tree_util.tree_leaves(back_full), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


class _TensorLike:
    """What the conversion uses of a torch tensor: .detach().cpu().numpy()."""

    def __init__(self, value):
        self.value = value

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.value


def test_hf_conversion_takes_tensors_into_float32_params():
    model = models.gpt2(VOCAB, MAX_LEN, DIM, HEADS, 1)
    like = jax.eval_shape(lambda k: model.init(k, (1, MAX_LEN)), KEY)[0]
    rng = np.random.default_rng(0)
    sd = {name: _TensorLike(rng.normal(size=leaf.shape))
          for name, leaf in models.gpt2_params_to_hf(like).items()}
    params = models.gpt2_params_from_hf(sd, like)
    assert params[-1] == {"w": None}
    np.testing.assert_allclose(params[0]["w"], sd["transformer.wte.weight"].value, rtol=1e-6)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias"),
     r"no tensor 'transformer.h.1.mlp.c_fc.bias' \(the model expects shape \(32,\)\)"),
    (lambda sd: sd.update({"transformer.h.0.attn.c_attn.weight": np.zeros((8, 16))}),
     r"'transformer.h.0.attn.c_attn.weight' has shape \(8, 16\), the model expects \(8, 24\)"),
    (lambda sd: sd.update({"transformer.wte.weight": np.zeros((11, 12))}),
     r"'transformer.wte.weight' has shape \(11, 12\), the model expects \(11, 8\)"),
    (lambda sd: sd.update({"transformer.h.2.ln_1.weight": np.ones(8)}),
     r"the state dict has 3 blocks \(transformer.h.0 … h.2\), the model depth=2"),
    (lambda sd: sd.update({"transformer.h.0.attn.q_proj.weight": np.ones(8)}),
     "unexpected tensor 'transformer.h.0.attn.q_proj.weight'"),
    (lambda sd: sd.update({"lm_head.weight": np.ones((11, 8))}),
     "'lm_head.weight' differs from 'transformer.wte.weight'"),
])
def test_hf_conversion_names_what_is_wrong(params64, change, message):
    params, _ = params64
    sd = {k: np.asarray(v) for k, v in models.gpt2_params_to_hf(params).items()}
    change(sd)
    with jax.enable_x64(True), pytest.raises(fn.FuncnetError, match=message):
        models.gpt2_params_from_hf(sd, params)


def test_hf_conversion_rejects_params_of_another_model():
    params, _ = jax.eval_shape(lambda k: models.mlp(3).init(k, (1, 4)), KEY)
    with pytest.raises(fn.FuncnetError, match="gpt2_params_to_hf: expects the params of fn.models.gpt2"):
        models.gpt2_params_to_hf(params)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=8, num_heads=3), "gpt2: num_heads=3 must divide dim=8"),
    (dict(dropout=1.0), r"gpt2: dropout \(the probability of dropping\) must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"gpt2: dropout .* must be in \[0, 1\)"),
    (dict(depth=0), "gpt2: depth must be a positive int"),
    (dict(vocab_size=1), "gpt2: vocab_size must be an int >= 2"),
])
def test_bad_hyperparameters_are_named(kwargs, message):
    args = dict(vocab_size=VOCAB, max_len=MAX_LEN, dim=DIM, num_heads=HEADS, depth=DEPTH) | kwargs
    with pytest.raises(fn.LayerError, match=message):
        models.gpt2(**args)


def test_bad_inputs_are_named(model, params64):
    params, state = params64   # traced only (eval_shape): the errors come before any compute
    with pytest.raises(fn.LayerError, match=r"sequence of length 7 is longer than max_len=6"):
        jax.eval_shape(lambda k: model.init(k, (1, MAX_LEN + 1)), KEY)
    with pytest.raises(fn.LayerError, match=r"sequence of length 7 is longer than max_len=6"):
        jax.eval_shape(lambda p: model.apply(p, state, np.zeros((1, MAX_LEN + 1), int)), params)
    with pytest.raises(fn.LayerError, match=r"fit: .*embedding.*input id 11 is outside \[0, 11\)"):
        check_model_input(model, params, np.array([[1, 11]]), "fit")
