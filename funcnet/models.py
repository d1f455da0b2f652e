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

`fc` and `mlp` flatten their input first, so they take images or feature vectors alike.
"""
from __future__ import annotations

from typing import Sequence

from ._validate import as_int
from .combinators import residual, time_distributed
from .generate import generate as generate  # fn.models.generate (a re-export)
from .core import LayerError, serial
from .initializers import gaussian, he
from .layers import (batch_norm, conv2d, dense, dropout, embedding, flatten, gelu,
                     global_avg_pool, layer_norm, lstm, max_pool, positional_embedding, relu,
                     self_attention)

__all__ = ["lenet", "fc", "mlp", "resnet", "lstm_classifier", "transformer", "MODELS", "build"]


def _check_classes(num_classes, where) -> int:
    return as_int(num_classes, "num_classes", where, minimum=2)


def lenet(num_classes: int = 10, image_size: int = 28):
    """conv - relu - maxpool - conv - relu - maxpool - flatten - dense - relu - dense.

    `image_size` (the input's height, = width) picks the variant: >= 20 gives the classic
    LeNet-5 sizes for 28x28 MNIST, smaller gives the 3x3 variant for 8x8 digits (see the
    module docstring). The last layer emits `num_classes` logits.
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
    then a dense layer to `num_classes` logits. `dropout_rate=0` leaves dropout out."""
    num_classes = _check_classes(num_classes, "fc")
    layers = [flatten]
    for h in hidden:
        layers += [dense(h, w_init=he), batch_norm(), relu]
        if dropout_rate:
            layers.append(dropout(dropout_rate))
    return serial(*layers, dense(num_classes))


def mlp(num_classes: int = 10, hidden: Sequence[int] = (128,)):
    """flatten - {dense - relu} per hidden layer - dense to `num_classes` logits."""
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
    degradation study's control)."""
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


def build(name: str, input_shape, num_classes: int):
    """The model `name` ("lenet", "fc", "mlp" or "resnet") for inputs of `input_shape`
    (batch first)."""
    if name not in MODELS:
        raise LayerError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name in ("lenet", "resnet"):
        if len(input_shape) != 4:
            raise LayerError(f"{name} needs NHWC images, got inputs of shape {tuple(input_shape)}")
        return MODELS[name](num_classes, image_size=int(min(input_shape[1:3])))
    return MODELS[name](num_classes)


def lstm_classifier(num_classes: int = 10, hidden: int = 128):
    """lstm(hidden, return_sequences=False) - dense(num_classes): sequences (batch, time,
    features) in, logits (batch, num_classes) out."""
    num_classes = _check_classes(num_classes, "lstm_classifier")
    return serial(lstm(as_int(hidden, "hidden", "lstm_classifier"), return_sequences=False),
                  dense(num_classes))


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
    be ints or whole-number floats (what `fit` stores)."""
    where = "transformer"
    vocab_size = as_int(vocab_size, "vocab_size", where, minimum=2)
    max_len = as_int(max_len, "max_len", where)
    dim = as_int(dim, "dim", where)
    num_heads = as_int(num_heads, "num_heads", where)
    depth = as_int(depth, "depth", where)
    mlp_ratio = as_int(mlp_ratio, "mlp_ratio", where)
    if dim % num_heads:
        raise LayerError(f"transformer: num_heads={num_heads} must divide dim={dim}")
    layers = [embedding(vocab_size, dim, w_init=gaussian(0.02)), positional_embedding(max_len)]
    for _ in range(depth):
        layers += [residual(layer_norm(), self_attention(num_heads, causal=True)),
                   residual(layer_norm(), time_distributed(dense(mlp_ratio * dim)), gelu,
                            time_distributed(dense(dim)))]
    return serial(*layers, layer_norm(), time_distributed(dense(vocab_size)))
