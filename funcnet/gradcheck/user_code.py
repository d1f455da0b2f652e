"""`funcnet gradcheck --function FILE.py:NAME` / `--layer FILE.py:FACTORY`: load a user's
function or layer factory and run check_vjp / check_layer on random inputs."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import jax

from .. import _random
from ..errors import FuncnetError
from .functions import check_vjp
from .layer import check_layer

__all__ = ["load_object", "parse_shape", "check_user_function", "check_user_layer"]


def load_object(spec: str):
    """'path/to/file.py:name' or 'package.module:name' -> the object."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise FuncnetError(f"gradcheck: expected FILE.py:NAME or MODULE:NAME, got {spec!r}")
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise FuncnetError(f"gradcheck: no such file {where!r}")
        module_spec = importlib.util.spec_from_file_location(
            "funcnet_user_" + os.path.basename(where)[:-3], where)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise FuncnetError(f"gradcheck: {where} has no attribute {name!r}")
    return getattr(module, name)


def parse_shape(text: str) -> tuple:
    """'1,8,8,3' -> (1, 8, 8, 3); '' or 'scalar' -> ()."""
    if text in ("", "scalar", "()"):
        return ()
    try:
        shape = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise FuncnetError(f"gradcheck: a shape is comma-separated ints, got {text!r}") from None
    if any(d < 1 for d in shape):
        raise FuncnetError(f"gradcheck: shape dimensions must be >= 1, got {text!r}")
    return shape


def check_user_function(spec, shapes, seed=0):
    """check_vjp of the loaded function on standard normal arguments of these shapes."""
    f = load_object(spec)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(shapes), 1))
    with jax.enable_x64(True):
        args = [_random.normal(k, s, "float64") for k, s in zip(keys, shapes)]
    return check_vjp(f, *args, key=jax.random.PRNGKey(seed + 1))


def check_user_layer(spec, input_shape, seed=0):
    """check_layer of factory() (or the object itself if it is already a Layer)."""
    from ..core import Layer
    obj = load_object(spec)
    layer = obj if isinstance(obj, Layer) else obj()
    return check_layer(layer, input_shape, key=jax.random.PRNGKey(seed))
