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
- `lstm_classifier(num_classes, hidden=128)`: an LSTM over (batch, time, features), its last
  h to a dense layer of logits (e.g. MNIST read row by row, 28 steps of 28 pixels).

`fc` and `mlp` flatten their input first, so they take images or feature vectors alike.
"""
from __future__ import annotations

from typing import Sequence

from ._validate import as_int
from .core import LayerError, serial
from .initializers import he
from .layers import batch_norm, conv2d, dense, dropout, flatten, lstm, max_pool, relu

__all__ = ["lenet", "fc", "mlp", "MODELS", "build", "lstm_classifier"]


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


MODELS = {"lenet": lenet, "fc": fc, "mlp": mlp}


def build(name: str, input_shape, num_classes: int):
    """The model `name` ("lenet", "fc" or "mlp") for inputs of `input_shape` (batch first)."""
    if name not in MODELS:
        raise LayerError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if name == "lenet":
        if len(input_shape) != 4:
            raise LayerError(f"lenet needs NHWC images, got inputs of shape {tuple(input_shape)}")
        return lenet(num_classes, image_size=int(min(input_shape[1:3])))
    return MODELS[name](num_classes)


def lstm_classifier(num_classes: int = 10, hidden: int = 128):
    """lstm(hidden, return_sequences=False) - dense(num_classes): sequences (batch, time,
    features) in, logits (batch, num_classes) out."""
    num_classes = _check_classes(num_classes, "lstm_classifier")
    return serial(lstm(as_int(hidden, "hidden", "lstm_classifier"), return_sequences=False),
                  dense(num_classes))
