"""Branches: fanout, parallel, fanin_sum, fanin_concat, residual, time_distributed.

The algebra (fanout + parallel + fanin_sum doubles; a zero-weight residual is the identity;
concatenation then its backward's split is the identity), forwards against NumPy, every
backward three ways in one model, a deliberately wrong fanout backward caught, the tuple
shapes through init / summary / param_paths / errors, and a small residual model through
fit, evaluate and a checkpoint round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import funcnet as fn
from funcnet.core import param_paths
from tests.reference import normal

KEY = jax.random.PRNGKey(0)
DOUBLER = fn.serial(fn.fanout(2), fn.parallel(fn.identity, fn.identity), fn.fanin_sum)


def test_fanout_parallel_fanin_sum_doubles_the_input_and_dy():
    x = jnp.asarray(normal(1, (3, 4)), jnp.float32)
    params, state = DOUBLER.init(KEY, x.shape)
    assert params == ({}, ({}, {}), {}) and state == ({}, ({}, {}), {})
    y, _ = DOUBLER.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), 2 * np.asarray(x), rtol=1e-6)
    dy = jnp.asarray(normal(2, (3, 4)), jnp.float32)
    dparams, dx = fn.backprop(DOUBLER, params, state, x, dy)
    np.testing.assert_allclose(np.asarray(dx), 2 * np.asarray(dy), rtol=1e-6)
    assert DOUBLER.output_shape((3, 4)) == (3, 4)


def test_fanout_copies_and_sums_back():
    layer = fn.fanout(3)
    x = jnp.arange(6.0).reshape(2, 3)
    y, _, cache = layer.forward({}, {}, x)
    assert len(y) == 3 and all(a is x for a in y)
    assert layer.output_shape((2, 3)) == ((2, 3),) * 3
    _, dx = layer.backward({}, cache, (x, 2 * x, 3 * x))
    np.testing.assert_array_equal(np.asarray(dx), 6 * np.asarray(x))


def test_residual_of_a_zero_weight_block_is_the_identity():
    block = fn.residual(fn.conv2d(3, 3, padding="SAME"), fn.relu, fn.conv2d(3, 3, padding="SAME"))
    params, state = block.init(KEY, (2, 5, 5, 3))
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    x = jnp.asarray(normal(3, (2, 5, 5, 3)), jnp.float32)
    y, _ = block.apply(zero, state, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
    dy = jnp.asarray(normal(4, (2, 5, 5, 3)), jnp.float32)
    _, dx = fn.backprop(block, zero, state, x, dy)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dy))
    # with weights, the block's output is added to x
    y2, _ = block.apply(params, state, x)
    inner = block.layers[1].layers[0]
    np.testing.assert_allclose(np.asarray(y2), np.asarray(inner.apply(params[1][0], state[1][0], x)[0] + x),
                               rtol=1e-6)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(2, 4), data=st.data())
def test_concat_matches_numpy_and_its_backward_splits_back(seed, rank, data):
    axis = data.draw(st.integers(-rank, rank - 1))
    base = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    shapes = [tuple(base[:axis % rank]) + (s,) + tuple(base[axis % rank + 1:]) for s in sizes]
    xs = tuple(normal(seed + i, s) for i, s in enumerate(shapes))
    layer = fn.fanin_concat(axis)
    assert layer.init(KEY, tuple(shapes)) == ({}, {})
    with jax.enable_x64(True):
        y, _, cache = layer.forward({}, {}, tuple(jnp.asarray(a) for a in xs))
        np.testing.assert_array_equal(np.asarray(y), np.concatenate(xs, axis))
        assert y.shape == layer.output_shape(tuple(shapes))
        _, pieces = layer.backward({}, cache, y)  # concat then split: the identity
    assert len(pieces) == len(xs)
    for piece, a in zip(pieces, xs):
        np.testing.assert_array_equal(np.asarray(piece), a)


def test_time_distributed_applies_the_layer_at_every_step():
    inner = fn.dense(3)
    layer = fn.time_distributed(inner)
    params, state = layer.init(KEY, (2, 4, 5))
    assert params["w"].shape == (5, 3) and state == {}  # the wrapped layer's own params
    x = jnp.asarray(normal(5, (2, 4, 5)), jnp.float32)
    y, _ = layer.apply(params, state, x)
    assert y.shape == layer.output_shape((2, 4, 5)) == (2, 4, 3)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    for n in range(2):
        for t in range(4):
            np.testing.assert_allclose(np.asarray(y[n, t]), np.asarray(x[n, t]) @ w + b, rtol=1e-5)


def test_every_backward_three_ways():
    """One small model with every combinator but time_distributed (one compilation);
    with_manual_grads on a residual model is exercised through fit below."""
    model = fn.serial(
        fn.dense(4),
        fn.residual(fn.dense(4), fn.batch_norm(), fn.tanh, shortcut=fn.dense(4)),
        fn.fanout(3), fn.parallel(fn.serial(fn.dense(3), fn.tanh), fn.dense(2), fn.identity),
        fn.fanin_concat(), fn.dense(5))
    with jax.enable_x64(True):
        params, state = model.init(KEY, (4, 5), jnp.float64)
        report = fn.check_gradients(model, params, state, jnp.asarray(normal(6, (4, 5))),
                                    jnp.array([0, 4, 2, 3]), fn.losses.softmax_cross_entropy,
                                    train=True)
    assert report.ok, report
    assert len(report.rows) == 2 * 6 + 2 + 1  # 6 dense, 1 batch norm, the input


def test_time_distributed_backward_three_ways():
    model = fn.serial(fn.time_distributed(fn.serial(fn.dense(2), fn.sigmoid)),
                      fn.time_distributed(fn.dense(3)))
    with jax.enable_x64(True):
        params, state = model.init(KEY, (2, 3, 5), jnp.float64)
        report = fn.check_gradients(model, params, state, jnp.asarray(normal(7, (2, 3, 5))))
    assert report.ok, report
    assert len(report.rows) == 5


def test_a_fanout_backward_that_drops_a_gradient_fails_check_gradients():
    wrong = fn.fanout(2)._replace(backward=lambda params, cache, dy: ({}, dy[0]))
    make = lambda split: fn.serial(fn.dense(3), split, fn.parallel(fn.dense(2), fn.dense(2)),
                                   fn.fanin_sum)
    with jax.enable_x64(True):
        params, state = make(fn.fanout(2)).init(KEY, (2, 3), jnp.float64)
        x = jnp.asarray(normal(8, (2, 3)))
        good = fn.check_gradients(make(fn.fanout(2)), params, state, x)
        bad = fn.check_gradients(make(wrong), params, state, x)
    assert good.ok, good
    assert not bad.ok
    failed = {row.path for row in bad.failures}
    assert "0:dense/w" in failed and "input" in failed and "2:parallel/0:dense/w" not in failed


def test_branch_errors_name_the_branch():
    model = fn.serial(fn.dense(4), fn.fanout(2), fn.parallel(fn.dense(3), fn.conv2d(2, 3)))
    with pytest.raises(fn.LayerError) as e:
        model.init(KEY, (2, 3))
    assert str(e.value).startswith("layer 2 (parallel) > branch 1 (conv2d): conv2d: expects NHWC")
    params, state = fn.serial(fn.fanout(2), fn.parallel(fn.dense(3), fn.dense(3))).init(KEY, (2, 3))
    with pytest.raises(fn.LayerError, match=r"layer 1 \(parallel\) > branch 0 \(dense\): "):
        fn.serial(fn.fanout(2), fn.parallel(fn.dense(3), fn.dense(3))).apply(
            params, state, jnp.zeros((2, 4)))


def test_wrong_tuple_arity_names_the_shapes():
    model = fn.serial(fn.fanout(3), fn.parallel(fn.dense(2), fn.dense(2)))
    with pytest.raises(fn.LayerError) as e:
        model.init(KEY, (2, 3))
    msg = str(e.value)
    assert msg.startswith("layer 1 (parallel): parallel of 2 branches expects a tuple of 2 arrays, got 3")
    assert "((2, 3), (2, 3), (2, 3))" in msg
    with pytest.raises(fn.LayerError, match="expects a tuple of arrays .* one array of shape"):
        fn.serial(fn.dense(2), fn.fanin_sum).init(KEY, (2, 3))


def test_fanin_sum_and_residual_shape_mismatch_name_both_shapes():
    with pytest.raises(fn.LayerError) as e:
        fn.serial(fn.fanout(2), fn.parallel(fn.dense(3), fn.dense(4)), fn.fanin_sum).init(KEY, (2, 5))
    assert str(e.value) == ("layer 2 (fanin_sum): fanin_sum needs branches of one shape, got "
                            "(2, 3) (branch 0) and (2, 4) (branch 1)")
    with pytest.raises(fn.LayerError) as e:
        fn.serial(fn.conv2d(4, 1), fn.residual(fn.conv2d(8, 3, padding="SAME"))).init(KEY, (1, 5, 5, 1))
    msg = str(e.value)
    assert msg.startswith("layer 1 (residual) > layer 2 (fanin_sum): ")
    assert "(1, 5, 5, 8) (branch 0) and (1, 5, 5, 4) (branch 1)" in msg and "shortcut" in msg


def test_fanin_concat_bad_axis_and_mismatch():
    with pytest.raises(fn.LayerError, match=r"layer 1 \(fanin_concat\): fanin_concat: axis 2 does not "
                                            r"exist for inputs of rank 2"):
        fn.serial(fn.fanout(2), fn.fanin_concat(axis=2)).init(KEY, (2, 3))
    with pytest.raises(fn.LayerError, match=r"agree except on axis 1, got \(2, 3\) \(branch 0\) and "
                                            r"\(2, 4, 1\) \(branch 1\)"):
        fn.fanin_concat(1).init(KEY, ((2, 3), (2, 4, 1)))
    with pytest.raises(fn.LayerError, match="fanin_concat: axis must be"):
        fn.fanin_concat(1.5)


@pytest.mark.parametrize("make, message", [
    (lambda: fn.fanout(0), "fanout: n must be a positive int"),
    (lambda: fn.parallel(fn.dense(2), fn.dense), "parallel: branch 1 is not a Layer .* forget to call"),
    (lambda: fn.parallel(), "parallel: give at least one branch"),
    (lambda: fn.residual(fn.dense(2), shortcut=3), "residual: shortcut must be a Layer"),
    (lambda: fn.time_distributed(fn.dense), "time_distributed: expects a Layer"),
])
def test_bad_construction(make, message):
    with pytest.raises(fn.LayerError, match=message):
        make()


def test_time_distributed_wrong_rank_is_named():
    with pytest.raises(fn.LayerError, match=r"layer 0 \(time_distributed\): time_distributed "
                                            r"expects input \(batch, time, \.\.\.\) of rank >= 3, "
                                            r"got shape \(2, 3\)"):
        fn.serial(fn.time_distributed(fn.dense(2))).init(KEY, (2, 3))


def test_fn_parallel_is_the_combinator():
    # (the data-parallel helpers it also was are fn.sharding: tests/test_sharding.py)
    from funcnet.combinators import parallel
    assert fn.parallel is parallel  # a plain function, as in stax
    layer = fn.parallel(fn.dense(2), fn.relu)
    assert isinstance(layer, fn.Layer) and layer.name == "parallel"
    assert parallel(fn.relu).layers == (fn.relu,)


def test_summary_and_param_paths_show_tuple_shapes():
    model = fn.serial(fn.conv2d(2, 3, padding="SAME"),
                      fn.residual(fn.conv2d(4, 3, padding="SAME"), shortcut=fn.conv2d(4, 1)),
                      fn.fanout(2), fn.parallel(fn.global_avg_pool, fn.flatten), fn.fanin_concat(),
                      fn.dense(3))
    text = fn.summary(model, (1, 4, 4, 1))
    assert "((1, 4, 4, 2), (1, 4, 4, 2))" in text  # the residual's fanout
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:-2]}
    assert lines["1.0"][:2] == ["fanout", "((1,"]  # a tuple of two shapes
    assert lines["3.0"] == ["global_avg_pool", "(1,", "4)", "0"]  # branch 0 of the parallel
    assert lines["3.1"] == ["flatten", "(1,", "64)", "0"]
    assert lines["4"] == ["fanin_concat", "(1,", "68)", "0"]
    params, _ = model.init(KEY, (1, 4, 4, 1))
    paths = [p for p, _ in param_paths(model, params)]
    assert paths == ["0:conv2d/b", "0:conv2d/w",
                     "1:residual/1:parallel/0:serial/0:conv2d/b",
                     "1:residual/1:parallel/0:serial/0:conv2d/w",
                     "1:residual/1:parallel/1:conv2d/b", "1:residual/1:parallel/1:conv2d/w",
                     "5:dense/b", "5:dense/w"]
    total = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    assert text.splitlines()[-1].split()[-1] == f"{total:,}"
    assert repr(model).startswith("serial(conv2d, residual(fanout, parallel(serial(conv2d), conv2d)")


def test_a_residual_model_trains_evaluates_and_round_trips_a_checkpoint(tmp_path):
    model = fn.serial(fn.conv2d(4, 3, padding="SAME"), fn.batch_norm(), fn.relu,
                      fn.residual(fn.conv2d(4, 3, padding="SAME"), fn.batch_norm(), fn.relu),
                      fn.global_avg_pool, fn.dense(2))
    rng = np.random.RandomState(0)
    x = rng.normal(size=(32, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].mean((1, 2, 3)) > x[:, 3:].mean((1, 2, 3))).astype(np.int32)
    x[:, :3] += y[:, None, None, None] * 1.0
    # trained on the hand formulas: with_manual_grads through the residual's branches
    ts, history = fn.train.fit(fn.with_manual_grads(model), optax.adam(0.03), (x, y), epochs=15,
                               batch_size=16, key=KEY, progress=False)
    metrics = fn.train.evaluate(model, ts.params, ts.state, x, y)
    assert metrics["accuracy"] >= 0.9
    path = str(tmp_path / "res.ckpt")
    fn.checkpoint.save(path, ts)
    back = fn.checkpoint.restore(path, like=ts)
    for a, b in zip(jax.tree_util.tree_leaves(ts), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert fn.train.evaluate(model, back.params, back.state, x, y) == metrics
