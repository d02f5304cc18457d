"""The eightbit graph: structure, agreement with the float graph, portability; the weights modes."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CALIBRATION, HELDOUT, ROOT
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.data.images import Preprocessing, list_images, load_image
from tfcompress.calibrate.run import calibrate
from tfcompress.errors import TfcError
from tfcompress.evaluate.measure import agreement, graph_size
from tfcompress.graph.runner import run_graph
from tfcompress.quantize.config import QuantConfig
from tfcompress.quantize.convert import quantize_model

# Held-out top-1 agreement the eightbit graph must keep (the foundation issue's bar).
MIN_TOP1_AGREEMENT = 0.98


@pytest.fixture(scope="module")
def calibrated(float_model):
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    result = calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), images=CALIBRATION,
                       progress=False)
    return prep, result.cache


# Exactness of the default chain's float accumulator, relative to the conv output's largest magnitude
# (float32 products summed in another order).
ACCUMULATOR_RTOL = 1e-5


def _const(by_name, name):
    return tf.make_ndarray(by_name[name.split(":")[0]].attr["value"].tensor)


def _zero_code(lo, hi):
    return -float(lo) * 255.0 / (float(hi) - float(lo))


def test_structure_of_reference_chain(float_model, calibrated):
    """One 8-bit step per conv or matmul (its input); no Requantize; 0.0 on a code of every quint8 range."""
    _, cache = calibrated
    q, report = quantize_model(float_model, QuantConfig(), cache.ranges())
    ops = collections.Counter(n.op for n in q.graph_def.node)
    assert ops["QuantizedConv2D"] == 8 and ops["QuantizedMatMul"] == 2
    assert ops["Conv2D"] == 0 and ops["MatMul"] == 0 and ops["DepthwiseConv2dNative"] == 1
    assert ops["Requantize"] == 0 and ops["RequantizationRange"] == 0 and ops["QuantizedBiasAdd"] == 0
    assert ops["Dequantize"] == 0  # Accumulators are read back by Bitcast/Cast/Mul, nothing else is quint8.
    by_name = {n.name: n for n in q.graph_def.node}
    checked = 0
    for n in q.graph_def.node:
        if n.op == "QuantizeV2":
            pairs = [(n.input[1], n.input[2])]
        elif n.op in ("QuantizedConv2D", "QuantizedMatMul"):
            pairs = [(n.input[4], n.input[5])]  # The filter's range.
        else:
            continue
        for lo, hi in pairs:
            z = _zero_code(_const(by_name, lo), _const(by_name, hi))
            assert abs(z - round(z)) < 1e-3, (n.name, z)
            checked += 1
    assert checked >= 20
    assert graph_size(q.graph_def).raw < graph_size(float_model.graph_def).raw / 2
    assert [s.key for s in q.inputs] == [s.key for s in float_model.inputs]


def test_reference_accumulator_is_exact(float_model, calibrated):
    """The first conv's float output equals numpy's conv of its input codes and filter codes, decoded."""
    prep, cache = calibrated
    q, _ = quantize_model(float_model, QuantConfig(), cache.ranges())
    by_name = {n.name: n for n in q.graph_def.node}
    conv = next(n for n in q.graph_def.node if n.op == "QuantizedConv2D")
    name = conv.name[:-len("/eightbit")]
    x = np.stack([load_image(p, prep) for p in list_images(HELDOUT)[:4]])
    feed = {q.inputs[0].tensor: x}
    fetch = [t if ":" in t else t + ":0" for t in (conv.input[0], conv.input[2], conv.input[3], name)]
    codes, lo, hi, got = run_graph(q.graph_def, feed, fetch)

    def decode(c, lo, hi):
        step = (float(hi) - float(lo)) / 255.0
        return (c.astype(np.float64) - round(-float(lo) / step)) * step

    inputs = decode(codes, lo, hi)
    filt = decode(_const(by_name, conv.input[1]), _const(by_name, conv.input[4]), _const(by_name, conv.input[5]))
    filt = filt * _const(by_name, name + "/channel_scales").astype(np.float64)
    want = tf.nn.conv2d(inputs, filt, strides=list(conv.attr["strides"].list.i),
                        padding=conv.attr["padding"].s.decode()).numpy()
    np.testing.assert_allclose(got, want, atol=ACCUMULATOR_RTOL * np.abs(want).max())


def test_structure_of_tf1_chain(float_model, calibrated):
    _, cache = calibrated
    q, report = quantize_model(float_model, QuantConfig(kernels="tf1"), cache.ranges())
    ops = collections.Counter(n.op for n in q.graph_def.node)
    assert ops["RequantizationRange"] == 0
    assert ops["QuantizedConv2D"] == 8 and ops["QuantizedMatMul"] == 2
    assert ops["QuantizedBiasAdd"] >= 10 and ops["QuantizedRelu"] >= 7 and ops["QuantizedAdd"] == 2
    assert ops["QuantizedMaxPool"] == 1 and ops["QuantizedAvgPool"] == 1 and ops["QuantizedConcat"] == 1
    assert ops["Conv2D"] == 0 and ops["MatMul"] == 0
    # The depthwise conv has no portable quantized kernel: it stays float and is reported.
    assert ops["DepthwiseConv2dNative"] == 1 and "DepthwiseConv2dNative" in report.kept_float.values()
    # No Dequantize feeds a QuantizeV2 (redundant pairs never appear).
    by_name = {n.name: n for n in q.graph_def.node}
    for n in q.graph_def.node:
        if n.op == "QuantizeV2":
            assert by_name[n.input[0].split(":")[0]].op != "Dequantize", n.name
    # Signature unchanged.
    assert [s.key for s in q.inputs] == [s.key for s in float_model.inputs]
    assert graph_size(q.graph_def).raw < graph_size(float_model.graph_def).raw / 2


def test_agreement_on_heldout_images(float_model, calibrated):
    prep, cache = calibrated
    # minmax on 100 calibration images clips less than a percentile; percentile
    # 99.9 is the calibrator that meets the bar on this model (see README).
    q, _ = quantize_model(float_model, QuantConfig(), cache.ranges(CalibratorConfig(method="percentile",
                                                                                   percentile=99.9)))
    agree = agreement(float_model, q, list_images(HELDOUT), prep)
    assert agree.images == 300
    assert agree.top1 >= MIN_TOP1_AGREEMENT, agree


def test_every_requantize_range_is_a_calibrated_constant(float_model, calibrated):
    _, cache = calibrated
    ranges = cache.ranges()
    q, _ = quantize_model(float_model, QuantConfig(kernels="tf1"), ranges)
    by_name = {n.name: n for n in q.graph_def.node}
    requantizes = [n for n in q.graph_def.node if n.op == "Requantize"]
    assert requantizes
    calibrated_values = {np.float32(v) for lo_hi in ranges.values() for v in lo_hi}
    for n in requantizes:
        for inp in n.input[3:5]:
            node = by_name[inp]
            assert node.op == "Const"
            assert np.float32(tf.make_ndarray(node.attr["value"].tensor)) in calibrated_values


def test_missing_or_nan_ranges_are_errors(float_model, calibrated):
    _, cache = calibrated
    # The input of the second conv: every chain quantizes it.
    conv = [n.input[0] for n in float_model.graph_def.node if n.op == "Conv2D"][1]
    conv = conv if ":" in conv else conv + ":0"
    ranges = dict(cache.ranges())
    ranges.pop(conv)
    with pytest.raises(TfcError, match="no calibration range for tensor " + conv):
        quantize_model(float_model, QuantConfig(), ranges)
    ranges = dict(cache.ranges())
    ranges[conv] = (float("nan"), 1.0)
    with pytest.raises(TfcError, match="NaN or Inf"):
        quantize_model(float_model, QuantConfig(), ranges)


# The quantized kernels are bit-identical with TF's oneDNN rewrite on or off
# (MIN_COMBINED); the ops kept float (depthwise conv, Mean, Softmax) may round
# differently under oneDNN, which requantization can amplify by one step of
# the logits (about 0.1 here), i.e. a few hundredths of a softmax probability.
PORTABILITY_ATOL = 0.05


def test_default_output_runs_without_onednn(float_model, calibrated, tmp_path):
    """The default graph runs, non-empty, in a TF process with oneDNN off, and agrees with oneDNN on."""
    _, cache = calibrated
    q, _ = quantize_model(float_model, QuantConfig(), cache.ranges())
    pb = tmp_path / "q.pb"
    pb.write_bytes(q.graph_def.SerializeToString())
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, tensorflow as tf\n"
              "from tfcompress.graph.runner import run_graph\n"
              "gd = tf.compat.v1.GraphDef(); gd.ParseFromString(open(sys.argv[1], 'rb').read())\n"
              "y = run_graph(gd, {sys.argv[2]: np.load(sys.argv[3])}, [sys.argv[4]])[0]\n"
              "np.save(sys.argv[5], y)\n")
    outs = []
    for flag in ("0", "1"):
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag, TF_CPP_MIN_LOG_LEVEL="2")
        out = tmp_path / f"y{flag}.npy"
        subprocess.run([sys.executable, "-c", script, str(pb), q.inputs[0].tensor, str(tmp_path / "x.npy"),
                        q.outputs[0].tensor, str(out)], check=True, env=env, cwd=ROOT)
        outs.append(np.load(out))
    assert outs[0].shape == (4, 10) and np.all(np.isfinite(outs[0]))
    np.testing.assert_array_equal(outs[0].argmax(1), outs[1].argmax(1))
    np.testing.assert_allclose(outs[0], outs[1], atol=PORTABILITY_ATOL)


def test_weights_mode_is_within_one_step_per_channel(float_model):
    q, _ = quantize_model(float_model, QuantConfig(mode="weights", min_weight_size=64))
    ops = collections.Counter(n.op for n in q.graph_def.node)
    assert ops["Dequantize"] >= 10
    float_consts = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in float_model.graph_def.node
                    if n.op == "Const"}
    checked = 0
    for n in q.graph_def.node:
        if n.op != "Dequantize" or n.name not in float_consts:
            continue
        w = float_consts[n.name]
        axis = n.attr["axis"].i
        got = run_graph(q.graph_def, {}, [n.name + ":0"])[0]
        step = np.abs(np.moveaxis(w, axis, -1)).reshape(-1, w.shape[axis]).max(0) / 127.0
        err = np.abs(np.moveaxis(got - w, axis, -1)).reshape(-1, w.shape[axis]).max(0)
        assert np.all(err <= step / 2 + 1e-7), n.name
        checked += 1
    assert checked >= 10
    assert graph_size(q.graph_def).raw < graph_size(float_model.graph_def).raw / 3


def test_weights_rounded_has_few_levels_and_compresses(float_model):
    q, _ = quantize_model(float_model, QuantConfig(mode="weights_rounded", bitdepth=4, min_weight_size=64))
    rounded = [tf.make_ndarray(n.attr["value"].tensor) for n in q.graph_def.node
               if n.op == "Const" and n.attr["dtype"].type == tf.float32.as_datatype_enum]
    big = [v for v in rounded if v.size >= 64]
    assert big and all(len(np.unique(v)) <= 16 for v in big)
    assert graph_size(q.graph_def).gzip < graph_size(float_model.graph_def).gzip * 0.6


def test_config_validation():
    with pytest.raises(TfcError, match="eightbit kernels are 8-bit"):
        QuantConfig(bitdepth=4)
    with pytest.raises(TfcError, match="unknown --mode"):
        QuantConfig(mode="fp4")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
