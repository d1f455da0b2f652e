"""One file per layer family; each holds init, forward and backward side by side."""
from .activation import identity, log_softmax, relu, sigmoid, sign, softmax, tanh
from .attention import positional_embedding, self_attention
from .conv import conv2d
from .dense import dense
from .dropout import dropout
from .norm import batch_norm
from .pool import avg_pool, gaussian_pool, learned_pool, max_pool
from .recurrent import lstm, rnn
from .reshape import flatten
