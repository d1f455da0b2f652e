"""Gradient verification: numerical gradients, the three-way check of a funcnet model, and
checks of gradients funcnet did not write (custom_vjp rules, NumPy backward functions,
user layers, second derivatives).

  kernels.py         the numerical kernels every check shares: the one-coordinate step, the
                     (centred, forward, backward) differences, the tolerance and kink tests,
                     the random streams of a check's one key, the constants
  settings.py        Settings: a check's options (tolerances, eps, samples, key), passed whole
  numerical.py       numerical_grad, rel_error, directional_check
  report.py          GradientRow / GradientReport: one row per leaf, worst element named
  model.py           check_gradients (a model's backward vs jax.grad vs differences)
  fused.py           check_gradients' default numerical side as one compiled program
  recheck.py         a failing element seen again: error bars at ε/2, bisected projections
  functions.py       check_vjp (a JAX function's VJP, e.g. its custom_vjp rule: differences,
                     reference, jit, determinism)
  hvp.py             check_hvp (second derivatives through a rule)
  jvp.py             check_jvp (a forward-mode / custom_jvp rule, the transpose identity)
  vmap.py            check_vmap (value, VJP and JVP under jax.vmap vs per example)
  layer.py           check_layer (a user's Layer: init, shapes, purity, jit, vmap, backward)
  training.py        check_training_gradients (the check `funcnet train` runs first)
  numpy_backward.py  check_backward (a cs231n-style NumPy forward/backward pair)
  precision.py       check_precision (a backward run in bfloat16 / float16 vs float64)
"""
from .functions import check_vjp
from .hvp import check_hvp
from .jvp import check_jvp
from .layer import check_layer
from .model import check_gradients
from .numerical import directional_check, numerical_grad, rel_error
from .numpy_backward import check_backward
from .precision import check_precision
from .training import check_training_gradients, choose_samples, nudge_off_kinks
from .report import GradientCheckError, GradientReport, GradientRow
from .vmap import check_vmap

__all__ = ["numerical_grad", "rel_error", "directional_check", "GradientRow", "GradientReport",
           "GradientCheckError", "check_gradients", "check_vjp", "check_backward",
           "check_hvp", "check_jvp", "check_vmap", "check_layer", "check_training_gradients",
           "nudge_off_kinks", "choose_samples", "check_precision"]
