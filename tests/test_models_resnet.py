"""fn.models.resnet: its layout, the plain control, bad depths, and the CLI's --model resnet."""
import jax
import pytest

import funcnet as fn
from funcnet import cli
from funcnet.core import param_paths


def convs(model, params):
    return [p for p, leaf in param_paths(model, params) if p.endswith("conv2d/w")]


def test_resnet_layout_on_mnist_and_digits():
    model = fn.models.resnet(10, 28, depth=14, width=4)
    params, _ = jax.eval_shape(lambda k: model.init(k, (2, 28, 28, 1)), jax.random.PRNGKey(0))
    paths = convs(model, params)
    # depth 14: the stem, 3 stages x 2 blocks x 2 convs, the dense layer; 2 projections
    assert len(paths) == 1 + 12 + 2
    assert sum("/1:parallel/1:" in p for p in paths) == 2
    assert sum(p.endswith(":dense/w") for p, _ in param_paths(model, params)) == 1
    # stride-2 stem and two stride-2 stages: 28 -> 14 -> 7 -> 4; 4 * width channels pooled
    assert model.output_shape((2, 28, 28, 1)) == (2, 10)
    text = fn.summary(model, (2, 28, 28, 1))
    assert "(2, 4, 4, 16)" in text and "global_avg_pool" in text and "(2, 16)" in text
    small = fn.models.build("resnet", (1, 8, 8, 1), 10)  # the digits: stride-1 stem, 8 -> 4 -> 2
    assert "(1, 2, 2, 64)" in fn.summary(small, (1, 8, 8, 1))


def test_plain_control_has_the_same_layers_without_the_additions():
    plain = fn.models.resnet(10, 28, depth=8, width=4, skip=False)
    params, _ = jax.eval_shape(lambda k: plain.init(k, (2, 28, 28, 1)), jax.random.PRNGKey(0))
    assert len(convs(plain, params)) == 7
    assert "residual" not in repr(plain) and "residual" in repr(fn.models.resnet(10, 28, depth=8))


@pytest.mark.parametrize("depth, message", [(10, "depth must be 6n \\+ 2"), (2, "depth must be an int >= 8"),
                                            (8.0, "depth must be an int >= 8")])
def test_bad_depth(depth, message):
    with pytest.raises(fn.LayerError, match="resnet: " + message):
        fn.models.resnet(10, 28, depth=depth)


def test_build_needs_images_and_the_cli_offers_resnet():
    with pytest.raises(fn.LayerError, match="resnet needs NHWC images"):
        fn.models.build("resnet", (1, 64), 10)
    assert "resnet" in fn.models.MODELS
    assert cli._parser().parse_args(["train", "--model", "resnet"]).model == "resnet"
