"""One file per layer family; each holds init, forward and backward side by side."""
from .activation import (elu, gelu, gelu_tanh, identity, leaky_relu, log_softmax, relu, sigmoid,
                         sign, softmax, softplus, tanh)
from .attention import positional_embedding, self_attention
from .conv import conv2d
from .conv1d import conv1d
from .conv_transpose import conv_transpose2d
from .embedding import embedding
from .global_pool import global_avg_pool
from .layer_norm import layer_norm
from .dense import dense
from .dropout import dropout
from .norm import batch_norm
from .pool import avg_pool, gaussian_pool, learned_pool, max_pool
from .recurrent import lstm, rnn
from .reshape import flatten

__all__ = ["elu", "gelu", "gelu_tanh", "identity", "leaky_relu", "log_softmax", "relu", "sigmoid",
           "sign", "softmax", "softplus", "tanh", "positional_embedding", "self_attention", "conv2d",
           "conv1d", "conv_transpose2d", "embedding", "global_avg_pool", "layer_norm", "dense",
           "dropout", "batch_norm", "avg_pool", "gaussian_pool", "learned_pool", "max_pool",
           "lstm", "rnn", "flatten"]
