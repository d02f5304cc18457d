"""The fused oneDNN kernel set (--kernels=onednn): coverage, numbers against float, refusal without oneDNN.

Most tests need a TF process whose oneDNN ops are on: tools/test.sh and the
Bazel test environment set TF_ENABLE_ONEDNN_OPTS=1, and a process without
them skips those tests.  The refusal test runs either way, in a subprocess
with oneDNN off.
"""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CALIBRATION, HELDOUT, ROOT
from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
from tfcompress.calibrate.collect import collect_stats
from tfcompress.data.images import Preprocessing, list_images
from tfcompress.evaluate import zoo as zoo_models
from tfcompress.evaluate.measure import agreement
from tfcompress.graph.graph import Graph
from tfcompress.graph.passes import optimize
from tfcompress.graph.runner import run_graph
from tfcompress.io.loaders import freeze_keras_model
from tfcompress.quantize.builder import S8, U7, Builder, build_eightbit
from tfcompress.quantize.config import QuantConfig
from tfcompress.quantize.convert import quantize_model
from tfcompress.quantize.onednn import FALLBACK, QUANTIZERS, taps_inside, mkl_enabled

needs_onednn = pytest.mark.skipif(not mkl_enabled(), reason="TF's oneDNN ops are off in this process")

# The shipped model must keep at least the reference kernels' agreement bar.
MIN_TOP1_AGREEMENT = 0.98
# MobileNetV2 (seeded weights, BN statistics from images): largest logit error
# as a fraction of the float logits' span.  Measured about 5% with minmax
# ranges at 96x96; the bound leaves room for other CPUs' rounding.
MOBILENET_MAX_RELATIVE_ERROR = 0.08
# One fused conv against float: the error of 7-bit input codes, per-channel
# 8-bit weights and 7-bit output codes, in output quantization steps.
MAX_STEPS = 2.0


def _ranges(model, prep, method="minmax"):
    stats = collect_stats(model, list_images(CALIBRATION), prep, progress=False)
    return compute_ranges(stats, CalibratorConfig(method=method))


@needs_onednn
def test_shipped_model_fully_quantized_and_agrees(float_model):
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    q, report = quantize_model(float_model, QuantConfig(kernels="onednn"), _ranges(float_model, prep))
    ops = collections.Counter(n.op for n in q.graph_def.node)
    for float_op in ("Conv2D", "DepthwiseConv2dNative", "MatMul", "RequantizationRange", "Requantize"):
        assert ops[float_op] == 0, float_op
    assert ops["QuantizedConv2DWithBiasSumAndReluAndRequantize"] == 2  # Both residual adds fused.
    assert ops["QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize"] == 1
    assert ops["QuantizedRelu6"] == 2  # Each Relu6 clamps after its fused Relu.
    agree = agreement(float_model, q, list_images(HELDOUT), prep)
    assert agree.top1 >= MIN_TOP1_AGREEMENT, agree


def _single_op_graph(build, shape):
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
        tf.identity(build(x), name="y")
    return g.as_graph_def()


def _quantize_single(graph_def, x):
    """Calibrates on `x` itself (so ranges are exact) and builds the oneDNN graph."""
    graph = Graph(graph_def, outputs=["y"])
    names = [n.name + ":0" for n in graph_def.node if n.op != "Const"]
    values = run_graph(graph_def, {"x:0": x}, names)
    ranges = {t: (min(float(v.min()), 0.0), max(float(v.max()), 0.0)) for t, v in zip(names, values)}
    q, report = build_eightbit(graph, ranges, QUANTIZERS, FALLBACK)
    return q, report, ranges


@needs_onednn
@pytest.mark.parametrize("case", ["pad_depthwise_relu6", "signed_conv_linear", "conv_sum_relu", "matmul_logits",
                                  "signed_matmul_relu", "depthwise_linear", "signed_depthwise_linear"])
def test_fused_chain_matches_float(case):
    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.3, (3, 3, 8, 8)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    if case == "pad_depthwise_relu6":
        x = rng.uniform(0, 1, (2, 9, 9, 8)).astype(np.float32)
        dw = rng.normal(0, 0.5, (3, 3, 8, 1)).astype(np.float32)
        build = lambda t: tf.nn.relu6(tf.nn.bias_add(tf.nn.depthwise_conv2d(  # noqa: E731
            tf.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]]), dw, [1, 2, 2, 1], "VALID"), b))
        fused = "QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize"
    elif case == "depthwise_linear":  # A separable conv's depthwise half: no bias, no activation.
        x = rng.uniform(0, 1, (2, 9, 9, 8)).astype(np.float32)
        dw = rng.normal(0, 0.5, (3, 3, 8, 1)).astype(np.float32)
        build = lambda t: tf.nn.depthwise_conv2d(t, dw, [1, 1, 1, 1], "SAME")  # noqa: E731
        fused = "QuantizedDepthwiseConv2D"  # Read back from the int32 accumulator.
    elif case == "signed_depthwise_linear":  # Fed by a residual Add: shifted to >= 0, the shift added back.
        x = rng.uniform(-1, 0.5, (2, 9, 9, 8)).astype(np.float32)
        dw = rng.normal(0, 0.5, (3, 3, 8, 1)).astype(np.float32)
        build = lambda t: tf.nn.bias_add(tf.nn.depthwise_conv2d(t, dw, [1, 2, 2, 1], "SAME"), b)  # noqa: E731
        fused = "QuantizedDepthwiseConv2D"
    elif case == "signed_matmul_relu":  # An SE block's dense layers read signed values: shifted to >= 0.
        x = rng.uniform(-1, 0.6, (4, 8)).astype(np.float32)
        m = rng.normal(0, 0.3, (8, 5)).astype(np.float32)
        build = lambda t: tf.nn.relu(tf.nn.bias_add(tf.matmul(t, m), b[:5]))  # noqa: E731
        fused = "QuantizedMatMulWithBiasAndReluAndRequantize"
    elif case == "signed_conv_linear":
        x = rng.uniform(-1, 1, (2, 9, 9, 8)).astype(np.float32)
        build = lambda t: tf.nn.bias_add(tf.nn.conv2d(t, w, 1, "SAME"), b)  # noqa: E731
        fused = "QuantizedConv2DWithBias"  # Only float reads it: dequantized from the int32 accumulator.
    elif case == "conv_sum_relu":
        x = rng.uniform(0, 1, (2, 9, 9, 8)).astype(np.float32)
        build = lambda t: tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(t, w, 1, "SAME"), b)  # noqa: E731
                                     + tf.nn.relu(t - 0.2))
        fused = "QuantizedConv2DWithBiasSumAndReluAndRequantize"
    else:
        x = rng.uniform(0, 1, (4, 8)).astype(np.float32)
        m = rng.normal(0, 0.3, (8, 5)).astype(np.float32)
        build = lambda t: tf.nn.bias_add(tf.matmul(t, m), b[:5])  # noqa: E731
        fused = "QuantizedMatMulWithBiasAndDequantize"
    graph_def = _single_op_graph(build, x.shape)
    q, report, ranges = _quantize_single(graph_def, x)
    ops = collections.Counter(n.op for n in q.node)
    kept = set(report.kept_float.values()) - {"Sub", "Relu"}  # The summand's own float ops.
    assert ops[fused] == 1 and not kept, (ops, report.kept_float)
    assert ops["Pad"] == 0 and ops["Conv2D"] == 0 and ops["DepthwiseConv2dNative"] == 0
    expected = run_graph(graph_def, {"x:0": x}, ["y:0"])[0]
    actual = run_graph(q, {"x:0": x}, ["y:0"])[0]
    lo, hi = float(expected.min()), float(expected.max())
    step = max(abs(lo), abs(hi)) / 127  # U7 and S8 both put the range's end at code 127.
    np.testing.assert_array_less(np.abs(actual - expected), MAX_STEPS * step)


@pytest.mark.parametrize("size,stride,padding", [((9, 9), 1, "SAME"), ((9, 8), 2, "SAME"), ((7, 10), 3, "SAME"),
                                                  ((9, 9), 2, "VALID"), ((5, 6), 1, "VALID")])
def test_depthwise_shift_map_against_tf(size, stride, padding):
    """The constant a signed depthwise input's shift adds back: TF's depthwise conv of an all-ones image."""
    filt = np.random.default_rng(5).normal(0, 1, (3, 3, 4)).astype(np.float64)
    attrs = {"strides": [1, stride, stride, 1], "padding": padding, "dilations": [1, 1, 1, 1]}
    expected = tf.nn.depthwise_conv2d(np.ones((1, *size, 4), np.float64), filt[..., None],
                                      [1, stride, stride, 1], padding).numpy()[0]
    np.testing.assert_allclose(taps_inside(filt, size, attrs), expected, rtol=1e-12, atol=1e-12)


@needs_onednn
def test_summand_that_is_the_conv_input_is_not_fused():
    """relu(conv(x) + x) with x as both input and summand: the fused kernel would crash, so it stays unfused."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (3, 3, 8, 8)).astype(np.float32)
    x = rng.uniform(0, 1, (1, 6, 6, 8)).astype(np.float32)
    graph_def = _single_op_graph(lambda t: tf.nn.relu(tf.nn.conv2d(t, w, 1, "SAME") + t), x.shape)
    q, _, _ = _quantize_single(graph_def, x)
    ops = collections.Counter(n.op for n in q.node)
    assert ops["QuantizedConv2DWithBiasSumAndReluAndRequantize"] == 0
    assert ops["QuantizedConv2DWithBiasAndRequantize"] == 1
    expected = run_graph(graph_def, {"x:0": x}, ["y:0"])[0]
    actual = run_graph(q, {"x:0": x}, ["y:0"])[0]
    assert np.abs(actual - expected).max() < MAX_STEPS * 2 * float(expected.max()) / 127


@needs_onednn
def test_projection_shortcut_block_quantizes_both_convs():
    """relu(conv_a(x) + conv_b(x)): both convs could fuse the same Add -> Relu; one does, the other is its summand.

    (keras.applications ResNet50 stopped on an internal error here: both chains took the Add.)
    """
    rng = np.random.default_rng(5)
    wa, wb = (rng.normal(0, 0.3, (3, 3, 8, 8)).astype(np.float32) for _ in range(2))
    ba, bb = (rng.normal(0, 0.1, 8).astype(np.float32) for _ in range(2))
    x = rng.uniform(0, 1, (2, 9, 9, 8)).astype(np.float32)
    graph_def = _single_op_graph(lambda t: tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(t, wa, 1, "SAME"), ba)
                                                      + tf.nn.bias_add(tf.nn.conv2d(t, wb, 1, "SAME"), bb)),
                                 x.shape)
    q, report, _ = _quantize_single(graph_def, x)
    ops = collections.Counter(n.op for n in q.node)
    assert ops["Conv2D"] == 0 and not report.kept_float, (ops, report.kept_float)
    assert ops["QuantizedConv2DWithBiasSignedSumAndReluAndRequantize"] \
        + ops["QuantizedConv2DWithBiasSumAndReluAndRequantize"] == 1
    assert ops["QuantizedConv2DWithBiasAndRequantize"] == 1
    expected = run_graph(graph_def, {"x:0": x}, ["y:0"])[0]
    actual = run_graph(q, {"x:0": x}, ["y:0"])[0]
    step = float(expected.max()) / 127
    np.testing.assert_array_less(np.abs(actual - expected), 2 * MAX_STEPS * step)  # Two requantized branches.


@needs_onednn
def test_mobilenet_v2_all_convs_quantized():
    from tfcompress.evaluate import zoo
    size = 96
    images = list_images(CALIBRATION)
    keras_model = zoo.mobilenet_v2(images[:32], size=size)
    model, _ = optimize(freeze_keras_model(keras_model))
    prep = zoo.mobilenet_preprocessing(size)
    before = collections.Counter(n.op for n in model.graph_def.node)
    q, report = quantize_model(model, QuantConfig(kernels="onednn"), _ranges(model, prep))
    after = collections.Counter(n.op for n in q.graph_def.node)
    assert before["DepthwiseConv2dNative"] == 17 and before["Conv2D"] == 35
    assert after["DepthwiseConv2dNative"] == 0 and after["Conv2D"] == 0 and after["MatMul"] == 0
    assert after["QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize"] == 17
    assert after["Pad"] == 0  # Stride-2 ZeroPadding2D went into the kernels' padding_list.
    agree = agreement(model, q, list_images(HELDOUT)[:64], prep)
    assert agree.relative_error <= MOBILENET_MAX_RELATIVE_ERROR, agree


# Zoo models quantized with --kernels=onednn: the least top-1 agreement with the float graph on held-out
# images (measured 98.7% on the mini-Xception, 99.3-100% on the others).
ZOO_MIN_TOP1 = 0.97


@needs_onednn
@pytest.mark.parametrize("name", sorted(zoo_models.ZOO))
def test_zoo_every_conv_depthwise_and_matmul_quantized(name, tmp_path):
    """Separable pairs, depthwise convs fed by residual Adds, signed-input dense layers (SE, heads): all
    quantized, and the class outputs still agree with float."""
    import tfcompress as tfc
    entry = zoo_models.ZOO[name]
    options = tfc.CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
    result = tfc.quantize_graph(entry.path, str(tmp_path / "q"), images=entry.calibration, kernels="onednn",
                                options=options, eval_images=entry.heldout)
    before = collections.Counter(n.op for n in result.float_model.graph_def.node)
    after = collections.Counter(n.op for n in result.quantized.graph_def.node)
    assert before["Conv2D"] + before["DepthwiseConv2dNative"] + before["MatMul"] > 0
    assert after["Conv2D"] == after["DepthwiseConv2dNative"] == after["MatMul"] == 0, result.report.kept_float
    heads = [h for h in result.agreement.heads if h.is_class]
    assert heads and all(h.top1 >= ZOO_MIN_TOP1 for h in heads), result.agreement


def test_builder_encodings_against_numpy():
    """The builder's U7 and S8 quantize/dequantize match a numpy model of the encodings."""
    x = np.linspace(-1.5, 3.5, 101, dtype=np.float32).reshape(1, 101)
    graph_def = _single_op_graph(tf.identity, x.shape)
    graph = Graph(graph_def, outputs=["y"])
    calibrated = (-1.5, 3.0)  # Inputs above 3.0 are beyond the calibrated range.
    for enc in (U7, S8):
        builder = Builder(graph, {"x:0": calibrated})
        builder.commit(builder.emission().copy_float(graph.node("x")))
        emission = builder.emission()
        q = emission.quantized_input("x:0", (enc,))
        emission.quantized["codes:0"] = q  # A tensor known only in quantized form: float_input dequantizes it.
        emission.float_input("codes:0")
        assert [n.op for n in emission.nodes][-1] in ("Dequantize", "Mul") and not builder.is_quantized("x:0")
        builder.commit(emission)  # Nothing reaches the builder before this.
        out = builder.graph_def(graph.versions, ["codes", q.tensor])
        codes, restored = run_graph(out, {"x:0": x}, [q.tensor + ":0", "codes:0"])
        scale = calibrated[1] / 127
        if enc is U7:  # [0, 3.0] at codes 0..127; beyond it, the codes above 127 (up to 255) are headroom.
            ref = np.clip(np.round(x / scale), 0, 255)
        else:  # [-3.0, 3.0] at codes -127..127.
            ref = np.clip(np.round(x / scale), -127, 127)
        codes = codes.astype(np.int32)
        assert np.abs(codes - ref).max() <= 1, enc  # QuantizeV2 may round halves either way.
        inside = (x >= calibrated[0] * (enc is S8)) & (x <= calibrated[1])
        np.testing.assert_allclose(restored, codes * scale, rtol=1e-6, atol=1e-7)
        assert codes[inside].max() <= 127 and np.abs(restored - x)[inside].max() <= scale, enc


def test_refused_without_onednn(tmp_path):
    """In a process with oneDNN off, --kernels=onednn is a one-line error, exit 1, no output."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="3")
    out = tmp_path / "q"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "quantize_graph.py"), f"--output={out}",
                           "--kernels=onednn", "--noprogress"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "TF_ENABLE_ONEDNN_OPTS=1" in lines[0], proc.stderr
    assert not out.exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
