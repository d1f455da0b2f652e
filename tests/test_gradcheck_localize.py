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
