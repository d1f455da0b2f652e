"""Initializers: the standard deviations the notes and papers give, measured on big samples."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import initializers

# ~100k samples: the sample std's relative standard error is 1/sqrt(2n) ≈ 0.2%, so 2% is
# ten standard errors, and a wrong formula (a factor sqrt(2), fan_out for fan_in) is far off.
SHAPES = [(512, 200), (5, 5, 16, 256), (3, 3, 64, 160)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name, gain", [("xavier", 1.0), ("lecun", 1.0), ("he", 2.0)])
def test_scaled_initializers_std_from_fan_in(name, gain, shape):
    w = np.asarray(getattr(initializers, name)(jax.random.PRNGKey(0), shape), np.float64)
    fan_in = math.prod(shape[:-1])  # conv HWIO: kh * kw * c_in
    std = math.sqrt(gain / fan_in)
    assert w.shape == shape and w.dtype == np.float64
    assert w.std() == pytest.approx(std, rel=0.02)
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
    # Gaussian: about 68.3% of the weights within one std
    assert np.mean(np.abs(w) < std) == pytest.approx(0.6827, abs=0.01)


@pytest.mark.parametrize("std", [0.01, 1.0, 3.0])
def test_gaussian_has_the_given_std_whatever_the_shape(std):
    for shape in [(400, 300), (3, 3, 8, 1000)]:
        w = np.asarray(initializers.gaussian(std)(jax.random.PRNGKey(1), shape), np.float64)
        assert w.std() == pytest.approx(std, rel=0.02)
    assert float(jnp.max(jnp.abs(initializers.gaussian(0.0)(jax.random.PRNGKey(1), (3, 3))))) == 0


def test_initializers_follow_the_dtype_and_key():
    with jax.enable_x64(True):
        w = initializers.he(jax.random.PRNGKey(2), (4, 3), jnp.float64)
        assert w.dtype == jnp.float64
    a = initializers.xavier(jax.random.PRNGKey(3), (4, 3))
    b = initializers.xavier(jax.random.PRNGKey(3), (4, 3))
    c = initializers.xavier(jax.random.PRNGKey(4), (4, 3))
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_zeros_and_ones():
    for dtype in (jnp.float32, jnp.float16):
        z = initializers.zeros(jax.random.PRNGKey(0), (2, 3), dtype)
        o = initializers.ones(jax.random.PRNGKey(0), (3,), dtype)
        assert z.dtype == o.dtype == dtype
        np.testing.assert_array_equal(np.asarray(z), np.zeros((2, 3)))
        np.testing.assert_array_equal(np.asarray(o), np.ones(3))


def test_fan_in_is_every_axis_but_the_last():
    assert initializers.fan_in((784, 100)) == 784
    assert initializers.fan_in((5, 5, 3, 6)) == 75
    assert initializers.fan_in((7,)) == 7


@pytest.mark.parametrize("layer, shape, std", [
    (lambda: fn.dense(300, w_init=initializers.he), (2, 400), math.sqrt(2 / 400)),
    (lambda: fn.dense(300, w_init=0.05), (2, 400), 0.05),
    (lambda: fn.conv2d(128, (3, 3), w_init=initializers.he), (1, 5, 5, 64), math.sqrt(2 / (9 * 64))),
    (lambda: fn.conv2d(128, (3, 3), w_init=0.2), (1, 5, 5, 64), 0.2),
])
def test_layers_take_an_initializer_or_a_number_as_w_init(layer, shape, std):
    params, _ = layer().init(jax.random.PRNGKey(5), shape)
    assert float(jnp.std(params["w"])) == pytest.approx(std, rel=0.03)
    np.testing.assert_array_equal(np.asarray(params["b"]), 0.0)


@pytest.mark.parametrize("std", [-1.0, float("inf"), float("nan"), "0.1"])
def test_gaussian_rejects_bad_std(std):
    with pytest.raises(fn.FuncnetError, match="gaussian: std must be a finite number >= 0"):
        initializers.gaussian(std)


# ----------------------------------------------------------------------------- named by formula

@pytest.mark.parametrize("name, variance", [
    ("lecun_normal", lambda fi, fo: 1 / fi), ("he_normal", lambda fi, fo: 2 / fi),
    ("glorot_normal", lambda fi, fo: 2 / (fi + fo)), ("glorot_uniform", lambda fi, fo: 2 / (fi + fo))])
def test_named_initializers_have_their_formulas_variance(name, variance):
    shape = (5, 5, 16, 256)  # fan_in 400, fan_out 256: every formula gives a different std
    w = np.asarray(getattr(initializers, name)(jax.random.PRNGKey(0), shape), np.float64)
    std = math.sqrt(variance(400, 256))
    assert w.std() == pytest.approx(std, rel=0.02)
    if name == "glorot_uniform":  # U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= math.sqrt(6 / 656) and np.abs(w).max() > 0.99 * math.sqrt(6 / 656)
    else:
        assert np.mean(np.abs(w) < std) == pytest.approx(0.6827, abs=0.01)


def test_the_notes_names_are_aliases_with_unchanged_values():
    assert initializers.xavier is initializers.lecun is initializers.lecun_normal
    assert initializers.he is initializers.he_normal
    assert initializers.fan_out((5, 5, 3, 6)) == 6 and initializers.fan_out((784, 100)) == 100
    w = initializers.xavier(jax.random.PRNGKey(3), (4, 3))  # N(0, 1/fan_in), drawn as before
    np.testing.assert_array_equal(np.asarray(w), np.asarray(jax.random.normal(jax.random.PRNGKey(3), (12,))
                                                            .reshape(4, 3) / 2.0))


def test_zero_sized_dimensions_are_refused_naming_the_layer():
    key = jax.random.PRNGKey(0)
    with pytest.raises(fn.LayerError, match=r"^layer 0 \(dense\): dense: input shape \(1, 0\) has a zero"):
        fn.serial(fn.dense(4)).init(key, (1, 0))
    for layer, shape in ((fn.dense(4), (2, 0)), (fn.conv2d(2, 3), (1, 5, 5, 0)),
                         (fn.batch_norm(), (0, 3)), (fn.max_pool(2), (1, 0, 4, 1))):
        with pytest.raises(fn.LayerError, match=f"{layer.name}: input shape .* zero-sized"):
            layer.init(key, shape)
    with pytest.raises(fn.LayerError, match=r"layer 0 \(flatten\): flatten: input shape \(2, 0, 3\)"):
        fn.serial(fn.flatten, fn.relu).init(key, (2, 0, 3))
    for init in (initializers.xavier, initializers.glorot_uniform, initializers.gaussian(0.1)):
        with pytest.raises(fn.LayerError, match=r"cannot initialize a weight of shape \(0, 3\)"):
            init(key, (0, 3))


def test_a_bad_w_init_is_a_layer_error_like_a_bad_out():
    for bad in (dict(out=2.5), dict(out=4, w_init="he"), dict(out=4, b_init=None)):
        with pytest.raises(fn.LayerError, match="^dense: "):
            fn.dense(**bad)
