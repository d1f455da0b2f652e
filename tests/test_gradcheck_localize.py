"""Localization and kinks. A failed check_gradients names the first layer (from the output
backwards) whose backward disagrees with autodiff of that layer alone, also inside nested
serials; an element at a kink is counted, not failed."""
import jax
import jax.numpy as jnp
import pytest

import funcnet as fn
from funcnet import losses
from funcnet import _random as fr  # jax.random's values, flat draws: faster to compile


def doubled_backward(layer):
    def backward(params, cache, dy):
        dp, dx = layer.backward(params, cache, dy)
        return dp, dx * 2.0
    return layer._replace(backward=backward)


def setup():
    model = fn.serial(fn.dense(4), fn.tanh, fn.dense(3))
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(0), (2, 5), jnp.float64)
        x = fr.normal(jax.random.PRNGKey(1), (2, 5), jnp.float64)
    return model, params, state, x, jnp.array([0, 2])


def test_the_wrong_layer_is_named_with_element_and_values():
    model, params, state, x, y = setup()
    wrong = fn.serial(model.layers[0], doubled_backward(model.layers[1]), model.layers[2])
    report = fn.check_gradients(wrong, params, state, x, y, losses.softmax_cross_entropy)
    assert not report.ok
    note = report.notes[0]
    assert note.startswith("layer 1 (tanh): backward disagrees with autodiff at input element (")
    manual = float(note.split("manual ")[1].split(",")[0])
    auto = float(note.split("autodiff ")[-1])
    assert manual == pytest.approx(2 * auto, rel=1e-5)  # printed to 6 digits
    assert note in str(report)


def test_nested_serials_are_walked_and_a_correct_model_has_no_note():
    model, params, state, x, y = setup()
    inner = fn.serial(model.layers[1], doubled_backward(model.layers[2]))
    nested = fn.serial(model.layers[0], inner)
    p, s = (params[0], params[1:]), (state[0], state[1:])
    report = fn.check_gradients(nested, p, s, x, y, losses.softmax_cross_entropy)
    assert report.notes[0].startswith("layer 1 (serial) > layer 1 (dense): backward disagrees "
                                      "with autodiff at input element")
    assert fn.check_gradients(model, params, state, x, y, losses.softmax_cross_entropy).notes == []


def test_a_relu_input_exactly_at_zero_is_a_kink_not_a_failure():
    model = fn.serial(fn.dense(4), fn.relu, fn.dense(3))
    _, params, state, x, y = setup()
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(0), (2, 5), jnp.float64)
        h = x @ params[0]["w"] + params[0]["b"]
        params = ({"w": params[0]["w"], "b": params[0]["b"].at[1].add(-h[0, 1])},) + params[1:]
    report = fn.check_gradients(model, params, state, x, y, losses.softmax_cross_entropy)
    assert report.ok and report.kinks > 0
    assert {r.path: r.kinks for r in report.rows}["0:dense/b"] == 1
    assert "0:dense/b: 1 element(s) at a kink" in str(report)
    redrawn = fn.check_gradients(model, params, state, x, y, losses.softmax_cross_entropy,
                                 avoid_kinks=True)
    assert redrawn.ok and redrawn.kinks == 0 and "at a kink" not in str(redrawn)
    assert redrawn.loss != report.loss  # checked at re-drawn params and inputs


# --- localisation follows the layer kinds all the way down --------------------------------

def wrong_tanh():
    """A user's tanh whose backward forgets the square: 1 − tanh instead of 1 − tanh²."""
    def forward(params, state, x, *, train=False, key=None):
        y = jnp.tanh(x)
        return y, state, {"y": y}

    def backward(params, cache, dy):
        return {}, dy * (1 - cache["y"])
    return fn.Layer(lambda key, shape, dtype=None: ({}, {}), forward, backward, "my_tanh")


def check(model, shape, seed=0):
    with jax.enable_x64(True):
        params, state = model.init(jax.random.PRNGKey(seed), shape, jnp.float64)
        x = fr.normal(jax.random.PRNGKey(seed + 1), shape, jnp.float64)
    return fn.check_gradients(model, params, state, x, jnp.zeros(shape[0], jnp.int32),
                              losses.softmax_cross_entropy)


def test_a_wrong_layer_inside_a_residual_is_named_with_its_path():
    report = check(fn.serial(fn.dense(8), fn.residual(fn.dense(8), wrong_tanh()), fn.dense(3)), (2, 5))
    assert not report.ok
    assert report.notes[-1].startswith("layer 1 (residual) > layer 1 (my_tanh): backward disagrees "
                                       "with autodiff at input element (")
    assert "layer 1 (residual) > layer 1 (my_tanh)" in str(report)


def test_branches_shortcuts_and_each_step_layers_are_walked():
    branches = fn.serial(fn.fanout(2), fn.parallel(fn.dense(3), fn.serial(fn.dense(3), wrong_tanh())),
                         fn.fanin_sum)
    assert check(branches, (2, 4)).notes[-1].startswith(
        "layer 1 (parallel) > branch 1 (serial) > layer 1 (my_tanh): backward disagrees")
    shortcut = fn.serial(fn.residual(fn.dense(4), shortcut=fn.serial(fn.dense(4), wrong_tanh())))
    assert check(shortcut, (2, 4)).notes[-1].startswith(
        "layer 0 (residual) > shortcut (serial) > layer 1 (my_tanh): backward disagrees")
    steps = fn.serial(fn.time_distributed(fn.serial(fn.dense(3), wrong_tanh())), fn.flatten)
    assert check(steps, (2, 3, 2)).notes[-1].startswith(
        "layer 0 (time_distributed) > each step (serial) > layer 1 (my_tanh): backward disagrees")


def test_a_user_combinator_is_walked_by_its_kind_not_its_name():
    inner = fn.serial(fn.dense(4), wrong_tanh())
    mine = inner._replace(name="my_block")  # a user's combinator: still SERIAL by kind
    assert check(fn.serial(mine, fn.dense(3)), (2, 4)).notes[-1].startswith(
        "layer 0 (my_block) > layer 1 (my_tanh): backward disagrees")
    # a leaf named like a container is a leaf: blamed itself, never walked into
    leaf = wrong_tanh()._replace(name="serial")
    assert check(fn.serial(fn.dense(4), leaf), (2, 4)).notes[-1].startswith(
        "layer 1 (serial): backward disagrees")


def test_a_wrong_composition_names_the_innermost_container():
    good = fn.serial(fn.dense(4), fn.tanh)

    def backward(params, cache, dy):  # a combinator whose chain rule skips the tanh
        dp1, dh = good.layers[0].backward(params[0], cache[0], dy)
        return (dp1, {}), dh
    bad = good._replace(backward=backward, name="my_combinator")
    note = check(fn.serial(bad, fn.dense(3)), (2, 4)).notes[-1]
    assert note.startswith("layer 0 (my_combinator): backward disagrees with autodiff at")
    assert note.endswith("(every layer inside agrees: the fault is in how it combines them)")


def _wrong_at(make, n):
    """`make` whose n-th call builds a layer with a doubled input gradient."""
    calls = []

    def patched(*args, **kwargs):
        calls.append(1)
        layer = make(*args, **kwargs)
        return doubled_backward(layer) if len(calls) == n else layer
    return patched


def test_a_wrong_layer_deep_in_a_resnet_and_in_a_transformer_attention_is_named(monkeypatch):
    # the ninth (last) batch norm built is the last block's projection shortcut's: inside a
    # residual, inside its shortcut; the walk from the output reaches it after four layers
    # (each layer tried is a compilation)
    monkeypatch.setattr(fn.models, "batch_norm", _wrong_at(fn.batch_norm, 9))
    resnet = fn.models.resnet(3, image_size=6, depth=8, width=2)
    note = check(resnet, (2, 6, 6, 1)).notes[-1]
    assert note.startswith("layer 7 (residual) > shortcut (serial) > layer 1 (batch_norm): "
                           "backward disagrees"), note
    monkeypatch.setattr(fn.models, "self_attention", _wrong_at(fn.self_attention, 1))
    gpt = fn.models.transformer(vocab_size=5, max_len=4, dim=4, num_heads=2, depth=1)
    with jax.enable_x64(True):
        params, state = gpt.init(jax.random.PRNGKey(0), (1, 4), jnp.float64)
        ids = jnp.array([[1, 4, 0, 2]])
        report = fn.check_gradients(gpt, params, state, ids, ids, losses.softmax_cross_entropy)
    assert report.notes[-1].startswith("layer 2 (residual) > layer 1 (self_attention): backward "
                                       "disagrees"), report.notes


def test_a_wrong_derivative_outside_the_backwards_is_said_to_be_there():
    """Every backward agrees with autodiff at its inputs: a wrong custom_vjp inside a forward
    (autodiff itself is wrong) or a wrong `.grad` of the loss (the upstream gradient)."""
    @jax.custom_vjp
    def square(x):
        return x ** 2
    square.defvjp(lambda x: (x ** 2, x), lambda x, g: (3 * x * g,))  # should be 2x

    def forward(params, state, x, *, train=False, key=None):
        return square(x), state, {"x": x}
    mine = fn.Layer(lambda key, shape, dtype=None: ({}, {}), forward,
                    lambda params, cache, dy: ({}, 3 * cache["x"] * dy), "my_square")
    note = check(fn.serial(fn.dense(3), mine, fn.dense(2)), (2, 4)).notes[-1]
    assert note.startswith("the hand backward agrees with autodiff, but autodiff disagrees with the "
                           "finite differences"), note
    model, params, state, x, y = setup()
    wrong_loss = lambda z, t: losses.softmax_cross_entropy(z, t)  # noqa: E731
    wrong_loss.grad = lambda z, t: 2 * losses.softmax_cross_entropy.grad(z, t)
    report = fn.check_gradients(model, params, state, x, y, wrong_loss)
    assert report.notes[-1].endswith("in the upstream gradient (the loss's `.grad`)"), report.notes
