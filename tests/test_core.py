"""core: serial composition, shape inference (output_shape / init / apply agree), summary,
purity, jit / grad / vmap on apply, and the error messages that name the layer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import funcnet as fn
from funcnet.core import param_paths
from tests import reference
from tests.reference import normal


def pool_init(seed):
    """Half-scale weights from the pool keep deep stacks' activations moderate."""
    return reference.pool_init(seed, scale=0.5)


# --- hypothesis-drawn deep stacks: the shapes written out independently ------------------

def _pads(padding, hw, k, s):
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        return tuple(((t := max((math.ceil(n / st_) - 1) * st_ + kk - n, 0)) // 2, t - t // 2)
                     for n, kk, st_ in zip(hw, k, s))
    return ((padding, padding), (padding, padding))


def _windowed(shape, k, s, padding, c_out):
    pads = _pads(padding, shape[1:3], k, s)
    hp, wp = shape[1] + sum(pads[0]), shape[2] + sum(pads[1])
    if hp < k[0] or wp < k[1]:
        return None
    return (shape[0], (hp - k[0]) // s[0] + 1, (wp - k[1]) // s[1] + 1, c_out)


ACTIVATIONS = [fn.relu, fn.sigmoid, fn.tanh, fn.sign, fn.identity, fn.softmax, fn.log_softmax]


@st.composite
def stacks(draw, depth):
    """(layers, input shape, expected output shapes after each layer, parameter counts)."""
    shape = draw(st.sampled_from([(2, 9, 8, 3), (1, 6, 7, 2), (3, 5)]))
    start, layers, shapes, counts = shape, [], [], []
    for _ in range(depth):
        kind = draw(st.sampled_from(["conv", "pool", "bn", "dropout", "act", "flatten", "dense",
                                     "nested"]))
        if len(shape) == 4 and kind in ("conv", "pool"):
            k = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
            s = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
            padding = draw(st.sampled_from(["VALID", "SAME", 1]))
            if kind == "conv":
                c = draw(st.integers(1, 4))
                layer, out = fn.conv2d(c, k, s, padding), _windowed(shape, k, s, padding, c)
                count = k[0] * k[1] * shape[3] * c + c
            else:
                pool = draw(st.sampled_from(["max_pool", "avg_pool", "gaussian_pool", "learned_pool"]))
                if padding == 1 and min(k) == 1:
                    padding = "VALID"  # a pool's padding must stay under its window
                layer = getattr(fn, pool)(k, stride=s, padding=padding)
                out = _windowed(shape, k, s, padding, shape[3])
                count = k[0] * k[1] * shape[3] if pool == "learned_pool" else 0
            if out is None:
                continue  # does not fit: the error tests cover it
        elif kind == "bn":
            layer, out, count = fn.batch_norm(), shape, 2 * shape[-1]
        elif kind == "dropout":
            layer, out, count = fn.dropout(draw(st.sampled_from([0.0, 0.5]))), shape, 0
        elif kind == "act":
            layer, out, count = draw(st.sampled_from(ACTIVATIONS)), shape, 0
        elif kind == "flatten":
            layer, out, count = fn.flatten, (shape[0], math.prod(shape[1:])), 0
        elif kind == "dense" and len(shape) == 2:
            n = draw(st.integers(1, 6))
            layer, out, count = fn.dense(n), (shape[0], n), shape[1] * n + n
        elif kind == "nested":
            layer, out, count = fn.serial(fn.relu, fn.serial(fn.identity)), shape, 0
        else:
            continue
        layers.append(layer)
        shapes.append(out)
        counts.append(count)
        shape = out
    return layers, start, shapes, counts


@given(stack=stacks(depth=8))
def test_shape_inference_agrees_with_apply_for_deep_stacks(stack):
    layers, in_shape, shapes, counts = stack
    model = fn.serial(*layers)
    expected = shapes[-1] if shapes else in_shape
    assert model.output_shape(in_shape) == expected
    key = jax.random.PRNGKey(0)
    # init and apply traced abstractly: the shapes apply really produces, without compiling
    params, state = jax.eval_shape(lambda k: model.init(k, in_shape), key)
    assert isinstance(params, tuple) and isinstance(state, tuple)
    assert len(params) == len(state) == len(layers)
    for layer, p, s in zip(layers, params, state):
        if layer.name in ("relu", "sigmoid", "tanh", "sign", "identity", "softmax", "log_softmax",
                          "flatten", "dropout", "max_pool", "avg_pool", "gaussian_pool"):
            assert p == {} and s == {}
    n_params = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
    assert n_params == sum(counts)
    x = jax.ShapeDtypeStruct(in_shape, jnp.float32)
    y, new_state = jax.eval_shape(
        lambda p, s, x: model.apply(p, s, x, train=True, key=jax.random.PRNGKey(1)), params, state, x)
    assert y.shape == expected
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    # each prefix agrees too
    for i in range(len(layers)):
        assert fn.serial(*layers[:i + 1]).output_shape(in_shape) == shapes[i]
    assert fn.summary(model, in_shape).splitlines()[-1].split()[-1] == f"{sum(counts):,}"


def test_every_layer_apply_shape_matches_output_shape_on_real_data():
    """A concrete (not abstract) run of a model using every layer kind once."""
    model = fn.serial(
        fn.conv2d(4, (3, 3), padding="SAME", w_init=pool_init(1)), fn.batch_norm(), fn.relu,
        fn.max_pool(2), fn.conv2d(3, 2, stride=(1, 2), padding=((1, 0), (0, 1)), w_init=pool_init(2)),
        fn.avg_pool(2, stride=1), fn.gaussian_pool(2, sigma=0.8, padding="SAME"),
        fn.learned_pool((2, 1)), fn.sigmoid, fn.tanh, fn.sign, fn.identity, fn.flatten,
        fn.dropout(0.3), fn.dense(5, w_init=pool_init(3)), fn.softmax, fn.log_softmax)
    in_shape = (2, 9, 10, 2)
    params, state = model.init(jax.random.PRNGKey(0), in_shape)
    x = jnp.asarray(normal(1, in_shape), jnp.float32)
    shape = in_shape
    for i, layer in enumerate(model.layers):
        x, _ = jax.jit(lambda p, s, x, k, layer=layer: layer.apply(p, s, x, train=True, key=k))(
            params[i], state[i], x, jax.random.PRNGKey(i))
        shape = layer.output_shape(shape)
        assert x.shape == shape, (i, layer.name)
    assert shape == model.output_shape(in_shape) == (2, 5)
    y, _ = jax.jit(lambda p, s, x, k: model.apply(p, s, x, train=True, key=k))(
        params, state, jnp.asarray(normal(1, in_shape), jnp.float32), jax.random.PRNGKey(9))
    assert y.shape == (2, 5) and np.isfinite(np.asarray(y)).all()
    # log_softmax of a softmax: its exp sums to one
    np.testing.assert_allclose(np.asarray(jnp.exp(y).sum(-1)), 1.0, rtol=1e-5)


# --- composition -------------------------------------------------------------------------

def test_serial_params_state_are_tuples_with_empty_dicts_and_dtype():
    model = fn.serial(fn.dense(4, w_init=pool_init(1)), fn.relu, fn.batch_norm(),
                      fn.serial(fn.dense(3, w_init=pool_init(2)), fn.tanh))
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(0), (5, 2), jnp.float64)
    assert params[1] == {} and state[0] == {} and state[1] == {} and state[3] == ({}, {})
    assert set(params[0]) == {"w", "b"} and set(params[2]) == {"gamma", "beta"}
    assert set(state[2]) == {"mean", "var"}
    assert params[3][0]["w"].shape == (4, 3) and params[3][1] == {}
    assert all(l.dtype == jnp.float64 for l in jax.tree_util.tree_leaves((params, state)))
    params32, _ = model.init(jax.random.PRNGKey(0), (5, 2))
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(params32))


def test_init_splits_the_key_per_layer():
    model = fn.serial(fn.dense(3), fn.dense(3))
    params, _ = model.init(jax.random.PRNGKey(0), (1, 3))
    assert not np.allclose(np.asarray(params[0]["w"]), np.asarray(params[1]["w"]))
    again, _ = model.init(jax.random.PRNGKey(0), (1, 3))
    np.testing.assert_array_equal(np.asarray(params[1]["w"]), np.asarray(again[1]["w"]))


def test_serial_computes_the_composition():
    model = fn.serial(fn.dense(4, w_init=pool_init(1)), fn.relu,
                      fn.serial(fn.dense(2, w_init=pool_init(2)), fn.softmax))
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(0), (3, 5), jnp.float64)
        x = normal(2, (3, 5))
        y, _ = model.apply(params, state, jnp.asarray(x))
    w1, b1 = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
    w2, b2 = np.asarray(params[2][0]["w"]), np.asarray(params[2][0]["b"])
    z = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(np.asarray(y), e / e.sum(1, keepdims=True), rtol=1e-12)
    assert repr(model) == "serial(dense, relu, serial(dense, softmax))"


def test_empty_serial_is_the_identity():
    model = fn.serial()
    params, state = model.init(jax.random.PRNGKey(0), (2, 3))
    assert params == () and state == ()
    y, _ = model.apply(params, state, jnp.ones((2, 3)))
    np.testing.assert_array_equal(np.asarray(y), np.ones((2, 3)))


def test_param_paths_name_every_leaf():
    model = fn.serial(fn.conv2d(2, 3), fn.relu, fn.flatten, fn.serial(fn.dense(3), fn.batch_norm()))
    params, _ = jax.eval_shape(lambda k: model.init(k, (1, 5, 5, 1)), jax.random.PRNGKey(0))
    names = [p for p, _ in param_paths(model, params)]
    assert names == ["0:conv2d/b", "0:conv2d/w", "3:serial/0:dense/b", "3:serial/0:dense/w",
                     "3:serial/1:batch_norm/beta", "3:serial/1:batch_norm/gamma"]


def test_summary_table_lists_kind_shape_and_parameter_count():
    model = fn.serial(fn.conv2d(6, (5, 5), padding="SAME"), fn.relu, fn.max_pool((2, 2)),
                      fn.flatten, fn.serial(fn.dense(10), fn.batch_norm()))
    table = fn.summary(model, (1, 28, 28, 1))
    lines = table.splitlines()
    assert lines[0].split() == ["#", "layer", "output", "shape", "params"]
    rows = [line.split(None, 2) for line in lines[2:-2]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4.0", "4.1"]
    assert [r[1] for r in rows] == ["conv2d", "relu", "max_pool", "flatten", "dense", "batch_norm"]
    assert "(1, 28, 28, 6)" in lines[2] and lines[2].split()[-1] == "156"  # 5·5·1·6 + 6
    assert "(1, 14, 14, 6)" in lines[4] and lines[4].split()[-1] == "0"
    assert "(1, 1176)" in lines[5]
    assert "(1, 10)" in lines[6] and lines[6].split()[-1] == "11,770"  # 1176·10 + 10
    assert lines[7].split()[-1] == "20"
    assert lines[-1].split()[0] == "total" and lines[-1].split()[-1] == "11,946"
    assert "(input (1, 28, 28, 1))" in lines[-1]


# --- purity, jit, grad, vmap ------------------------------------------------------------

def _net():
    return fn.serial(fn.conv2d(3, 3, padding="SAME", w_init=pool_init(1)), fn.batch_norm(), fn.relu,
                     fn.max_pool(2), fn.flatten, fn.dropout(0.5), fn.dense(4, w_init=pool_init(2)))


def test_apply_is_pure_state_changes_only_through_the_returned_state():
    model = _net()
    params, state = model.init(jax.random.PRNGKey(0), (4, 6, 6, 2))
    x = jnp.asarray(normal(3, (4, 6, 6, 2)), jnp.float32)
    snapshot = jax.tree_util.tree_map(np.array, (params, state))
    key = jax.random.PRNGKey(5)
    y1, s1 = model.apply(params, state, x, train=True, key=key)
    y2, s2 = model.apply(params, state, x, train=True, key=key)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the inputs are untouched, and the new running statistics live only in s1
    for a, b in zip(jax.tree_util.tree_leaves((params, state)), jax.tree_util.tree_leaves(snapshot)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert not np.allclose(np.asarray(s1[1]["mean"]), np.asarray(state[1]["mean"]))
    np.testing.assert_allclose(np.asarray(s1[1]["mean"]),
                               0.1 * np.asarray(model.layers[0].apply(params[0], {}, x)[0].mean((0, 1, 2))),
                               rtol=1e-5, atol=1e-7)
    # evaluation returns the state unchanged; apply is forward without the cache
    y3, s3 = model.apply(params, s1, x)
    y4, s4, cache = model.forward(params, s1, x)
    np.testing.assert_array_equal(np.asarray(y3), np.asarray(y4))
    assert len(cache) == len(model.layers)
    for a, b in zip(jax.tree_util.tree_leaves(s3), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jit_gives_the_same_values_as_eager():
    model = _net()
    params, state = model.init(jax.random.PRNGKey(0), (4, 6, 6, 2))
    x = jnp.asarray(normal(4, (4, 6, 6, 2)), jnp.float32)
    key = jax.random.PRNGKey(2)
    eager = model.apply(params, state, x, train=True, key=key)
    jitted = jax.jit(lambda p, s, x, k: model.apply(p, s, x, train=True, key=k))(params, state, x, key)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_grad_through_apply_equals_the_closed_form():
    """Linear regression through a serial: ∇_w mean((xW + b − t)²) = 2 xᵀ(xW + b − t) / n."""
    model = fn.serial(fn.identity, fn.dense(3))
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(0), (5, 4), jnp.float64)
        x, t = jnp.asarray(normal(1, (5, 4))), jnp.asarray(normal(2, (5, 3)))

        def loss(p):
            return fn.losses.mse(model.apply(p, state, x)[0], t)

        g = jax.jit(jax.grad(loss))(params)
        r = np.asarray(x) @ np.asarray(params[1]["w"]) + np.asarray(params[1]["b"]) - np.asarray(t)
        np.testing.assert_allclose(np.asarray(g[1]["w"]), 2 * np.asarray(x).T @ r / 15, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(g[1]["b"]), 2 * r.sum(0) / 15, rtol=1e-12)
        assert g[0] == {}


def test_vmap_over_an_ensemble_of_params():
    model = fn.serial(fn.conv2d(2, 3), fn.relu, fn.flatten, fn.dense(3))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    init = jax.jit(lambda k: model.init(k, (2, 5, 5, 1)))
    params, state = jax.vmap(init)(keys)
    assert params[0]["w"].shape == (4, 3, 3, 1, 2) and params[3]["b"].shape == (4, 3)
    x = jnp.asarray(normal(6, (2, 5, 5, 1)), jnp.float32)
    apply = jax.jit(lambda p, s: model.apply(p, s, x)[0])
    ys = jax.vmap(apply, in_axes=(0, None))(params, state)
    assert ys.shape == (4, 2, 3)
    for i in range(4):
        p_i = jax.tree_util.tree_map(lambda a, i=i: a[i], params)
        np.testing.assert_allclose(np.asarray(ys[i]), np.asarray(apply(p_i, state)),
                                   rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(ys[0]), np.asarray(ys[1]))


def test_vmap_over_a_leading_chunk_axis_of_x():
    """Each chunk is its own batch: batch norm uses each chunk's statistics."""
    model = fn.serial(fn.dense(3, w_init=pool_init(4)), fn.batch_norm(), fn.tanh)
    params, state = model.init(jax.random.PRNGKey(0), (4, 2))
    xs = jnp.asarray(normal(8, (3, 4, 2)), jnp.float32)
    ys, states = jax.vmap(lambda x: model.apply(params, state, x, train=True))(xs)
    assert ys.shape == (3, 4, 3) and states[1]["mean"].shape == (3, 3)
    for c in range(3):
        y, s = model.apply(params, state, xs[c], train=True)
        np.testing.assert_allclose(np.asarray(ys[c]), np.asarray(y), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(states[1]["mean"][c]), np.asarray(s[1]["mean"]),
                                   rtol=1e-5, atol=1e-7)


# --- errors ------------------------------------------------------------------------------

def test_serial_rejects_a_layer_function_that_was_not_called():
    with pytest.raises(fn.LayerError, match=r"serial: argument 1 is not a Layer.*did you forget to "
                                            r"call it, e.g. dense\(10\)"):
        fn.serial(fn.flatten, fn.dense)
    with pytest.raises(fn.LayerError, match="serial: argument 0 is not a Layer but 3"):
        fn.serial(3)


def test_errors_inside_nested_serials_give_the_full_path():
    model = fn.serial(fn.flatten, fn.serial(fn.relu, fn.conv2d(2, 3)))
    with pytest.raises(fn.LayerError) as e:
        model.init(jax.random.PRNGKey(0), (2, 4, 4, 1))
    assert str(e.value).startswith("layer 1 (serial) > layer 1 (conv2d): conv2d: expects NHWC input")
    assert e.value.where == ("layer 1 (serial)", "layer 1 (conv2d)")
    assert "(2, 16)" in str(e.value)
    with pytest.raises(fn.LayerError, match=r"^layer 1 \(serial\) > layer 1 \(conv2d\)"):
        model.output_shape((2, 4, 4, 1))


def test_params_of_the_wrong_structure_fail_clearly_at_apply():
    model = fn.serial(fn.dense(3), fn.relu)
    params, state = model.init(jax.random.PRNGKey(0), (2, 4))
    with pytest.raises(fn.LayerError, match=r"serial of 2 layers expects params as a tuple of 2 "
                                            r"entries, got a tuple of length 1"):
        model.apply(params[:1], state, jnp.ones((2, 4)))
    with pytest.raises(fn.LayerError, match="expects state as a tuple of 2 entries, got dict"):
        model.apply(params, {}, jnp.ones((2, 4)))


def test_wrong_rank_at_apply_names_the_layer():
    model = fn.serial(fn.conv2d(2, 3), fn.flatten, fn.dense(2))
    params, state = model.init(jax.random.PRNGKey(0), (1, 5, 5, 1))
    with pytest.raises(fn.LayerError, match=r"^layer 0 \(conv2d\): conv2d: expects NHWC input .* "
                                            r"got shape \(5, 5, 1\)"):
        model.apply(params, state, jnp.ones((5, 5, 1)))
    with pytest.raises(fn.LayerError, match=r"^layer 2 \(dense\): dense: expects 18 input features"):
        model.apply(params, state, jnp.ones((1, 5, 6, 1)))


def test_numpy_ints_are_accepted_wherever_python_ints_are():
    key = jax.random.PRNGKey(0)
    model = fn.serial(fn.conv2d(np.int64(2), np.int32(3), stride=np.int64(1), padding=np.int64(1)),
                      fn.max_pool(np.int64(2)), fn.flatten, fn.dense(np.int32(3)))
    params, _ = model.init(key, (1, 6, 6, 1))
    assert params[0]["w"].shape == (3, 3, 1, 2) and params[3]["w"].shape == (18, 3)


def test_serial_backward_names_the_layer_on_error():
    def bad_backward(params, cache, dy):
        raise fn.LayerError("custom: dy has the wrong shape")

    custom = fn.identity._replace(backward=bad_backward, name="custom")
    model = fn.serial(fn.dense(2), fn.serial(fn.relu, custom))
    params, state = model.init(jax.random.PRNGKey(0), (1, 3))
    _, _, cache = model.forward(params, state, jnp.ones((1, 3)))
    with pytest.raises(fn.LayerError, match=r"^layer 1 \(serial\) > layer 1 \(custom\): custom: dy"):
        model.backward(params, cache, jnp.ones((1, 2)))


# --- structure is data: walkers follow Layer.combine, never the display name --------------

def test_layer_kinds_are_data_and_old_positional_layers_still_build():
    from funcnet import core
    assert fn.serial(fn.relu).combine == core.SERIAL and fn.relu.combine == core.NONE
    assert fn.parallel(fn.relu).combine == core.PARALLEL
    assert fn.residual(fn.relu).combine == core.RESIDUAL
    assert fn.time_distributed(fn.relu).combine == core.EACH_STEP
    old = fn.Layer(fn.relu.init, fn.relu.forward, fn.relu.backward, "my_relu", None)
    assert old.combine == core.NONE and old.layers == () and old.check_input is None
    y, _ = fn.serial(old).apply(({},), ({},), jnp.array([[-1.0, 2.0]]))
    np.testing.assert_array_equal(y, [[0.0, 2.0]])


def test_a_leaf_named_like_a_container_is_a_leaf_and_a_user_combinator_is_walked():
    named_parallel = fn.dense(2)._replace(name="parallel")
    model = fn.serial(named_parallel, fn.serial(fn.dense(3))._replace(name="block"))
    params, _ = model.init(jax.random.PRNGKey(0), (1, 4))
    assert [p for p, _ in param_paths(model, params)] == [
        "0:parallel/b", "0:parallel/w", "1:block/0:dense/b", "1:block/0:dense/w"]
    rows = [line.split()[:2] for line in fn.summary(model, (1, 4)).splitlines()[2:-2]]
    assert rows == [["0", "parallel"], ["1.0", "dense"]]


def test_each_step_params_are_the_wrapped_layers_own():
    model = fn.serial(fn.time_distributed(fn.dense(2)), fn.time_distributed(fn.serial(fn.dense(2))))
    params, _ = model.init(jax.random.PRNGKey(0), (1, 3, 4))
    assert [p for p, _ in param_paths(model, params)] == [
        "0:time_distributed/b", "0:time_distributed/w",
        "1:time_distributed/0:dense/b", "1:time_distributed/0:dense/w"]


def test_input_checks_run_through_the_check_input_hook_of_the_layers_that_see_the_input():
    from funcnet.core import check_model_input
    emb = fn.embedding(5, 2)
    model = fn.serial(fn.serial(emb, fn.flatten), fn.dense(2))
    params, _ = model.init(jax.random.PRNGKey(0), (1, 3))
    check_model_input(model, params, np.array([[0, 4, 1]]), "fit")
    with pytest.raises(fn.LayerError, match=r"^fit: layer 0 \(serial\) > layer 0 \(embedding\): "
                                            r"input id 5 is outside \[0, 5\)"):
        check_model_input(model, params, np.array([[0, 5, 1]]), "fit")
    branches = fn.parallel(fn.dense(2), emb)
    bparams, _ = branches.init(jax.random.PRNGKey(0), ((1, 2), (1, 3)))
    with pytest.raises(fn.LayerError, match=r"^evaluate: branch 1 \(embedding\): input id -1"):
        check_model_input(branches, bparams, (np.ones((1, 2)), np.array([[0, -1, 1]])), "evaluate")
    # a user's layer named "embedding" has no hook: its input is its own business
    impostor = fn.serial(fn.dense(2)._replace(name="embedding"))
    iparams, _ = impostor.init(jax.random.PRNGKey(0), (1, 2))
    check_model_input(impostor, iparams, np.array([[-7.5, 99.0]]), "fit")
