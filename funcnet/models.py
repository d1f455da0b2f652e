"""Ready-made models the `funcnet` command, experiments and benchmarks share.

Each function returns a plain `serial` (a Layer); nothing here is special to them.

- `lenet(num_classes, image_size)`: LeNet-5's shape (LeCun et al. 1998), conv-relu-pool twice,
  then flatten-dense-relu-dense. On 28x28 MNIST: 5x5 kernels, 6 then 16 channels, a 120-unit
  hidden layer (28 -SAME conv-> 28 -pool-> 14 -VALID conv-> 10 -pool-> 5, 5·5·16 = 400
  features). On small images (sklearn's 8x8 digits) 5x5 kernels would leave nothing to pool,
  so it uses 3x3 "SAME" kernels with 16 then 32 channels (8 -> 4 -> 2, 2·2·32 = 128
  features) and a 64-unit hidden layer.
- `fc(num_classes, hidden=(100, 100), dropout_rate=0.1)`: cs231n's FullyConnectedNet,
  {affine - batchnorm - relu - dropout} x L - affine - (softmax in the loss).
- `mlp(num_classes, hidden=(128,))`: affine - relu - ... - affine.
- `resnet(num_classes, image_size, depth=8)`: a small residual CNN (He et al. 2016, the
  CIFAR variant: depth = 6n + 2), see its docstring.
- `lstm_classifier(num_classes, hidden=128)`: an LSTM over (batch, time, features), its last
  h to a dense layer of logits (e.g. MNIST read row by row, 28 steps of 28 pixels).
- `transformer(vocab_size, max_len, dim, num_heads, depth)`: a decoder-only (GPT-style)
  language model, token ids (batch, time) in, next-token logits (batch, time, vocab) out.
- `gpt2(vocab_size, max_len, dim, num_heads, depth, *, dropout=0.0)`: GPT-2 exactly as
  published (tied output table, tanh GELU, its dropout and init), with
  `gpt2_params_from_hf` / `gpt2_params_to_hf` converting to and from Hugging Face's names.

`fc` and `mlp` flatten their input first, so they take images or feature vectors alike.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ._validate import as_float, as_int, check, float_dtype
from .combinators import residual, time_distributed
from .core import POINTWISE, Layer, LayerError, serial
from .errors import FuncnetError
from .generate import generate as generate  # fn.models.generate (a re-export)
from .initializers import gaussian, he
from .layers import (batch_norm, conv2d, dense, dropout, embedding, flatten, gelu, gelu_tanh,
                     global_avg_pool, layer_norm, lstm, max_pool, positional_embedding, relu,
                     self_attention)
from .sharing import share

__all__ = ["lenet", "fc", "mlp", "resnet", "lstm_classifier", "transformer", "gpt2",
           "gpt2_params_from_hf", "gpt2_params_to_hf", "MODELS", "build"]


def _check_classes(num_classes, where) -> int:
    return as_int(num_classes, "num_classes", where, minimum=2)


def lenet(num_classes: int = 10, image_size: int = 28):
    """conv - relu - maxpool - conv - relu - maxpool - flatten - dense - relu - dense.

    `image_size` (the input's height, = width) picks the variant: >= 20 gives the classic
    LeNet-5 sizes for 28x28 MNIST, smaller gives the 3x3 variant for 8x8 digits (see the
    module docstring). The last layer emits `num_classes` logits.

    Returns the model, a Layer (build it with `init(key, input_shape)`); a LayerError for an
    invalid size, naming it. Images smaller than 4×4 cannot be pooled twice: a LayerError too.
    """
    num_classes = _check_classes(num_classes, "lenet")
    image_size = as_int(image_size, "image_size", "lenet")
    if image_size >= 20:
        return serial(conv2d(6, (5, 5), padding="SAME", w_init=he), relu, max_pool((2, 2)),
                      conv2d(16, (5, 5), w_init=he), relu, max_pool((2, 2)),
                      flatten, dense(120, w_init=he), relu, dense(num_classes))
    if image_size < 4:
        raise LayerError(f"lenet: images must be at least 4x4 to pool twice, got {image_size}")
    return serial(conv2d(16, (3, 3), padding="SAME", w_init=he), relu, max_pool((2, 2)),
                  conv2d(32, (3, 3), padding="SAME", w_init=he), relu, max_pool((2, 2)),
                  flatten, dense(64, w_init=he), relu, dense(num_classes))


def fc(num_classes: int = 10, hidden: Sequence[int] = (100, 100), dropout_rate: float = 0.1):
    """cs231n's FullyConnectedNet: {dense - batch_norm - relu - dropout} per hidden layer,
    then a dense layer to `num_classes` logits. `dropout_rate=0` leaves dropout out.

    Returns the model, a Layer (build it with `init(key, input_shape)`); a LayerError for an
    invalid size, naming it.
    """
    num_classes = _check_classes(num_classes, "fc")
    layers = [flatten]
    for h in hidden:
        layers += [dense(h, w_init=he), batch_norm(), relu]
        if dropout_rate:
            layers.append(dropout(dropout_rate))
    return serial(*layers, dense(num_classes))


def mlp(num_classes: int = 10, hidden: Sequence[int] = (128,)):
    """flatten - {dense - relu} per hidden layer - dense to `num_classes` logits.

    Returns the model, a Layer (build it with `init(key, input_shape)`); a LayerError for an
    invalid size, naming it.
    """
    num_classes = _check_classes(num_classes, "mlp")
    layers = [flatten]
    for h in hidden:
        layers += [dense(h, w_init=he), relu]
    return serial(*layers, dense(num_classes))


def _resnet_block(channels: int, stride: int, project: bool, skip: bool):
    """conv3x3 - bn - relu - conv3x3 - bn, + the input (a 1x1 conv projection when the shape
    changes), then relu. `skip=False`: the same layers without the addition (a plain net)."""
    body = [conv2d(channels, 3, stride, "SAME", w_init=he), batch_norm(), relu,
            conv2d(channels, 3, 1, "SAME", w_init=he), batch_norm()]
    if not skip:
        return body + [relu]
    shortcut = serial(conv2d(channels, 1, stride, w_init=he), batch_norm()) if project else None
    return [residual(*body, shortcut=shortcut), relu]


def resnet(num_classes: int = 10, image_size: int = 28, depth: int = 8, width: int = 16,
           skip: bool = True):
    """A small residual CNN: conv3x3-bn-relu stem, three stages of n = (depth − 2) / 6
    residual blocks (two 3x3 conv-bn each) of `width`, 2·`width` and 4·`width` channels, the
    second and third starting with stride 2 and a 1x1 conv-bn projection shortcut, then
    global_avg_pool and a dense layer to `num_classes` logits: depth weighted layers in all.
    Images of 20 pixels or more (28x28 MNIST) get a stride-2 stem (28 -> 14 -> 7 -> 4), smaller
    ones (8x8 digits) stride 1. `skip=False` builds the plain net of the same depth (the
    degradation study's control).

    Returns the model, a Layer (build it with `init(key, input_shape)`); a LayerError for an
    invalid size, naming it. `depth` must be 6n + 2 (8, 14, 20, ...).
    """
    _check_classes(num_classes, "resnet")
    depth = as_int(depth, "depth", "resnet", minimum=8)
    width = as_int(width, "width", "resnet")
    if (depth - 2) % 6:
        raise LayerError(f"resnet: depth must be 6n + 2 (8, 14, 20, ...), got {depth}")
    n = (depth - 2) // 6
    layers = [conv2d(width, 3, 2 if image_size >= 20 else 1, "SAME", w_init=he), batch_norm(), relu]
    for stage in range(3):
        for b in range(n):
            first = b == 0 and stage > 0
            layers += _resnet_block(width * 2 ** stage, 2 if first else 1, first, skip)
    return serial(*layers, global_avg_pool, dense(num_classes))


MODELS = {"lenet": lenet, "fc": fc, "mlp": mlp, "resnet": resnet}
"""{name: builder} of the image classifiers `build` and the `funcnet train --model` option
know: lenet, fc, mlp, resnet."""


def build(name: str, input_shape, num_classes: int):
    """The model `name` ("lenet", "fc", "mlp" or "resnet") for inputs of `input_shape`
    (batch first).

    Returns the model, a Layer. Raises a LayerError for an unknown name, or for lenet and
    resnet given inputs that are not NHWC images.
    """
    if name not in MODELS:
        raise LayerError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name in ("lenet", "resnet"):
        if len(input_shape) != 4:
            raise LayerError(f"{name} needs NHWC images, got inputs of shape {tuple(input_shape)}")
        return MODELS[name](num_classes, image_size=int(min(input_shape[1:3])))
    return MODELS[name](num_classes)


def lstm_classifier(num_classes: int = 10, hidden: int = 128):
    """lstm(hidden, return_sequences=False) - dense(num_classes): sequences (batch, time,
    features) in, logits (batch, num_classes) out.

    Returns the model, a Layer (build it with `init(key, input_shape)`); a LayerError for an
    invalid size, naming it.
    """
    num_classes = _check_classes(num_classes, "lstm_classifier")
    return serial(lstm(as_int(hidden, "hidden", "lstm_classifier"), return_sequences=False),
                  dense(num_classes))


def _decoder_sizes(where, vocab_size, max_len, dim, num_heads, depth, mlp_ratio):
    """The sizes of a decoder-only model, checked (Python ints; num_heads divides dim)."""
    sizes = (as_int(vocab_size, "vocab_size", where, minimum=2), as_int(max_len, "max_len", where),
             as_int(dim, "dim", where), as_int(num_heads, "num_heads", where),
             as_int(depth, "depth", where), as_int(mlp_ratio, "mlp_ratio", where))
    if sizes[2] % sizes[3]:
        raise LayerError(f"{where}: num_heads={sizes[3]} must divide dim={sizes[2]}")
    return sizes


def transformer(vocab_size: int, max_len: int, dim: int, num_heads: int, depth: int,
                mlp_ratio: int = 4):
    """A decoder-only transformer (GPT-2's layout, Radford et al. 2019): token ids (batch,
    time ≤ max_len) in, logits (batch, time, vocab_size) for the next token out.

        embedding(vocab_size, dim) - positional_embedding(max_len)
        - depth × [ x + causal_self_attention(layer_norm(x)),
                    x + dense(gelu(dense(layer_norm(x))))   (dim -> mlp_ratio·dim -> dim) ]
        - layer_norm - dense(vocab_size)

    Pre-norm blocks (the residual stream is never normalised, only each branch's input), so
    every block starts close to the identity and deep stacks train without warm-up tricks.
    Both tables start at N(0, 0.02²) as in GPT-2. Build it with `init(key, (1, T))`; ids may
    be ints or whole-number floats (what `fit` stores).

    Returns the model, a Layer (build it with `init(key, input_shape)`); a LayerError for an
    invalid size, naming it. `num_heads` must divide `dim`.
    """
    vocab_size, max_len, dim, num_heads, depth, mlp_ratio = _decoder_sizes(
        "transformer", vocab_size, max_len, dim, num_heads, depth, mlp_ratio)
    layers = [embedding(vocab_size, dim, w_init=gaussian(0.02)), positional_embedding(max_len)]
    for _ in range(depth):
        layers += [residual(layer_norm(), self_attention(num_heads, causal=True)),
                   residual(layer_norm(), time_distributed(dense(mlp_ratio * dim)), gelu,
                            time_distributed(dense(dim)))]
    return serial(*layers, layer_norm(), time_distributed(dense(vocab_size)))


# ----------------------------------------------------------------------------- GPT-2

_GPT2_STD = 0.02  # GPT-2's initializer_range: every weight matrix and both tables


def gpt2(vocab_size: int, max_len: int, dim: int, num_heads: int, depth: int, *,
         dropout: float = 0.0, mlp_ratio: int = 4, attention_block_size=None) -> Layer:
    """GPT-2 as published (Radford et al. 2019; Hugging Face's `GPT2LMHeadModel`): token ids
    (batch, T ≤ max_len) in, logits (batch, T, vocab_size) out.

        h = drop(W_te[ids] + W_pe[:T])
        depth × [ h = h + drop(attn(ln_1(h)))                       causal, attention
                                                                    probabilities dropped too
                  h = h + drop(c_proj(gelu_tanh(c_fc(ln_2(h))))) ]  dim -> mlp_ratio·dim -> dim
        logits = ln_f(h) W_teᵀ                                      the token table, no bias

    `drop` is inverted dropout at rate `dropout` in training (GPT-2's embd, attn and resid
    pdrop, one rate), the identity in evaluation; the layers are there at rate 0 too, so the
    params' layout does not depend on the rate. Init as GPT-2: N(0, 0.02²) for both tables
    and every weight matrix, except each branch's output projection (attention w_o, the
    MLP's c_proj), N(0, (0.02/√(2·depth))²) so the residual stream's variance does not grow
    with depth; biases 0, layer norms γ = 1, β = 0 (ε = 1e-5).

    The output layer reads the token table through `fn.share` (its own entry is None), so
    the table's gradient is the sum of its two uses. Params, a tuple:
        [0] {"w": W_te (vocab, dim)}   [1] {"w": W_pe (max_len, dim)}   [2] {} (dropout)
        [3 + i] block i: (attention residual, MLP residual), each ({}, (branch, {}), {})
                with branch (ln {"gamma", "beta"}, self_attention {"w_qkv", "b_qkv", "w_o",
                "b_o"}, {}) and (ln, c_fc {"w", "b"}, {}, c_proj {"w", "b"}, {})
        [3 + depth] ln_f {"gamma", "beta"}   [4 + depth] {"w": None} (the tied head)
    `gpt2_params_from_hf` / `gpt2_params_to_hf` map these to Hugging Face's names.
    `attention_block_size` is passed on to `self_attention(..., block_size=)`: blockwise
    ("flash") attention, the same outputs and gradients in O(T·dim) memory per layer.

    Returns the model, a Layer (build it with `init(key, (1, T))`). Raises a LayerError for a
    size that is not an int in range (vocab_size ≥ 2, the others ≥ 1), a `num_heads` that
    does not divide `dim`, or a dropout rate outside [0, 1).
    """
    vocab_size, max_len, dim, num_heads, depth, mlp_ratio = _decoder_sizes(
        "gpt2", vocab_size, max_len, dim, num_heads, depth, mlp_ratio)
    rate = as_float(dropout, "dropout (the probability of dropping)", "gpt2", low=0.0, high=1.0,
                    high_open=True)
    blocks = [_gpt2_block(dim, num_heads, mlp_ratio, rate, depth, attention_block_size)
              for _ in range(depth)]
    body = serial(embedding(vocab_size, dim, w_init=gaussian(_GPT2_STD)),
                  positional_embedding(max_len, w_init=gaussian(_GPT2_STD)), _dropout(rate),
                  *blocks, layer_norm(), _tied_head(vocab_size))
    return share(body, {f"{depth + 4}:lm_head/w": "0:embedding/w"})._replace(name="gpt2")


_dropout = dropout  # gpt2's keyword `dropout` shadows the layer inside it


def _gpt2_block(dim, num_heads, mlp_ratio, rate, depth, block_size) -> Layer:
    """x + drop(attn(ln_1(x))), then x + drop(c_proj(gelu_tanh(c_fc(ln_2(x))))); each
    branch's output projection starts at N(0, (0.02/√(2·depth))²)."""
    proj_std = _GPT2_STD / math.sqrt(2 * depth)
    attn = self_attention(num_heads, causal=True, dropout=rate, block_size=block_size,
                          w_init=gaussian(_GPT2_STD))
    attn = _rescaled_init(attn, "w_o", proj_std / _GPT2_STD)
    mlp = (time_distributed(dense(mlp_ratio * dim, w_init=gaussian(_GPT2_STD))), gelu_tanh,
           time_distributed(dense(dim, w_init=gaussian(proj_std))))
    return serial(residual(layer_norm(), attn, _dropout(rate)),
                  residual(layer_norm(), *mlp, _dropout(rate)))._replace(name="gpt2_block")


def _rescaled_init(layer: Layer, leaf: str, factor: float) -> Layer:
    """`layer` whose init multiplies its params[leaf] by `factor` (a N(0, s²) draw becomes
    N(0, (factor·s)²)): self_attention has one w_init for both of its matrices."""
    def init(key, input_shape, dtype=None):
        params, state = layer.init(key, input_shape) if dtype is None else \
            layer.init(key, input_shape, dtype)
        return {**params, leaf: params[leaf] * factor}, state

    return layer._replace(init=init)


def _tied_head(vocab_size: int) -> Layer:
    """logits = h Wᵀ over the last axis, no bias: params {"w": (vocab_size, dim)}, laid out
    as the token table so `fn.share` can hand it that table (which is why it starts at zeros:
    the tie replaces it)."""
    def output_shape(shape):
        check(len(shape) >= 2, f"lm_head expects (batch, ..., dim), got shape {tuple(shape)}")
        return tuple(shape[:-1]) + (vocab_size,)

    def init(key, input_shape, dtype=None):
        output_shape(input_shape)
        return {"w": jnp.zeros((vocab_size, input_shape[-1]), float_dtype(dtype))}, {}

    def forward(params, state, x, *, train=False, key=None):
        output_shape(tuple(x.shape))
        w = params["w"]
        check(x.shape[-1] == w.shape[1], f"lm_head: expects dim {w.shape[1]} (w is "
              f"{tuple(w.shape)}), got input of shape {tuple(x.shape)}")
        return x @ w.T, state, {"x": x}

    def backward(params, cache, dy):
        """For z = h Wᵀ (W the (vocab, dim) table):  dW = Σ_positions dyᵀ h,  dh = dy W."""
        x = cache["x"]
        dw = dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return {"w": dw}, dy @ params["w"]

    return Layer(init, forward, backward, "lm_head", output_shape, decode=POINTWISE)


# Hugging Face GPT2LMHeadModel names <-> gpt2's params. Conv1D weights are (in, out), as
# funcnet's dense, and c_attn's columns are [q | k | v] with head h at columns h·d_h … as in
# self_attention, so every tensor is copied as it is.
_HF_TIED = "lm_head.weight"
_HF_BUFFERS = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)$")  # causal masks
_HF_BLOCK = re.compile(r"transformer\.h\.(\d+)\.")


def _gpt2_places(depth: int) -> list:
    """(HF name, key path into gpt2's params) for every parameter, in the order of
    `GPT2LMHeadModel.named_parameters()` (which lists the tied lm_head.weight no more)."""
    places = [("transformer.wte.weight", (0, "w")), ("transformer.wpe.weight", (1, "w"))]
    for i in range(depth):
        h, attn, mlp = f"transformer.h.{i}.", (3 + i, 0, 1, 0), (3 + i, 1, 1, 0)
        for name, branch, path in (
                ("ln_1.weight", attn, (0, "gamma")), ("ln_1.bias", attn, (0, "beta")),
                ("attn.c_attn.weight", attn, (1, "w_qkv")), ("attn.c_attn.bias", attn, (1, "b_qkv")),
                ("attn.c_proj.weight", attn, (1, "w_o")), ("attn.c_proj.bias", attn, (1, "b_o")),
                ("ln_2.weight", mlp, (0, "gamma")), ("ln_2.bias", mlp, (0, "beta")),
                ("mlp.c_fc.weight", mlp, (1, "w")), ("mlp.c_fc.bias", mlp, (1, "b")),
                ("mlp.c_proj.weight", mlp, (3, "w")), ("mlp.c_proj.bias", mlp, (3, "b"))):
            places.append((h + name, branch + path))
    return places + [("transformer.ln_f.weight", (3 + depth, "gamma")),
                     ("transformer.ln_f.bias", (3 + depth, "beta"))]


def _gpt2_depth(params, where: str) -> int:
    """The depth of gpt2 params (a tuple: 2 tables, dropout, the blocks, ln_f, the head),
    or a FuncnetError saying what came instead."""
    if not (isinstance(params, (tuple, list)) and len(params) >= 6
            and isinstance(params[0], dict) and "w" in params[0]):
        kind = f"a {type(params).__name__}" + (f" of {len(params)} entries"
                                               if isinstance(params, (tuple, list)) else "")
        raise FuncnetError(f"{where}: expects the params of fn.models.gpt2 (a tuple: tables, "
                           f"dropout, blocks, ln_f, head), got {kind}")
    return len(params) - 5


def _at(tree, path, where):
    for k in path:
        try:
            tree = tree[k]
        except (KeyError, IndexError, TypeError):
            raise FuncnetError(f"{where}: the params do not have gpt2's layout (nothing at "
                               f"{path})") from None
    return tree


def _replace_at(tree, path, value):
    """A copy of the nested tuples/dicts `tree` with the entry at `path` replaced."""
    if not path:
        return value
    k, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, k: _replace_at(tree[k], rest, value)}
    return type(tree)(_replace_at(t, rest, value) if i == k else t for i, t in enumerate(tree))


def gpt2_params_to_hf(params) -> dict:
    """{Hugging Face name: array} for gpt2's params, exactly `GPT2LMHeadModel.
    named_parameters()`'s names, order and layouts (no lm_head.weight: HF ties it to
    transformer.wte.weight). The arrays are the params' own (no copy, works under jit).
    Given a gradient pytree, each tensor's gradient by HF name: the token table's is the
    sum of its two uses, as fn.share's backward and jax.grad both give it.

    Raises a FuncnetError for params that do not have gpt2's layout.
    """
    depth = _gpt2_depth(params, "gpt2_params_to_hf")
    return {name: _at(params, path, "gpt2_params_to_hf") for name, path in _gpt2_places(depth)}


def gpt2_params_from_hf(state_dict, like):
    """gpt2's params with every tensor from a Hugging Face `GPT2LMHeadModel` state dict
    (NumPy arrays or torch tensors), in the structure, shapes and dtypes of `like` (params
    from `gpt2(...).init`, or their `jax.eval_shape`). The tied lm_head.weight (which must
    equal transformer.wte.weight) and the attention mask buffers may be present. A missing,
    mis-shaped or unexpected tensor, or a state dict for another depth, is a FuncnetError
    naming it (and both shapes)."""
    where = "gpt2_params_from_hf"
    depth = _gpt2_depth(like, where)
    blocks = {int(m.group(1)) for name in state_dict if (m := _HF_BLOCK.match(name))}
    if blocks and max(blocks) + 1 != depth:
        raise FuncnetError(f"{where}: the state dict has {max(blocks) + 1} blocks (transformer.h."
                           f"0 … h.{max(blocks)}), the model depth={depth}")
    places = dict(_gpt2_places(depth))
    for name in state_dict:
        if name not in places and name != _HF_TIED and not _HF_BUFFERS.match(name):
            raise FuncnetError(f"{where}: unexpected tensor {name!r} in the state dict (gpt2 of "
                               f"depth {depth} has none by that name)")
    params = like
    for name, path in places.items():
        leaf = _at(like, path, where)
        if name not in state_dict:
            raise FuncnetError(f"{where}: the state dict has no tensor {name!r} (the model "
                               f"expects shape {tuple(leaf.shape)})")
        value = _as_numpy(state_dict[name])
        if value.shape != tuple(leaf.shape):
            raise FuncnetError(f"{where}: {name!r} has shape {value.shape}, the model expects "
                               f"{tuple(leaf.shape)}")
        params = _replace_at(params, path, jnp.asarray(value, dtype=leaf.dtype))
    if _HF_TIED in state_dict and not np.array_equal(_as_numpy(state_dict[_HF_TIED]),
                                                     _as_numpy(state_dict["transformer.wte.weight"])):
        raise FuncnetError(f"{where}: {_HF_TIED!r} differs from 'transformer.wte.weight'; "
                           f"gpt2 ties its output layer to the token table")
    return params


def _as_numpy(value):
    """A NumPy array of a NumPy array, a JAX array or a torch tensor (detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
