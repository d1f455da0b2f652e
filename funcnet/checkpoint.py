"""Safe save / restore of any pytree: a NumPy .npz plus a JSON structure record, never pickled.

Format (version 1). A checkpoint is an uncompressed .npz (a zip of .npy files, exactly what
`np.savez` writes) holding

- one array per leaf, named by its tree path: dict keys, NamedTuple field names and
  sequence indices joined by "/" (e.g. "opt_state/0/mu/w"); a key's "/", "%" and other
  unsafe characters are %-escaped, an empty key is "%", and a tree that is a single leaf is
  "%root";
- an entry named "%funcnet" (no escaped path can take that name): a 0-d unicode array
  holding a JSON record {"format": "funcnet.checkpoint", "version": 1, "tree": ...,
  "metadata": ...} that describes every node: dict (its keys, in order), tuple, list,
  NamedTuple (its type name and fields), None, other registered pytree nodes (their type
  name; rebuilt from `like`), array leaves (dtype, shape), Python scalars and strings, and
  JAX PRNG keys (typed keys are stored as their uint32 `key_data` plus the impl name).

So `np.load(path, allow_pickle=False)` reads every array with NumPy alone, and
`json.loads(str(npz["%funcnet"]))` the structure. Object arrays are refused at save time.
dtypes NumPy cannot name in a .npy header (bfloat16, float8 ...) are stored as same-width
unsigned ints and viewed back on restore.

Writes are atomic: the file is written to a temporary file in the target's directory,
flushed and fsync'ed, then `os.replace`d onto the target and the directory fsync'ed. A crash
or error mid-save leaves the previous checkpoint intact and removes the temporary file.

`restore(path)` without `like` rebuilds dicts, tuples, lists and None, NamedTuples as
`collections.namedtuple`s with the recorded type name and fields (nothing is imported by
name), arrays as NumPy arrays with their exact saved dtypes (so a float64 or int64 leaf is
not silently narrowed by JAX's default 32-bit mode), Python scalars as Python scalars and
typed PRNG keys as JAX key arrays. `restore(path, like=tree)` returns a tree of exactly
`like`'s structure and types -- NamedTuple and other pytree types, NumPy leaves as NumPy,
JAX arrays (and `jax.ShapeDtypeStruct`s) as JAX arrays placed with `like`'s sharding, typed
PRNG keys re-wrapped -- after checking that paths, shapes and dtypes agree; any difference
is a `CheckpointMismatchError` listing every difference.
"""
from __future__ import annotations

import collections
import json
import keyword
import operator
import os
import re
import urllib.parse
import zipfile
from typing import Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ._files import atomic_write, fsync_dir  # atomic_write: still importable from here
from ._validate import as_int
from .errors import FuncnetError

FORMAT = "funcnet.checkpoint"
VERSION = 1
RECORD_NAME = "%funcnet"
ROOT_NAME = "%root"

__all__ = ["CheckpointError", "CheckpointMismatchError", "save", "restore", "read_metadata",
           "latest", "save_step", "atomic_write", "step_path"]


class CheckpointError(FuncnetError):
    """A checkpoint file cannot be written or read: corrupt, truncated, foreign, unsupported."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's structure differs from the `like` tree; `differences` lists each one."""

    def __init__(self, path, differences: List[str]):
        self.path = str(path)
        self.differences = list(differences)
        listing = "\n  ".join(self.differences)
        super().__init__(f"{path}: checkpoint does not match `like` "
                         f"({len(self.differences)} difference(s)):\n  {listing}")


# ----------------------------------------------------------------------------- names and leaves

def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _is_prng_key(x) -> bool:
    """A typed PRNG key, concrete or abstract (a ShapeDtypeStruct from jax.eval_shape)."""
    return (isinstance(x, (jax.Array, jax.ShapeDtypeStruct))
            and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def _impl_name(key) -> Optional[str]:
    if isinstance(key, jax.Array):
        return str(jax.random.key_impl(key))
    # An abstract key's impl name is only on a private field.
    return getattr(getattr(key.dtype, "_impl", None), "name", None)


def _type_name(x) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}"


def _escape(key: str) -> str:
    return urllib.parse.quote(key, safe="") or "%"


def _join(prefix: str, part: str) -> str:
    return f"{prefix}/{part}" if prefix else part


def _shown(path: str) -> str:
    return path or "<root>"


_SCALAR_TYPES = {"bool": (bool, np.bool_), "int": (int, np.int64), "float": (float, np.float64),
                 "complex": (complex, np.complex128)}


def _is_py_scalar(x) -> bool:
    return isinstance(x, (bool, int, float, complex)) and not isinstance(x, np.generic)


def _scalar_kind(x) -> str:
    """"bool", "int", "float" or "complex" for a Python scalar (bool before int: it is one)."""
    return next(k for k, (t, _) in _SCALAR_TYPES.items() if isinstance(x, t))


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _savable_array(arr: np.ndarray, path: str) -> Tuple[np.ndarray, str]:
    """The array to write for a leaf and its dtype's name (a view for exotic dtypes)."""
    dtype = arr.dtype
    if dtype.kind == "O":
        raise CheckpointError(f"leaf {_shown(path)!r} is an object array; checkpoints hold "
                              "numeric arrays only (no pickle)")
    if dtype.kind in "biufcmMSU" and dtype.fields is None:
        return _contiguous(arr), dtype.str
    if dtype.kind == "V" and dtype.fields is None and dtype.itemsize in (1, 2, 4, 8):
        # ml_dtypes (bfloat16, float8_*, int4 ...): a .npy header cannot name them.
        as_uint = np.dtype(f"u{dtype.itemsize}")
        return _contiguous(arr).view(as_uint), dtype.name
    raise CheckpointError(f"leaf {_shown(path)!r} has dtype {dtype} that a checkpoint cannot hold")


# ----------------------------------------------------------------------------- the walk

class _Node(NamedTuple):
    """One place of a tree, in the record's vocabulary."""

    kind: str       # none dict namedtuple tuple list pytree | str scalar prng_key array
    info: dict      # what the record keeps besides the children (keys, type, fields, ...)
    children: list  # [(path part, child)]


_LEAVES = ("str", "scalar", "prng_key", "array")
_ARRAYS = (np.ndarray, np.generic, jax.Array, jax.ShapeDtypeStruct)


def _classify(x, path: str, what: str = "leaf") -> _Node:
    """The one type cascade: save walks the tree with it, restore walks `like` with it."""
    if x is None:
        return _Node("none", {}, [])
    if isinstance(x, dict):
        bad = [k for k in x if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"dict at {_shown(path)!r} has non-string key {bad[0]!r}; "
                                  "checkpoint dict keys must be strings")
        return _Node("dict", {"keys": list(x)}, [(_escape(k), v) for k, v in x.items()])
    if _is_namedtuple(x):
        fields = list(type(x)._fields)
        return _Node("namedtuple", {"type": _type_name(x), "fields": fields},
                     [(_escape(f), v) for f, v in zip(fields, x)])
    if isinstance(x, (tuple, list)):
        return _Node("tuple" if isinstance(x, tuple) else "list", {},
                     [(str(i), v) for i, v in enumerate(x)])
    if isinstance(x, str):
        return _Node("str", {"value": x}, [])
    if _is_py_scalar(x):
        return _Node("scalar", {"type": _scalar_kind(x)}, [])
    if _is_prng_key(x):
        return _Node("prng_key", {"impl": _impl_name(x), "shape": list(x.shape)}, [])
    if isinstance(x, _ARRAYS):
        return _Node("array", {"dtype": np.dtype(x.dtype).name, "shape": list(x.shape)}, [])
    # Any other registered pytree node (e.g. a flax struct): its children by index.
    children = jax.tree_util.tree_flatten(x, is_leaf=lambda c: c is not x)[0]
    if len(children) == 1 and children[0] is x:
        raise CheckpointError(f"{what} {_shown(path)!r} is a {type(x).__name__}, which a "
                              "checkpoint cannot hold (arrays, scalars, str, None, dicts, "
                              "tuples, lists, NamedTuples and PRNG keys can)")
    return _Node("pytree", {"type": _type_name(x)}, [(str(i), c) for i, c in enumerate(children)])


def _record_children(node: dict) -> list:
    """[(path part, child node)] of a record node: the parts `_classify` names them by."""
    names = node.get("keys", node.get("fields"))
    children = node.get("children", [])
    parts = [_escape(k) for k in names] if names is not None else map(str, range(len(children)))
    return list(zip(parts, children))


def _assemble(kind: str, info: dict, values: list, like=None):
    """A container of `kind` holding `values`: `like`'s own type when given, else plain
    Python (NamedTuples as stand-ins with the recorded name and fields)."""
    if kind == "none":
        return None
    if kind == "dict":
        d = dict(zip(info["keys"], values))
        if like is not None and type(like) is not dict:
            try:
                return type(like)(d)
            except TypeError:  # e.g. a defaultdict, whose first argument is its factory
                pass
        return d
    if kind == "namedtuple":
        return (type(like) if like is not None else _namedtuple_type(info["type"], info["fields"]))(*values)
    if like is None:
        return list(values) if kind == "list" else tuple(values)
    if kind == "pytree":
        return jax.tree_util.tree_structure(like, is_leaf=lambda c: c is not like).unflatten(values)
    return type(like)(values)


# ----------------------------------------------------------------------------- encoding

def _encode(x, path: str, arrays: Optional[dict], what: str = "leaf") -> dict:
    """The record node of `x`; its leaves' arrays go into `arrays` (None: describe only,
    as for `like`)."""
    node = _classify(x, path, what)
    if node.kind in ("scalar", "prng_key", "array") and arrays is not None:
        return _store(x, node, path, arrays)
    record = {"kind": node.kind, **node.info}
    if node.kind not in _LEAVES and node.kind != "none":
        record["children"] = [_encode(c, _join(path, part), arrays, what) for part, c in node.children]
    return record


def _store(x, node: _Node, path: str, arrays: dict) -> dict:
    """Put a leaf's array into `arrays` under its path; returns the leaf's record node."""
    name = path or ROOT_NAME
    if node.kind == "scalar":
        try:
            arrays[name] = np.asarray(x, dtype=_SCALAR_TYPES[node.info["type"]][1])
        except OverflowError:
            raise CheckpointError(f"leaf {_shown(path)!r}: int {x} does not fit in int64") from None
        return {"kind": "scalar", "type": node.info["type"], "name": name}
    if node.kind == "prng_key":
        arrays[name] = np.asarray(jax.random.key_data(x))
        return {"kind": "prng_key", "impl": node.info["impl"], "name": name,
                "shape": node.info["shape"], "dtype": arrays[name].dtype.str}
    arrays[name], dtype = _savable_array(np.asarray(x), path)
    return {"kind": "array", "name": name, "dtype": dtype, "shape": list(arrays[name].shape)}


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def save(path, tree, *, metadata: Optional[dict] = None) -> str:
    """Save a pytree to `path` (an uncompressed .npz + JSON record), atomically; returns path.

    `tree` may nest dicts with str keys, tuples, lists, NamedTuples (e.g. optax states, a
    TrainState), None, NumPy/JAX arrays, Python scalars, strings and JAX PRNG keys (raw
    uint32 or typed). `metadata` is any JSON-serializable dict, read back by
    `read_metadata`. The file name is used as given (no ".npz" is appended). Unsupported
    leaves raise `CheckpointError` before anything is written.
    """
    if metadata is not None and not isinstance(metadata, dict):
        raise CheckpointError(f"metadata must be a dict, got {type(metadata).__name__}")
    arrays: Dict[str, np.ndarray] = {}
    structure = _encode(tree, "", arrays)
    record = {"format": FORMAT, "version": VERSION, "tree": structure,
              "metadata": metadata if metadata is not None else {}}
    try:
        text = json.dumps(record, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata is not JSON-serializable: {e}") from None

    def write(f):
        # What np.savez does, written out so that no name can clash with its own arguments.
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in list(arrays.items()) + [(RECORD_NAME, np.asarray(text))]:
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- decoding

def _open(path):
    """(NpzFile, record) for a checkpoint, or a CheckpointError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a funcnet checkpoint: the file is corrupt, truncated "
                              f"or not a .npz ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: not a funcnet checkpoint: a single .npy array, not a .npz")
    try:
        if RECORD_NAME not in npz.files:
            raise CheckpointError(f"{path}: not a funcnet checkpoint: a .npz without the "
                                  f"{RECORD_NAME!r} structure record (written by something else?)")
        try:
            text = npz[RECORD_NAME]
            record = json.loads(str(text[()]))
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path}: corrupt checkpoint: cannot read its structure record "
                                  f"({type(e).__name__}: {e})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a funcnet checkpoint: its record has format "
                                  f"{record.get('format') if isinstance(record, dict) else None!r}, "
                                  f"expected {FORMAT!r}")
        version = record.get("version")
        if version != VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is not "
                                  f"supported (this funcnet reads version {VERSION})")
        if not isinstance(record.get("tree"), dict):
            raise CheckpointError(f"{path}: corrupt checkpoint: its record has no tree")
    except BaseException:
        npz.close()
        raise
    return npz, record


_NODE_FIELDS = {  # what each kind of record node must hold, and the type of each entry
    "none": {}, "dict": {"keys": list, "children": list}, "tuple": {"children": list},
    "list": {"children": list}, "namedtuple": {"type": str, "fields": list, "children": list},
    "pytree": {"type": str, "children": list}, "str": {"value": str},
    "scalar": {"type": str, "name": str}, "array": {"name": str, "dtype": str, "shape": list},
    "prng_key": {"name": str, "impl": str, "shape": list, "dtype": str},
}


def _check_node(node, path):
    """Raise ValueError unless `node` is a well-formed record node."""
    if not isinstance(node, dict) or node.get("kind") not in _NODE_FIELDS:
        raise ValueError(f"unknown node {node!r:.80} at {_shown(path)!r}")
    for field, typ in _NODE_FIELDS[node["kind"]].items():
        if not isinstance(node.get(field), typ):
            raise ValueError(f"{node['kind']} node at {_shown(path)!r} lacks a valid {field!r}")
    names = node.get("keys", node.get("fields"))
    if names is not None and (len(names) != len(node["children"])
                              or not all(isinstance(k, str) for k in names)):
        raise ValueError(f"{node['kind']} node at {_shown(path)!r} has bad keys or fields")
    if "shape" in node and not all(isinstance(d, int) and d >= 0 for d in node["shape"]):
        raise ValueError(f"bad shape {node['shape']!r} at {_shown(path)!r}")
    if node["kind"] == "scalar" and node["type"] not in _SCALAR_TYPES:
        raise ValueError(f"bad scalar type {node['type']!r} at {_shown(path)!r}")


def _flat_record(node, path="", out=None, check=True):
    """{path: node} for every node (containers and leaves) of a structure record, checking
    each node's form on the way (ValueError on a malformed record)."""
    out = {} if out is None else out
    if check:
        _check_node(node, path)
    out[path] = node
    for part, child in _record_children(node):
        _flat_record(child, _join(path, part), out, check)
    return out


def _describe(node) -> str:
    kind = node.get("kind")
    if kind == "array":
        return f"array {_dtype_name(node['dtype'])}{tuple(node['shape'])}"
    if kind == "prng_key":
        return f"PRNG key<{node['impl']}>{tuple(node['shape'])}"
    if kind == "scalar":
        return f"Python {node['type']}"
    if kind in ("namedtuple", "pytree"):
        return f"{kind} {node['type'].rsplit('.', 1)[-1]}"
    if kind == "dict":
        return "dict"
    return kind


def _dtype_name(dtype_str: str) -> str:
    try:
        return np.dtype(dtype_str).name
    except TypeError:
        return str(dtype_str)


class _Reader:
    """Reads and checks the leaves of an open checkpoint."""

    def __init__(self, path, npz):
        self.path, self.npz = os.fspath(path), npz

    def leaf(self, node, path):
        """A leaf node's value: str, Python scalar, PRNG key or NumPy array."""
        kind = node["kind"]
        if kind == "str":
            return node["value"]
        return {"scalar": self.scalar, "prng_key": self.key, "array": self.array}[kind](node, path)

    def array(self, node, path) -> np.ndarray:
        name = node.get("name")
        if name not in self.npz.files:
            raise CheckpointError(f"{self.path}: corrupt checkpoint: array {name!r} for "
                                  f"{_shown(path)!r} is missing from the file")
        try:
            arr = self.npz[name]
        except Exception as e:
            raise CheckpointError(f"{self.path}: corrupt checkpoint: cannot read array {name!r} "
                                  f"({type(e).__name__}: {e})") from None
        kind = node["kind"]
        if kind == "array":
            want = self._dtype(node["dtype"], path)
            if want != arr.dtype:  # an exotic dtype stored as unsigned ints
                if arr.dtype.kind != "u" or arr.dtype.itemsize != want.itemsize:
                    raise CheckpointError(f"{self.path}: corrupt checkpoint: {_shown(path)!r} "
                                          f"recorded as {want} but stored as {arr.dtype}")
                arr = arr.view(want)
            if list(arr.shape) != list(node["shape"]):
                raise CheckpointError(f"{self.path}: corrupt checkpoint: {_shown(path)!r} recorded "
                                      f"with shape {tuple(node['shape'])} but stored with {arr.shape}")
        return arr

    def _dtype(self, name, path):
        try:
            return np.dtype(name)
        except TypeError:
            try:
                return jnp.dtype(name)
            except TypeError:
                raise CheckpointError(f"{self.path}: {_shown(path)!r} has dtype {name!r} "
                                      "that this installation does not know") from None

    def key(self, node, path):
        data = self.array(node, path)
        try:
            return jax.random.wrap_key_data(jnp.asarray(data), impl=node["impl"])
        except Exception as e:
            raise CheckpointError(f"{self.path}: cannot rebuild PRNG key {_shown(path)!r} with impl "
                                  f"{node.get('impl')!r} ({type(e).__name__}: {e})") from None

    def scalar(self, node, path):
        arr = self.array(node, path)
        typ = _SCALAR_TYPES.get(node.get("type"), (None,))[0]
        if typ is None or arr.shape != ():
            raise CheckpointError(f"{self.path}: corrupt checkpoint: bad scalar {_shown(path)!r}")
        return typ(arr[()])


_NAMEDTUPLES: Dict[Tuple[str, Tuple[str, ...]], type] = {}


def _namedtuple_type(type_name: str, fields) -> type:
    """A stand-in NamedTuple type with the recorded name and fields (nothing is imported)."""
    key = (type_name, tuple(fields))
    if key not in _NAMEDTUPLES:
        short = re.sub(r"\W", "_", type_name.rsplit(".", 1)[-1]) or "Record"
        if not short.isidentifier() or keyword.iskeyword(short):
            short = "Record"
        _NAMEDTUPLES[key] = collections.namedtuple(short, list(fields), rename=True)
    return _NAMEDTUPLES[key]


def _rebuild(reader: _Reader, node, path=""):
    """The tree a (checked) record describes, in plain Python types (no `like`)."""
    if node["kind"] in _LEAVES:
        return reader.leaf(node, path)
    values = [_rebuild(reader, c, _join(path, part)) for part, c in _record_children(node)]
    return _assemble(node["kind"], node, values)


# ----------------------------------------------------------------------------- restoring into `like`

def _later_fields(like, saved: Dict[str, dict], path="", out=None) -> dict:
    """{path: default} of `like`'s NamedTuple fields that declare a default and that the
    checkpoint lacks: fields added to the type after it was written."""
    out = {} if out is None else out
    node = _classify(like, path, "`like` leaf")
    defaults = getattr(type(like), "_field_defaults", {}) if node.kind == "namedtuple" else {}
    for i, (part, child) in enumerate(node.children):
        child_path = _join(path, part)
        name = node.info["fields"][i] if node.kind == "namedtuple" else None
        if name in defaults and child_path not in saved:
            out[child_path] = defaults[name]
        else:
            _later_fields(child, saved, child_path, out)
    return out


def _differences(reader: _Reader, saved: Dict[str, dict], wanted: Dict[str, dict],
                 later=frozenset()) -> List[str]:
    """Every difference, reported at the topmost path where it starts (no per-leaf noise);
    paths at or below a field in `later` (see `_later_fields`) are not missing."""
    missing, extra = set(wanted) - set(saved), set(saved) - set(wanted)
    missing = {p for p in missing
               if not any(p == f or p.startswith(f + "/") for f in later)}
    differing = {p for p in set(saved) & set(wanted) if not _compatible(reader, saved[p], wanted[p])}

    def below(path, paths):
        parts = path.split("/") if path else []
        ancestors = [""] + ["/".join(parts[:i]) for i in range(1, len(parts))]
        return any(a in paths for a in ancestors if a != path)

    diffs = []
    for path in sorted(missing):
        if not below(path, missing | differing):
            diffs.append(f"missing in checkpoint: {_shown(path)} ({_describe(wanted[path])})")
    for path in sorted(extra):
        if not below(path, extra | differing):
            diffs.append(f"extra in checkpoint: {_shown(path)} ({_describe(saved[path])})")
    for path in sorted(differing):
        if not below(path, differing):
            diffs.append(f"differs at {_shown(path)}: checkpoint has {_describe(saved[path])}, "
                         f"like has {_describe(wanted[path])}")
    return diffs


def _compatible(reader, node, want) -> bool:
    kind, wkind = node.get("kind"), want["kind"]
    if wkind == "scalar":
        # Python scalars are weakly typed: a 0-d array of the same kind also restores.
        if kind == "scalar":
            return node["type"] == want["type"]
        return kind == "array" and node["shape"] == []
    if kind != wkind:
        return False
    if kind in ("namedtuple", "pytree"):
        return node["type"].rsplit(".", 1)[-1] == want["type"].rsplit(".", 1)[-1]
    if kind == "prng_key":
        return want["impl"] in (None, node["impl"]) and node["shape"] == want["shape"]
    if kind == "array":
        try:
            return (reader._dtype(node["dtype"], "") == np.dtype(want["dtype"])
                    and node["shape"] == want["shape"])
        except (CheckpointError, TypeError):
            return False
    return True


def _place(value: np.ndarray, like_leaf):
    """A restored leaf in the array type (and sharding) of the `like` leaf."""
    if isinstance(like_leaf, (np.ndarray, np.generic)):
        return value if isinstance(like_leaf, np.ndarray) else value[()]
    sharding = getattr(like_leaf, "sharding", None)
    if sharding is not None:
        try:
            return jax.device_put(value, sharding)
        except Exception:  # a sharding this process cannot place on: default device
            pass
    return jnp.asarray(value, dtype=value.dtype)


def _restore_like(reader: _Reader, saved: Dict[str, dict], like, path="", later=None):
    """`like`'s tree with the saved values: its containers' own types, its leaves' array
    types; a field in `later` (see `_later_fields`) takes its NamedTuple default."""
    node = _classify(like, path, "`like` leaf")
    later = {} if later is None else later
    if node.kind not in _LEAVES:
        paths = [_join(path, part) for part, _ in node.children]
        values = [later[p] if p in later else _restore_like(reader, saved, c, p, later)
                  for p, (_, c) in zip(paths, node.children)]
        return _assemble(node.kind, node.info, values, like)
    saved_node = saved[path]
    if node.kind == "str":
        return str(saved_node["value"])
    if node.kind == "scalar":
        return type(like)(np.asarray(reader.leaf(saved_node, path))[()])
    if node.kind == "prng_key":
        key = reader.key(saved_node, path)
        sharding = getattr(like, "sharding", None)
        return jax.device_put(key, sharding) if sharding is not None else key
    return _place(reader.array(saved_node, path), like)


def restore(path, like=None):
    """Read a checkpoint written by `save`.

    Without `like`: dicts, tuples, lists, None and strings as saved; NamedTuples as
    stand-in `collections.namedtuple`s with the same type name and fields; arrays as NumPy
    arrays of the exact saved dtype; Python scalars as Python scalars; typed PRNG keys as
    JAX key arrays (raw uint32 keys are plain uint32 arrays, as saved).

    With `like` (a tree of the expected structure, e.g. a freshly initialized TrainState):
    returns a tree of exactly `like`'s structure and types; NumPy leaves come back as
    NumPy, JAX arrays / ShapeDtypeStructs as JAX arrays (with `like`'s sharding when it has
    one). Paths, container kinds, NamedTuple type names, shapes, dtypes and PRNG impls must
    agree, else `CheckpointMismatchError` lists every difference (missing and extra paths,
    shape and dtype mismatches). One exception: a NamedTuple field that declares a default
    and that the checkpoint lacks (a field added to the type later, such as
    TrainState.loss_scale) comes back as that default. A corrupt, truncated or foreign
    file is a `CheckpointError` naming the file. Nothing is ever unpickled.
    """
    npz, record = _open(path)
    with npz:
        reader = _Reader(path, npz)
        try:
            saved = _flat_record(record["tree"])
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{path}: corrupt checkpoint record: {e}") from None
        if like is None:
            return _rebuild(reader, record["tree"], "")
        wanted = _flat_record(_encode(like, "", None, "`like` leaf"), check=False)
        later = _later_fields(like, saved)
        diffs = _differences(reader, saved, wanted, later)
        if diffs:
            raise CheckpointMismatchError(path, diffs)
        return _restore_like(reader, saved, like, "", later)


def read_metadata(path) -> dict:
    """The `metadata` dict saved with a checkpoint (without reading its arrays).

    Returns the dict. Raises a CheckpointError for a missing, foreign or corrupt file.
    """
    npz, record = _open(path)
    npz.close()
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint: its metadata is not a dict")
    return metadata


# ----------------------------------------------------------------------------- step files

def step_path(directory, step: int, prefix: str = "ckpt_") -> str:
    """The file a step's checkpoint is written to: `{directory}/{prefix}{step:08d}.npz`.

    Returns the path as a string (nothing is written); a CheckpointError for a step that is
    not a non-negative integer.
    """
    return os.path.join(os.fspath(directory), f"{prefix}{_step_int(step):08d}.npz")


def _step_int(step) -> int:
    try:
        value = operator.index(step)  # ints, NumPy and 0-d JAX integers; not 1.5 or "3"
    except TypeError:
        value = None
    if value is None or isinstance(step, bool) or value < 0:
        raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
    return value


def _step_files(directory, prefix) -> List[Tuple[int, str]]:
    """(step, path) of every `{prefix}<digits>.npz` in `directory`, sorted by step."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.npz$")
    found = []
    for name in os.listdir(directory):
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def latest(directory, prefix: str = "ckpt_") -> Optional[str]:
    """The path of the newest checkpoint in `directory` by the step number in its name
    (`{prefix}<digits>.npz`, e.g. ckpt_00000120.npz), or None when there is none.
    Temporary files of interrupted saves never match.

    Returns the path as a string, or None; it never raises for a missing directory.
    """
    found = _step_files(directory, prefix)
    return found[-1][1] if found else None


def save_step(directory, step: int, tree, *, metadata: Optional[dict] = None,
              keep: Optional[int] = 3, prefix: str = "ckpt_") -> str:
    """Atomically write `{directory}/{prefix}{step:08d}.npz`, then prune old ones.

    `metadata` gets `"step": step` added unless it has a "step" already. After the new file
    is safely in place, checkpoints beyond the newest `keep` (by step number) are removed;
    the one just written is never removed. `keep=None` keeps everything. Temp files that a
    process killed mid-save left behind (".{prefix}<step>.npz.*.tmp") are removed too.
    Returns the path.

    Raises what `save` raises (CheckpointError) and a CheckpointError for an invalid step
    or keep.
    """
    step = _step_int(step)
    if keep is not None:
        try:
            keep = as_int(keep, "keep", "save_step", error=CheckpointError)
        except CheckpointError:
            raise CheckpointError(f"keep must be a positive int or None, got {keep!r}") from None
    os.makedirs(os.fspath(directory), exist_ok=True)
    metadata = dict(metadata or {})
    metadata.setdefault("step", step)
    path = save(step_path(directory, step, prefix), tree, metadata=metadata)
    old = [p for _, p in _step_files(directory, prefix)[:-keep] if p != path] if keep else []
    # Temp files left by a process killed mid-save (they never count as checkpoints).
    stale = re.compile(rf"^\.{re.escape(prefix)}\d+\.npz\..+\.tmp$")
    old += [os.path.join(os.fspath(directory), n) for n in os.listdir(directory) if stale.match(n)]
    for p in old:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass
    if old:
        fsync_dir(os.path.abspath(os.fspath(directory)))
    return path
