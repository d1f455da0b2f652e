"""funcnet.checkpoint: exact round trips, `like` checking, bad files, atomic saves, step files."""
import collections
import json
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet
from funcnet import FuncnetError
from funcnet import checkpoint as ck
from funcnet.checkpoint import CheckpointError, CheckpointMismatchError
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile


class TrainLike(NamedTuple):
    params: object
    state: object
    opt_state: object
    step: object
    key: object


def _params(key):
    k1, k2 = jax.random.split(key)
    return ({"w": fr.normal(k1, (3, 4)), "b": jnp.zeros(4)}, {},
            {"w": fr.normal(k2, (4, 2)), "b": jnp.arange(2.0)})


def _tree(seed=0):
    """A TrainState-like tree after one adam step, with raw and typed keys and odd leaves."""
    key = jax.random.PRNGKey(seed)
    params = _params(key)
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ts = TrainLike(params=params, state=({}, {"mean": jnp.full(3, 0.25)}, {}),
                   opt_state=opt_state, step=jnp.asarray(7, jnp.int32),
                   key=jax.random.key(seed + 1))
    return {"train": ts, "raw_key": jax.random.PRNGKey(seed + 2),
            "rbg_keys": jax.random.split(jax.random.key(3, impl="rbg"), 2),
            "extras": [np.arange(5, dtype=np.int64), np.float64(2.5), None, "note", 3, 0.5, True],
            "bf16": jnp.linspace(0, 1, 4, dtype=jnp.bfloat16), "empty": {}, "slash/key": np.ones(2)}


def _bits(x):
    """A leaf as comparable bytes: keys by their key data, arrays by their raw bytes."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(jax.random.key_impl(x)), np.asarray(jax.random.key_data(x)).tobytes())
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        a = np.asarray(x)
        return (a.dtype.str if a.dtype.kind != "V" else a.dtype.name, a.shape, a.tobytes())
    return (type(x), x)


def _assert_bitwise_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a, is_leaf=lambda x: x is None)
    lb, tb = jax.tree_util.tree_flatten(b, is_leaf=lambda x: x is None)
    assert ta == tb
    assert [_bits(x) for x in la] == [_bits(x) for x in lb]


def test_round_trip_with_like_is_bitwise_and_keeps_types(tmp_path):
    tree = _tree()
    path = ck.save(tmp_path / "c.npz", tree, metadata={"epoch": 3, "lr": np.float32(0.5)})
    assert path == str(tmp_path / "c.npz")
    back = ck.restore(path, like=_tree(seed=9))  # same structure, different values
    _assert_bitwise_equal(tree, back)
    ts = back["train"]
    assert type(ts) is TrainLike
    assert type(ts.opt_state[0]) is optax.ScaleByAdamState and type(ts.opt_state[1]) is optax.EmptyState
    assert isinstance(ts.params[0]["w"], jax.Array) and isinstance(back["extras"][0], np.ndarray)
    assert type(back["extras"][1]) is np.float64 and back["extras"][4:] == [3, 0.5, True]
    assert back["bf16"].dtype == jnp.bfloat16
    # The typed key is a real key again: it draws the same numbers as the original.
    np.testing.assert_array_equal(jax.random.normal(ts.key, (3,)), jax.random.normal(tree["train"].key, (3,)))
    assert str(jax.random.key_impl(back["rbg_keys"])) == "rbg"
    assert ck.read_metadata(path) == {"epoch": 3, "lr": 0.5}


def test_restored_optimizer_continues_identically(tmp_path):
    tree = _tree()
    ck.save(tmp_path / "c.npz", tree)
    back = ck.restore(tmp_path / "c.npz", like=tree)
    opt = optax.adam(1e-3)
    grads = jax.tree.map(lambda p: jnp.full_like(p, -0.25), tree["train"].params)
    u1, s1 = opt.update(grads, tree["train"].opt_state, tree["train"].params)
    u2, s2 = opt.update(grads, back["train"].opt_state, back["train"].params)
    _assert_bitwise_equal((u1, s1), (u2, s2))
    assert int(s2[0].count) == 2


def test_restore_without_like_rebuilds_plain_containers(tmp_path):
    tree = _tree()
    ck.save(tmp_path / "c.npz", tree)
    back = ck.restore(tmp_path / "c.npz")
    ts = back["train"]
    assert type(ts).__name__ == "TrainLike" and ts._fields == TrainLike._fields
    assert type(ts.opt_state[0]).__name__ == "ScaleByAdamState" and ts.opt_state[1] == ()
    assert isinstance(ts.params, tuple) and ts.params[1] == {} and isinstance(back["extras"], list)
    assert isinstance(ts.params[0]["w"], np.ndarray)  # exact dtypes, as NumPy
    # A NumPy scalar comes back as a 0-d array; Python scalars, None and str as themselves.
    assert isinstance(back["extras"][1], np.ndarray) and back["extras"][1].dtype == np.float64
    assert float(back["extras"][1]) == 2.5
    assert back["extras"][2:] == [None, "note", 3, 0.5, True]
    assert [type(v) for v in back["extras"][4:]] == [int, float, bool]
    assert list(back) == list(tree)  # dict order is kept
    arrays = lambda t: [_bits(x)[1:] for x in jax.tree_util.tree_leaves(t)
                        if isinstance(x, (np.ndarray, np.generic, jax.Array))]
    assert arrays(tree) == arrays(back)
    assert jax.dtypes.issubdtype(ts.key.dtype, jax.dtypes.prng_key)


def test_file_is_plain_numpy_without_pickle(tmp_path):
    tree = _tree()
    ck.save(tmp_path / "c.npz", tree, metadata={"note": "hi"})
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:
        names = set(npz.files)
        assert {"train/params/0/w", "train/opt_state/0/mu/2/b", "train/step", "train/key",
                "raw_key", "extras/0", "slash%2Fkey", "%funcnet"} <= names
        np.testing.assert_array_equal(npz["train/params/0/w"], tree["train"].params[0]["w"])
        np.testing.assert_array_equal(npz["train/key"], jax.random.key_data(tree["train"].key))
        record = json.loads(str(npz["%funcnet"]))
        for name in npz.files:
            assert npz[name].dtype.kind != "O"
    assert record["format"] == "funcnet.checkpoint" and record["version"] == 1
    assert record["metadata"] == {"note": "hi"}
    assert record["tree"]["kind"] == "dict" and record["tree"]["keys"][0] == "train"
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_single_leaf_and_custom_pytree(tmp_path):
    ck.save(tmp_path / "leaf.npz", jnp.arange(3.0))
    np.testing.assert_array_equal(ck.restore(tmp_path / "leaf.npz"), [0.0, 1.0, 2.0])

    @jax.tree_util.register_pytree_node_class
    class Pair:
        def __init__(self, a, b):
            self.a, self.b = a, b

        def tree_flatten(self):
            return (self.a, self.b), None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls(*children)

    ck.save(tmp_path / "pair.npz", {"p": Pair(jnp.ones(2), np.int32(4))})
    back = ck.restore(tmp_path / "pair.npz", like={"p": Pair(jnp.zeros(2), np.int32(0))})
    assert isinstance(back["p"], Pair) and int(back["p"].b) == 4
    np.testing.assert_array_equal(back["p"].a, [1.0, 1.0])
    assert ck.restore(tmp_path / "pair.npz")["p"][1] == 4  # without like: a tuple
    # Abstract templates (jax.eval_shape) work as `like` too, typed keys included.
    abstract = jax.eval_shape(lambda: jnp.zeros(3))
    np.testing.assert_array_equal(ck.restore(tmp_path / "leaf.npz", like=abstract), [0.0, 1.0, 2.0])
    tree = {"k": jax.random.key(5, impl="rbg"), "w": jnp.ones(2)}
    ck.save(tmp_path / "k.npz", tree)
    back = ck.restore(tmp_path / "k.npz", like=jax.eval_shape(lambda: tree))
    _assert_bitwise_equal(tree, back)
    with pytest.raises(CheckpointMismatchError, match="differs at k"):
        ck.restore(tmp_path / "k.npz", like=jax.eval_shape(lambda: {**tree, "k": jax.random.key(0)}))


def test_mismatched_like_lists_every_difference(tmp_path):
    tree = _tree()
    ck.save(tmp_path / "c.npz", tree)
    like = _tree()
    like["train"] = like["train"]._replace(step=jnp.zeros(2),
                                           opt_state=optax.sgd(0.1).init(like["train"].params))
    like["bf16"] = jnp.zeros(4, jnp.float32)
    like["new"] = {"a": jnp.zeros(1)}
    del like["raw_key"]
    like["extras"] = like["extras"][:5]
    with pytest.raises(CheckpointMismatchError) as info:
        ck.restore(tmp_path / "c.npz", like=like)
    e = info.value
    assert e.differences == [
        "missing in checkpoint: new (dict)",
        "extra in checkpoint: extras/5 (Python float)",
        "extra in checkpoint: extras/6 (Python bool)",
        "extra in checkpoint: raw_key (array uint32(2,))",
        "differs at bf16: checkpoint has array bfloat16(4,), like has array float32(4,)",
        # adam's state against sgd's: reported once where the types part, not per leaf.
        "differs at train/opt_state/0: checkpoint has namedtuple ScaleByAdamState, "
        "like has namedtuple EmptyState",
        "differs at train/step: checkpoint has array int32(), like has array float32(2,)",
    ]
    assert str(tmp_path / "c.npz") in str(e) and "7 difference(s)" in str(e)
    with pytest.raises(CheckpointMismatchError, match=r"differs at train/key: checkpoint has PRNG "
                                                      r"key<threefry2x32>\(\), like has PRNG key<rbg>"):
        ck.restore(tmp_path / "c.npz", like={**tree, "train": tree["train"]._replace(
            key=jax.random.key(0, impl="rbg"))})


class Record(NamedTuple):  # a type whose first version had only w and n
    w: jax.Array
    n: int
    scale: object = None  # fields added later, with defaults
    extra: object = (1, 2)


# The same type's first version, and a version adding a field without a default.
RecordBefore = collections.namedtuple("Record", "w n")
RecordRequired = collections.namedtuple("Record", "w n count")


def test_a_field_added_later_with_a_default_restores_as_the_default(tmp_path):
    path = tmp_path / "before.npz"
    ck.save(path, {"s": RecordBefore(jnp.arange(3.0), 4)})
    like = {"s": Record(jnp.zeros(3), 0, scale=jnp.ones(()), extra=(jnp.zeros(2), 5))}
    back = ck.restore(path, like=like)["s"]
    assert type(back) is Record and back.n == 4 and np.array_equal(back.w, [0.0, 1.0, 2.0])
    assert back.scale is None and back.extra == (1, 2)  # the defaults, whatever `like` held
    # a field without a default is still missing; a saved field is restored, not defaulted
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint: s/count"):
        ck.restore(path, like={"s": RecordRequired(jnp.zeros(3), 0, jnp.zeros(()))})
    ck.save(path, {"s": Record(jnp.arange(3.0), 4, scale=jnp.float32(8.0), extra=(jnp.ones(2), 6))})
    back = ck.restore(path, like=like)["s"]
    assert float(back.scale) == 8.0 and back.extra[1] == 6


def _assert_clear(path, pattern):
    with pytest.raises(CheckpointError, match=pattern) as info:
        ck.restore(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        ck.read_metadata(path)


def test_corrupt_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.npz"
    ck.save(good, _tree())
    blob = good.read_bytes()

    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_clear(tmp_path / "random.npz", "not a funcnet checkpoint: the file is corrupt, truncated")
    (tmp_path / "trunc.npz").write_bytes(blob[: len(blob) // 2])
    _assert_clear(tmp_path / "trunc.npz", "corrupt, truncated or not a .npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    _assert_clear(tmp_path / "empty.npz", "not a funcnet checkpoint")

    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    _assert_clear(tmp_path / "foreign.npz", "a .npz without the '%funcnet' structure record")
    np.save(tmp_path / "single.npy", np.ones(3))
    _assert_clear(tmp_path / "single.npy", "a single .npy array, not a .npz")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    _assert_clear(tmp_path / "other.zip", "without the '%funcnet' structure record")
    # An object array (which only pickle could load) where our record should be.
    np.savez(tmp_path / "pickled.npz", **{"%funcnet": np.array([{"format": 1}], dtype=object)})
    _assert_clear(tmp_path / "pickled.npz", "cannot read its structure record")
    # Our record, but a different format tag or a future version.
    for record, pattern in (({"format": "other"}, "record has format 'other'"),
                            ({"format": "funcnet.checkpoint", "version": 99}, "version 99 is not supported")):
        np.savez(tmp_path / "tag.npz", **{"%funcnet": np.asarray(json.dumps(record))})
        _assert_clear(tmp_path / "tag.npz", pattern)
    _assert_clear(tmp_path / "nowhere.npz", "no such checkpoint file")


def test_flipped_bytes_inside_an_array_are_detected(tmp_path):
    good = tmp_path / "good.npz"
    ck.save(good, {"w": np.arange(1000, dtype=np.float64)})
    blob = bytearray(good.read_bytes())
    start = blob.index(np.arange(1000, dtype=np.float64)[500:502].tobytes())
    blob[start:start + 4] = b"\xff\xff\xff\xff"
    (tmp_path / "flipped.npz").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"flipped\.npz: corrupt checkpoint: cannot read array 'w'"):
        ck.restore(tmp_path / "flipped.npz")


def test_record_and_arrays_that_disagree(tmp_path):
    ck.save(tmp_path / "c.npz", {"w": np.ones(3)})
    with np.load(tmp_path / "c.npz") as npz:
        record = str(npz["%funcnet"])
    np.savez(tmp_path / "lying.npz", **{"%funcnet": np.asarray(record), "w": np.ones(4)})
    with pytest.raises(CheckpointError, match=r"'w' recorded with shape \(3,\) but stored with \(4,\)"):
        ck.restore(tmp_path / "lying.npz")
    np.savez(tmp_path / "gap.npz", **{"%funcnet": np.asarray(record)})
    with pytest.raises(CheckpointError, match="array 'w' for 'w' is missing from the file"):
        ck.restore(tmp_path / "gap.npz")


def test_malformed_records_are_clear_errors(tmp_path):
    bad_trees = [{"kind": "dict", "keys": ["a"], "children": []},
                 {"kind": "mystery"},
                 {"kind": "array", "name": "w", "dtype": "float32", "shape": [-1]},
                 {"kind": "tuple", "children": [{"kind": "scalar", "type": "object", "name": "x"}]}]
    for i, tree in enumerate(bad_trees):
        record = {"format": "funcnet.checkpoint", "version": 1, "tree": tree, "metadata": {}}
        path = tmp_path / f"bad{i}.npz"
        np.savez(path, **{"%funcnet": np.asarray(json.dumps(record))})
        for like in (None, {"a": np.ones(1)}):
            with pytest.raises(CheckpointError, match=rf"bad{i}\.npz: corrupt checkpoint record"):
                ck.restore(path, like=like)
    # A NamedTuple recorded with a name Python cannot use still restores, under a stand-in.
    record = {"format": "funcnet.checkpoint", "version": 1, "metadata": {},
              "tree": {"kind": "namedtuple", "type": "x.class", "fields": ["_a", "def"],
                       "children": [{"kind": "none"}, {"kind": "str", "value": "v"}]}}
    np.savez(tmp_path / "odd.npz", **{"%funcnet": np.asarray(json.dumps(record))})
    assert tuple(ck.restore(tmp_path / "odd.npz")) == (None, "v")


def _no_temp_files(directory, expected):
    assert sorted(os.listdir(directory)) == sorted(expected)


def test_failed_save_mid_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    ck.save(path, {"w": np.ones(3)})
    before = path.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        ck.save(path, {"a": np.zeros(100), "b": np.zeros(100)})
    monkeypatch.setattr(np.lib.format, "write_array", real)
    assert len(calls) == 2  # it did fail half-way through
    assert path.read_bytes() == before
    np.testing.assert_array_equal(ck.restore(path)["w"], np.ones(3))
    _no_temp_files(tmp_path, ["c.npz"])


def test_failed_rename_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    ck.save(path, {"w": np.ones(3)})
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        ck.save(path, {"w": np.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    _no_temp_files(tmp_path, ["c.npz"])


def test_unsavable_trees_fail_before_writing(tmp_path):
    path = tmp_path / "c.npz"
    ck.save(path, {"w": np.ones(3)})
    before = path.read_bytes()
    for bad, pattern in (({"w": np.array([object()], dtype=object)}, "'w' is an object array"),
                         ({1: np.ones(2)}, "non-string key 1"),
                         ({"f": lambda x: x}, "'f' is a function, which a checkpoint cannot hold"),
                         ({"n": 2 ** 70}, "does not fit in int64")):
        with pytest.raises(CheckpointError, match=pattern):
            ck.save(path, bad)
    with pytest.raises(CheckpointError, match="metadata is not JSON-serializable"):
        ck.save(path, {"w": np.ones(3)}, metadata={"f": object()})
    assert path.read_bytes() == before
    _no_temp_files(tmp_path, ["c.npz"])


def test_save_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    ck.save(tmp_path / "c.npz", {"w": np.ones(3)})
    assert len(synced) == (2 if os.name == "posix" else 1)


def test_save_step_latest_and_keep(tmp_path):
    assert ck.latest(tmp_path) is None and ck.latest(tmp_path / "absent") is None
    d = tmp_path / "run"
    for step in (1, 2, 10, 9, 11):
        p = ck.save_step(d, step, {"w": np.full(2, step)}, keep=3)
    assert p == str(d / "ckpt_00000011.npz")
    # Pruned by step number (not by name order or write order); the newest three stay.
    _no_temp_files(d, ["ckpt_00000009.npz", "ckpt_00000010.npz", "ckpt_00000011.npz"])
    assert ck.latest(d) == str(d / "ckpt_00000011.npz")
    assert ck.read_metadata(ck.latest(d)) == {"step": 11}
    np.testing.assert_array_equal(ck.restore(ck.latest(d))["w"], [11, 11])
    # Leftover temp files and other names never count; numbers compare as numbers.
    (d / ".ckpt_00000099.npz.abc.tmp").write_bytes(b"junk")
    (d / "ckpt_123.npz").write_bytes(b"")
    (d / "notes.txt").write_bytes(b"")
    assert ck.latest(d) == str(d / "ckpt_123.npz")
    # A step written below the newest is kept even when it is beyond `keep` by number.
    (d / "ckpt_123.npz").unlink()
    p = ck.save_step(d, 3, {"w": np.zeros(2)}, keep=2, metadata={"note": "x"})
    assert os.path.exists(p) and ck.read_metadata(p) == {"note": "x", "step": 3}
    # ... and the stale temp file of a killed save is cleaned up; other files are left alone.
    _no_temp_files(d, ["ckpt_00000003.npz", "ckpt_00000010.npz", "ckpt_00000011.npz", "notes.txt"])
    ck.save_step(d, 12, {"w": np.zeros(2)}, keep=None, prefix="best_")
    assert ck.latest(d, prefix="best_") == str(d / "best_00000012.npz")


def test_failed_save_step_prunes_nothing(tmp_path, monkeypatch):
    for step in (1, 2):
        ck.save_step(tmp_path, step, {"w": np.ones(1)}, keep=1 if step == 1 else 2)
    monkeypatch.setattr(os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError):
        ck.save_step(tmp_path, 3, {"w": np.ones(1)}, keep=1)
    monkeypatch.undo()
    _no_temp_files(tmp_path, ["ckpt_00000001.npz", "ckpt_00000002.npz"])


def test_save_step_argument_errors(tmp_path):
    for bad in (-1, 1.5, "3"):
        with pytest.raises(CheckpointError, match="step must be a non-negative integer"):
            ck.save_step(tmp_path, bad, {})
    for bad in (0, -2, 1.0):
        with pytest.raises(CheckpointError, match="keep must be a positive int or None"):
            ck.save_step(tmp_path, 1, {}, keep=bad)
    assert ck.save_step(tmp_path, np.int64(4), {}) == str(tmp_path / "ckpt_00000004.npz")
    assert issubclass(CheckpointError, FuncnetError)


# ----------------------------------------------------------------------------- old files

def _leaf_sums(tree):
    """{key path: float64 sum} of every non-str leaf (typed keys through their key data)."""
    def total(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return float(np.sum(np.asarray(leaf, dtype=np.float64)))

    return {jax.tree_util.keystr(p): total(leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0] if not isinstance(leaf, str)}


def test_a_file_written_by_the_first_version_still_restores():
    """tests/data/checkpoint_v1.npz was written by the checkpoint code of commit 1751940:
    a TrainState (dense, batch_norm, adam, one step) and one leaf of every other kind, with
    each leaf's sum in its metadata."""
    path = os.path.join(os.path.dirname(__file__), "data", "checkpoint_v1.npz")
    sums = ck.read_metadata(path)["sums"]
    model = funcnet.serial(funcnet.dense(4), funcnet.batch_norm(), funcnet.relu, funcnet.dense(2))
    like = {"train": funcnet.train.init_train_state(model, optax.adam(1e-2), (3, 5), jax.random.PRNGKey(0)),
            "extras": [None, "", 0, 0.0, False, jax.random.key(0), jnp.zeros(3, jnp.bfloat16),
                       (np.int64(0), np.zeros((0, 2)))],
            "weird/key %": np.zeros(2, np.int16)}
    restored = ck.restore(path, like=like)
    plain = ck.restore(path)
    assert _leaf_sums(restored) == sums == _leaf_sums(plain)
    assert type(restored["train"]) is funcnet.train.TrainState
    assert restored["extras"][:5] == plain["extras"][:5] == [None, "text", 3, 2.5, True]
    assert restored["extras"][6].dtype == jnp.bfloat16 == plain["extras"][6].dtype
    assert jax.dtypes.issubdtype(restored["extras"][5].dtype, jax.dtypes.prng_key)
    # the file predates TrainState.loss_scale: its five fields, and the restore fills in the default
    assert type(plain["train"]).__name__ == "TrainState"
    old_fields = ("params", "state", "opt_state", "step", "key")
    assert plain["train"]._fields == like["train"]._fields[:5] == old_fields
    assert restored["train"].loss_scale is None
    for a, b in zip(jax.tree_util.tree_leaves(restored["train"]), jax.tree_util.tree_leaves(plain["train"])):
        assert np.array_equal(np.asarray(a), b) and np.asarray(a).dtype == b.dtype
