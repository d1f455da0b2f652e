"""check_precision: a hand backward run in bfloat16 / float16 against the float64 truth,
beside autodiff in the same dtype. Backwards that accumulate in the low dtype, or take a
variance as E[x²] − E[x]², are flagged (and named inside a model); every funcnet layer
passes. Tiny shapes: one compiled program per layer, dtype and shape."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcnet as fn
from funcnet import _random as fr

KEY = jax.random.PRNGKey(3)


def low_sum(a, axis):
    """Σ a over `axis` with an accumulator in a's own dtype, rounded at every step. (XLA:CPU
    widens a plain bfloat16 reduce by itself, so a naive backward's low-precision sum is
    written as a loop carry, as a GPU kernel with a bfloat16 accumulator runs it.)"""
    a = jnp.moveaxis(a, axis, 0)
    return lax.scan(lambda c, t: (c + t, None), jnp.zeros(a.shape[1:], a.dtype), a)[0]


def naive_layer_norm(single_pass):
    """fn.layer_norm's init and forward with a backward written naively in the input's dtype:
    E[x²] − E[x]² for the variance (single_pass), or every sum accumulated in that dtype."""
    base = fn.layer_norm()

    def forward(params, state, x, *, train=False, key=None):
        y, state, _ = base.forward(params, state, x, train=train, key=key)
        return y, state, {"x": x}

    def backward(params, cache, dy):
        x, d = cache["x"], cache["x"].shape[-1]
        if single_pass:
            total = jnp.sum
            mean = jnp.mean(x, -1, keepdims=True)
            var = jnp.mean(x * x, -1, keepdims=True) - mean * mean
        else:
            total = low_sum
            mean = low_sum(x, -1)[..., None] / d
            var = low_sum((x - mean) ** 2, -1)[..., None] / d
        inv_std = 1 / jnp.sqrt(var + 1e-5)
        x_hat, dx_hat = (x - mean) * inv_std, dy * params["gamma"]
        dx = inv_std * (dx_hat - total(dx_hat, -1)[..., None] / d
                        - x_hat * total(dx_hat * x_hat, -1)[..., None] / d)
        return {"gamma": total(dy * x_hat, 0), "beta": total(dy, 0)}, dx

    return base._replace(forward=forward, backward=backward, name="my_layer_norm")


# x = 100 + N(0, 1): offset inputs, where E[x²] − E[x]² cancels catastrophically. Shared by
# the tests below, with one layer_norm: its compiled check is reused.
X_OFFSET = 100.0 + fr.normal(KEY, (4, 32))
LAYER_NORM = fn.layer_norm()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_funcnets_norms_stay_accurate_at_offset_inputs(dtype):
    """Two-pass statistics in float32: at x = 100 + N(0, 1) the norms' gradients keep the
    dtype's precision (the hand error within 3 ulps), in training and evaluation."""
    ulp = float(jnp.finfo(dtype).eps)
    for layer, train in ((LAYER_NORM, True), (fn.batch_norm(), True), (fn.batch_norm(), False)):
        report = fn.check_precision(layer, X_OFFSET, dtype=dtype, train=train)
        assert report.ok and max(r.manual_vs_autodiff for r in report.rows) < 3 * ulp, report


@pytest.mark.parametrize("single_pass", [True, False], ids=["single-pass variance", "low sums"])
def test_a_naive_layer_norm_backward_is_flagged_and_funcnets_passes(single_pass):
    good, naive = LAYER_NORM, naive_layer_norm(single_pass)
    for dtype in (jnp.bfloat16, jnp.float16):
        assert fn.check_precision(good, X_OFFSET, dtype=dtype).ok
        bad = fn.check_precision(naive, X_OFFSET, dtype=dtype)
        assert {"my_layer_norm/gamma", "input"} <= {r.path for r in bad.failures}, bad
        for row in bad.failures:  # autodiff of the same (two-pass) forward stays accurate
            assert row.autodiff_vs_numerical < 3 * float(jnp.finfo(dtype).eps)
            assert row.manual_vs_autodiff > 3 * row.autodiff_vs_numerical


def cross_entropy_layer(labels, grad):
    """The mean softmax cross-entropy of the input logits against fixed labels, as a Layer
    whose backward is dy · grad(logits, labels)."""
    def init(key, input_shape, dtype=None):
        return {}, {}

    def forward(params, state, x, *, train=False, key=None):
        return fn.losses.softmax_cross_entropy(x, labels), state, {"x": x}

    def backward(params, cache, dy):
        return {}, dy * grad(cache["x"], labels)

    return fn.Layer(init, forward, backward, "cross_entropy")


def naive_grad(logits, labels):
    """(softmax(z) − onehot(y)) / N computed in the logits' dtype."""
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return (jax.nn.softmax(logits, axis=-1) - onehot) / logits.shape[0]


def test_a_naive_softmax_cross_entropy_backward_is_flagged_and_funcnets_passes():
    # Confident logits (the label's 8 above the rest, as late in training): softmax is
    # within a few ulps of 1 at the label, so softmax − 1 in bfloat16 keeps no digit.
    labels = jnp.arange(6) % 5
    logits = fr.normal(KEY, (6, 5)) + 8.0 * jax.nn.one_hot(labels, 5)
    for dtype in (jnp.bfloat16, jnp.float16):
        good = fn.check_precision(cross_entropy_layer(labels, fn.losses.softmax_cross_entropy.grad),
                                  logits, dtype=dtype)
        assert good.ok, good
        bad = fn.check_precision(cross_entropy_layer(labels, naive_grad), logits, dtype=dtype)
        assert [r.path for r in bad.failures] == ["input"], bad
        assert bad.rows[0].manual_vs_autodiff > 10 * good.rows[0].manual_vs_autodiff


def test_the_report_names_the_layer_that_loses_precision_inside_a_model():
    model = fn.serial(fn.dense(6), naive_layer_norm(True), fn.dense(3))
    params, state = model.init(KEY, (5, 4))
    # the first dense's bias puts the layer norm's input around 100
    params = (dict(params[0], b=jnp.full((6,), 100.0)),) + params[1:]
    report = fn.check_precision(model, (5, 4), params=params, state=state)
    assert "1:my_layer_norm/gamma" in {r.path for r in report.failures}, report
    named = [n for n in report.notes if "loses precision" in n]
    assert len(named) == 1, report
    assert named[0].startswith("layer 1 (my_layer_norm): loses precision in bfloat16: gamma (hand ")
    assert named[0] in str(report)
    with pytest.raises(fn.GradientCheckError, match=r"layer 1 \(my_layer_norm\): loses precision"):
        fn.check_precision(model, (5, 4), params=params, state=state, raise_on_failure=True)


def test_tuple_inputs_get_a_row_each():
    report = fn.check_precision(fn.parallel(fn.dense(2), fn.tanh), ((3, 4), (3, 5)))
    assert [r.path for r in report.rows] == ["0:dense/b", "0:dense/w", "input[0]", "input[1]"]
    assert report.ok, report


def test_a_user_layer_in_float32_math_passes_and_its_dtype_is_noted():
    def forward(params, state, x, *, train=False, key=None):
        return x * params["s"], state, {"x": x}

    def backward(params, cache, dy):  # float32 math, results left in float32
        x, s, dy = (a.astype(jnp.float32) for a in (cache["x"], params["s"], dy))
        return {"s": jnp.sum(dy * x, 0)}, dy * s

    layer = fn.Layer(lambda k, shape, dtype=None: ({"s": fr.normal(k, shape[1:])}, {}),
                     forward, backward, "scale")
    report = fn.check_precision(layer, (8, 3))
    assert report.ok, report
    assert "scale/s: the hand gradient is float32, the leaf bfloat16" in report.notes
    assert "input: the hand gradient is float32, the leaf bfloat16" in report.notes


def test_rows_report_the_metric_against_the_float64_truth():
    layer = fn.dense(3)
    x = fr.normal(KEY, (4, 5))
    report = fn.check_precision(layer, x, key=KEY)
    assert report.title == "precision check (bfloat16)"
    assert report.columns == ("hand bfloat16", "autodiff bfloat16")
    assert report.tolerances == {"factor": 3.0, "floor": 2 * 2.0 ** -7, "dtype": "bfloat16"}
    assert [r.path for r in report.rows] == ["dense/b", "dense/w", "input"]
    # the same point by hand: params from init, rounded to bfloat16; the metric per leaf
    k_init, _, k_g, _ = jax.random.split(KEY, 4)
    with jax.enable_x64(True):
        params, _ = layer.init(k_init, (4, 5), jnp.float64)
        p = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(jnp.bfloat16).astype(np.float64),
                                   params)
        xx = np.asarray(x).astype(jnp.bfloat16).astype(np.float64)
        g = np.asarray(fr.normal(jax.random.split(k_g, 1)[0], (4, 3))).astype(jnp.bfloat16)
        truth_w = xx.T @ g.astype(np.float64)
        hand = layer.backward({k: v.astype(jnp.bfloat16) for k, v in p.items()},
                              {"x": jnp.asarray(xx, jnp.bfloat16)}, jnp.asarray(g))[0]["w"]
    want = np.max(np.abs(np.asarray(hand, np.float64) - truth_w)) / np.max(np.abs(truth_w))
    assert report.rows[1].manual_vs_autodiff == pytest.approx(want, rel=1e-12)
    assert set(report.rows[1].worst_values) == {"hand", "autodiff", "float64"}
    # an array and its shape: the shape draws N(0, 1) from the key
    assert fn.check_precision(layer, (4, 5)).ok


def test_integer_ids_are_constants():
    report = fn.check_precision(fn.embedding(7, 3), jnp.array([[0, 3, 3], [6, 1, 3]]))
    assert [r.path for r in report.rows] == ["embedding/w"] and report.ok, report


@pytest.mark.parametrize("kwargs, message", [
    ({"factor": 0.5}, "check_precision: factor must be a finite number >= 1, got 0.5"),
    ({"factor": float("nan")}, "check_precision: factor must be"),
    ({"dtype": jnp.int32}, "check_precision: dtype must be a floating-point type .* got "),
    ({"dtype": "complex64"}, "check_precision: dtype must be a floating-point type"),
    ({"dtype": "no such type"}, "check_precision: dtype must be a floating-point type"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(fn.FuncnetError, match=message):
        fn.check_precision(fn.relu, (2, 3), **kwargs)


def test_a_model_must_be_a_layer():
    with pytest.raises(fn.FuncnetError, match="check_precision: expected an fn.Layer, got function"):
        fn.check_precision(lambda x: x, (2, 3))


# Every funcnet layer, tiny shapes, one compiled program each. Kept at module level so a
# layer checked in two dtypes is the same object (its program is cached per layer).
CATALOGUE = {
    "dense": (fn.dense(4), (6, 5)),
    "conv2d": (fn.conv2d(3, (3, 3), stride=2, padding="SAME"), (2, 5, 5, 2)),
    "conv1d": (fn.conv1d(3, 3), (2, 7, 2)),
    "conv_transpose2d": (fn.conv_transpose2d(2, (3, 3), stride=2), (2, 3, 3, 3)),
    "batch_norm": (fn.batch_norm(), (8, 4)),
    "layer_norm": (fn.layer_norm(), (4, 8)),
    "relu": (fn.relu, (4, 6)),
    "sigmoid": (fn.sigmoid, (4, 6)),
    "tanh": (fn.tanh, (4, 6)),
    "sign": (fn.sign, (4, 6)),
    "identity": (fn.identity, (4, 6)),
    "gelu": (fn.gelu, (4, 6)),
    "gelu_tanh": (fn.gelu_tanh, (4, 6)),
    "softplus": (fn.softplus, (4, 6)),
    "elu": (fn.elu(), (4, 6)),
    "leaky_relu": (fn.leaky_relu(0.1), (4, 6)),
    "softmax": (fn.softmax, (4, 6)),
    "log_softmax": (fn.log_softmax, (4, 6)),
    "max_pool": (fn.max_pool((2, 2)), (2, 4, 4, 2)),
    "avg_pool": (fn.avg_pool((3, 3), 1), (2, 4, 4, 2)),
    "gaussian_pool": (fn.gaussian_pool((3, 3), 1.0, 1), (2, 4, 4, 2)),
    "learned_pool": (fn.learned_pool((2, 2), 1), (2, 4, 4, 2)),
    "global_avg_pool": (fn.global_avg_pool, (2, 3, 3, 2)),
    "dropout": (fn.dropout(0.25), (4, 6)),
    "flatten": (fn.flatten, (2, 3, 2, 2)),
    "embedding": (fn.embedding(5, 3), (4, 3)),
    "rnn": (fn.rnn(4), (2, 5, 3)),
    "lstm": (fn.lstm(3, return_sequences=False), (2, 4, 3)),
    "self_attention": (fn.self_attention(2, causal=True), (2, 4, 4)),
    "positional_embedding": (fn.positional_embedding(6), (2, 4, 4)),
    "residual": (fn.residual(fn.dense(4), fn.tanh), (3, 4)),
    "time_distributed": (fn.time_distributed(fn.dense(2)), (2, 3, 4)),
}
# float16 where its narrow range meets the layer's arithmetic: exp (the softmax pair),
# variances (the norms), and the most common product
FLOAT16 = ["dense", "batch_norm", "layer_norm", "softmax", "log_softmax"]


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_funcnet_layer_passes_in_bfloat16(name):
    layer, shape = CATALOGUE[name]
    report = fn.check_precision(layer, shape)
    assert report.ok, report
    assert not [n for n in report.notes if "hand gradient is" in n], report  # cast back


@pytest.mark.parametrize("name", FLOAT16)
def test_funcnet_layers_pass_in_float16(name):
    layer, shape = CATALOGUE[name]
    report = fn.check_precision(layer, shape, dtype=jnp.float16)
    assert report.ok, report

