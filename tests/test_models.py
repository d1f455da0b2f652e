"""funcnet/models.py: the built-in networks' layouts, output shapes and argument checks."""
import jax
import numpy as np
import pytest

import funcnet as fn
from funcnet import models

KEY = jax.random.PRNGKey(0)


def kinds(model):
    return [layer.name for layer in model.layers]


def shapes(model, input_shape):
    """(output shape, parameter count) from shapes alone (nothing is computed)."""
    params, _ = jax.eval_shape(lambda k: model.init(k, input_shape), KEY)
    count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    return model.output_shape(input_shape), count


def test_lenet_has_the_classic_sizes_on_28x28_and_a_small_variant_on_8x8():
    big = models.lenet(10)
    assert kinds(big) == ["conv2d", "relu", "max_pool", "conv2d", "relu", "max_pool", "flatten",
                          "dense", "relu", "dense"]
    # LeNet-5 sizes: 6 5x5 SAME convs, 16 5x5 VALID convs, 16·5·5 = 400 features -> 120 -> 10
    assert shapes(big, (2, 28, 28, 1)) == ((2, 10), (25 + 1) * 6 + (150 + 1) * 16 + 401 * 120 + 121 * 10)
    small = models.lenet(3, image_size=8)
    assert shapes(small, (2, 8, 8, 1)) == ((2, 3), 10 * 16 + 145 * 32 + 129 * 64 + 65 * 3)


def test_fc_and_mlp_layouts():
    block = ["dense", "batch_norm", "relu", "dropout"]
    assert kinds(models.fc(4, (8, 6))) == ["flatten"] + block * 2 + ["dense"]
    assert kinds(models.fc(4, (8,), dropout_rate=0)) == ["flatten", "dense", "batch_norm", "relu", "dense"]
    assert kinds(models.mlp(4, (8, 6))) == ["flatten", "dense", "relu", "dense", "relu", "dense"]
    assert shapes(models.mlp(4, (8,)), (3, 2, 2, 1)) == ((3, 4), 5 * 8 + 9 * 4)


def test_build_picks_the_variant_from_the_input_shape():
    assert shapes(models.build("lenet", (1, 8, 8, 1), 10), (1, 8, 8, 1))[0] == (1, 10)
    assert shapes(models.build("lenet", (1, 28, 28, 1), 5), (1, 28, 28, 1))[0] == (1, 5)
    assert kinds(models.build("mlp", (1, 4), 3)) == kinds(models.mlp(3))
    assert set(models.MODELS) == {"lenet", "fc", "mlp", "resnet"}


@pytest.mark.parametrize("call, message", [
    (lambda: models.mlp(1), "mlp: num_classes must be an int >= 2, got 1"),
    (lambda: models.fc(2.0), "fc: num_classes must be an int >= 2"),
    (lambda: models.lenet(10, image_size=3), "lenet: images must be at least 4x4"),
    (lambda: models.build("vgg", (1, 4), 3), "unknown model 'vgg'"),
    (lambda: models.build("resnet", (1, 4), 3), "resnet needs NHWC images"),
    (lambda: models.build("lenet", (1, 4), 3), "lenet needs NHWC images"),
])
def test_bad_arguments_are_layer_errors(call, message):
    with pytest.raises(fn.LayerError, match=message):
        call()


def test_numpy_ints_are_accepted():
    assert shapes(models.mlp(np.int64(4), (np.int64(5),)), (1, 3))[0] == (1, 4)
    assert shapes(models.lenet(np.int64(3), np.int64(8)), (1, 8, 8, 1))[0] == (1, 3)


def test_lstm_classifier_layout_and_output():
    model = models.lstm_classifier(10, hidden=16)
    params, _ = model.init(jax.random.PRNGKey(0), (2, 28, 28))
    assert [l.name for l in model.layers] == ["lstm", "dense"]
    assert params[0]["w_x"].shape == (28, 64) and params[0]["w_h"].shape == (16, 64)
    assert params[1]["w"].shape == (16, 10)
    y, _ = model.apply(params, ({}, {}), np.zeros((2, 28, 28), np.float32))
    assert y.shape == (2, 10)
    with pytest.raises(fn.LayerError, match="lstm_classifier: num_classes must be"):
        models.lstm_classifier(1)


def test_transformer_layout_shapes_and_errors():
    model = models.transformer(vocab_size=11, max_len=8, dim=8, num_heads=2, depth=2)
    block = ["residual", "residual"]
    assert kinds(model) == ["embedding", "positional_embedding"] + block * 2 + [
        "layer_norm", "time_distributed"]
    # tables 11·8 + 8·8; per block 2 layer norms (16 each), attention 8·24 + 24 + 64 + 8,
    # MLP 8·32 + 32 + 32·8 + 8; final norm 16 and the 8 -> 11 head
    per_block = 2 * 16 + (8 * 24 + 24 + 64 + 8) + (8 * 32 + 32 + 32 * 8 + 8)
    assert shapes(model, (1, 8)) == ((1, 8, 11), 88 + 64 + 2 * per_block + 16 + 99)
    with pytest.raises(fn.LayerError, match="transformer: num_heads=3 must divide dim=8"):
        models.transformer(11, 8, 8, 3, 1)
    with pytest.raises(fn.LayerError, match="transformer: depth must be"):
        models.transformer(11, 8, 8, 2, 0)
    with pytest.raises(fn.LayerError, match="positional_embedding"):
        model.init(KEY, (1, 9))


def test_transformer_is_causal_and_takes_whole_number_float_ids():
    model = models.transformer(vocab_size=11, max_len=8, dim=8, num_heads=2, depth=1)
    params, state = model.init(KEY, (1, 6))
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    later = ids.copy()
    later[0, 3:] = [10, 0, 7]
    y, _ = model.apply(params, state, ids)
    y2, _ = model.apply(params, state, later)
    np.testing.assert_array_equal(y[:, :3], y2[:, :3])   # steps before 3 never see 3..5
    assert np.abs(y[:, 3:] - y2[:, 3:]).max() > 1e-4
    y3, _ = model.apply(params, state, ids.astype(np.float32))
    np.testing.assert_array_equal(y, y3)
