"""Calibrators on a model with outliers, float fallback, bias correction, metadata, targets, corrupt flatbuffers."""

import sys

import numpy as np
import pytest

from tests.conftest import CALIBRATION, HELDOUT, KERAS_MODEL
from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
from tfcompress.calibrate.collect import collect_stats, full_range_tensors
from tfcompress.data.images import Preprocessing, iter_batches, list_images
from tfcompress.errors import TfcError
from tfcompress.export import fallback
from tfcompress.export import flatbuffer as fb
from tfcompress.export.litert import LiteRTRunner
from tfcompress.export.targets import preflight
from tfcompress.export.tflite import TfliteConfig, calibrated_flatbuffer, convert_tflite, quantize_calibrated
from tfcompress.graph.runner import GraphRunner, run_model
from tfcompress.quantize.bias_correction import correct_biases, weight_rounding_error

# The outlier channel is x300: min/max leaves the other channels of the concat a handful of codes.
OUTLIER_FACTOR = 300.0
# Measured: minmax 50.3%, kl 98.7% on the 300 held-out digits.  The test asks for a clear gap only.
OUTLIER_MINMAX_AT_MOST = 0.80
OUTLIER_KL_AT_LEAST = 0.95
# Function preserved by the rescaling: float32 round-off only.
RESCALE_ATOL = 1e-5
# The report's float reference is the float flatbuffer, this test's is the TF graph: float32 round-off.
REPORT_RTOL = 1e-3
# Standard metadata (descriptions, normalization, stats) plus the labels.txt zip: bounded in bytes, whatever
# the model's size (measured: 834 bytes with 10 labels).
METADATA_SIZE_BYTES = 1024
# Bias correction must cut the held-out output MSE by at least this factor (measured 0.47).
BIAS_CORRECTION_MSE_RATIO = 0.8
# The concat tensor TFLite quantizes with the outlier channel in it.
CONCAT = "digits_resnet_1/concatenate_1/concat"


def _images(prep, folder, count=None):
    paths = list_images(folder)
    return np.concatenate(list(iter_batches(paths[:count] if count else paths, prep, 64)))


@pytest.fixture(scope="module")
def outlier_setup(float_model):
    import keras
    from tfcompress.evaluate import zoo
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import freeze_keras_model
    keras_model = keras.saving.load_model(KERAS_MODEL, safe_mode=True)
    model, _ = optimize(freeze_keras_model(zoo.digits_with_outliers(keras_model, OUTLIER_FACTOR), "digits"))
    prep = Preprocessing.for_input(model.image_input().shape, mean=0.0, std=255.0)
    stats = collect_stats(model, list_images(CALIBRATION), prep, progress=False)
    images = _images(prep, HELDOUT)
    return model, prep, stats, images, run_model(model, images), run_model(float_model, images)


def test_outlier_rescaling_keeps_the_float_function(outlier_setup):
    _, _, stats, _, outlier_out, original_out = outlier_setup
    np.testing.assert_allclose(outlier_out, original_out, atol=RESCALE_ATOL)
    assert stats[CONCAT + ":0"].max > 100.0  # The outliers exist.


def test_calibrator_choice_changes_agreement_on_outliers(outlier_setup):
    model, _, stats, images, reference, _ = outlier_setup
    full = full_range_tensors(model)
    agreement, concat_range = {}, {}
    for method in ("minmax", "kl"):
        ranges = compute_ranges(stats, CalibratorConfig(method=method), full)
        flatbuffer = convert_tflite(model, TfliteConfig(quantize="int8"), ranges).flatbuffer
        out = LiteRTRunner(flatbuffer).predict(images).reshape(len(images), -1)
        agreement[method] = float(np.mean(out.argmax(1) == reference.argmax(1)))
        concat_range[method] = ranges[CONCAT + ":0"]
        # The range reached the flatbuffer: the concat tensor's scale is the calibrated span / 255.
        tensor = next(t for t in fb.tensors(fb.parse(flatbuffer)) if t.name == CONCAT)
        lo, hi = concat_range[method]
        np.testing.assert_allclose(tensor.scales[0], (hi - lo) / 255.0, rtol=1e-5)
    assert concat_range["kl"][1] < concat_range["minmax"][1] / 3
    assert agreement["minmax"] <= OUTLIER_MINMAX_AT_MOST and agreement["kl"] >= OUTLIER_KL_AT_LEAST, agreement


@pytest.fixture(scope="module")
def digits_int8(float_model):
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    stats = collect_stats(float_model, list_images(CALIBRATION), prep, progress=False)
    ranges = compute_ranges(stats, CalibratorConfig(), full_range_tensors(float_model))
    calibrated, _ = calibrated_flatbuffer(float_model, ranges)
    return prep, stats, ranges, calibrated, quantize_calibrated(calibrated, "int8")


def test_float_layers_stay_float_and_cost_size(digits_int8):
    _, _, _, calibrated, quantized = digits_int8
    names = fallback.resolve_float_layers(["dense_1"], quantized)
    assert len(names) == 1 and "dense_1/MatMul" in names[0]
    kept = quantize_calibrated(calibrated, "int8", float_layers=names)
    assert fallback.float_outputs(kept) == names
    ops = {fb.op_name(fb.parse(kept), op) for op in fb.parse(kept).subgraphs[0].operators}
    assert "DEQUANTIZE" in ops and "QUANTIZE" in ops  # The float island is entered and left explicitly.
    assert len(kept) > len(quantized)  # Float weights for that layer.
    with pytest.raises(TfcError, match="no layer named 'nope'"):
        fallback.resolve_float_layers(["nope"], quantized)


def test_layer_report_rmse_matches_an_independent_float_reference(float_model, digits_int8):
    prep, _, _, _, quantized = digits_int8
    images = _images(prep, CALIBRATION, 16)
    float_fb = convert_tflite(float_model, TfliteConfig(quantize="none")).flatbuffer
    rows = fallback.layer_errors(float_fb, quantized, images)
    assert rows == sorted(rows, key=lambda r: -r.added)
    first = next(r for r in rows if r.layer == "conv2d_1")
    # Reference: the TF graph's Relu after the first conv, and the int8 tensor read straight from LiteRT.
    with GraphRunner(float_model.graph_def, [float_model.image_input().tensor],
                     ["digits_resnet_1/re_lu_1/Relu:0"]) as runner:
        expected = runner.run(images)[0]
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_content=fb.expose_all_tensors(quantized),
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    detail = next(d for d in interp.get_tensor_details() if d["name"] == first.tensor)
    inp = interp.get_input_details()[0]
    scale_in, zero_in = inp["quantization"]
    got = []
    for x in images:
        interp.set_tensor(inp["index"], np.clip(np.round(x[None] / scale_in) + zero_in, -128, 127).astype(np.int8))
        interp.invoke()
        scale, zero = detail["quantization"]
        got.append((interp.get_tensor(detail["index"]).astype(np.float64) - zero) * scale)
    rmse = float(np.sqrt(np.mean((np.concatenate(got) - expected) ** 2)))
    np.testing.assert_allclose(first.rmse, rmse, rtol=REPORT_RTOL)
    np.testing.assert_allclose(first.steps, rmse / detail["quantization"][0], rtol=REPORT_RTOL)


def test_min_agreement_search_reaches_its_target(float_model, digits_int8):
    prep, _, _, calibrated, quantized = digits_int8
    images = _images(prep, CALIBRATION)
    reference = run_model(float_model, images)
    float_fb = convert_tflite(float_model, TfliteConfig(quantize="none")).flatbuffer
    ranking = fallback.layer_errors(float_fb, quantized, images)
    found = fallback.search_min_agreement(calibrated, "int8", True, ranking, images, reference, target=1.0)
    assert found.reached and found.agreement == 1.0
    out = LiteRTRunner(found.flatbuffer).predict(images).reshape(len(images), -1)
    assert float(np.mean(out.argmax(1) == reference.argmax(1))) == found.agreement


# Quotients this close to a tie (in codes) may round either way: float32 rounding of the quotient is ~1e-5 here.
TIE_WINDOW = 1e-4


def test_weight_rounding_error_is_what_tflite_stores(float_model, digits_int8):
    quantized = digits_int8[4]
    from tensorflow.python.framework import tensor_util
    model = fb.parse(quantized)
    infos = fb.tensors(model)
    nodes = {n.name: n for n in float_model.graph_def.node}
    checked = 0
    for op in fb.operators(model):
        if op.name != "CONV_2D":
            continue
        w_info = infos[op.inputs[1]]
        conv = nodes[w_info.name]  # TFLite names a conv's filter after the TF conv op.
        w = tensor_util.MakeNdarray(nodes[conv.input[1]].attr["value"].tensor)  # HWIO
        q = np.frombuffer(bytes(model.buffers[model.subgraphs[0].tensors[w_info.index].buffer].data), np.int8)
        stored = q.reshape(w_info.shape).astype(np.float64) * np.asarray(w_info.scales)[:, None, None, None]
        stored = np.transpose(stored, (1, 2, 3, 0))
        predicted = w + weight_rounding_error(w, "Conv2D")
        scale = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0) / 127
        # Exact, except that a quotient within float32 rounding of a tie may round either way (the converter's
        # build decides): there, at most one step.
        quotient = w.astype(np.float64) / scale
        tie = np.abs(np.abs(quotient - np.trunc(quotient)) - 0.5) < TIE_WINDOW
        np.testing.assert_allclose(stored[~tie], predicted[~tie], atol=1e-6)
        assert np.all(np.abs(stored - predicted)[tie] <= scale[np.nonzero(tie)[-1]] + 1e-6)
        checked += 1
    assert checked >= 5


def test_bias_correction_shifts_dense_bias_by_mean_times_error_and_helps(float_model, digits_int8):
    prep, stats, ranges, _, plain = digits_int8
    corrected, count = correct_biases(float_model, stats)
    assert count >= 10
    from tensorflow.python.framework import tensor_util
    before = {n.name: n for n in float_model.graph_def.node}
    after = {n.name: n for n in corrected.graph_def.node}
    matmul = before["digits_resnet_1/probabilities_1/MatMul"]
    bias_name = before["digits_resnet_1/probabilities_1/BiasAdd"].input[1]
    w = tensor_util.MakeNdarray(before[matmul.input[1]].attr["value"].tensor)
    mean = stats[matmul.input[0] + ":0"].channel_sum / (stats[matmul.input[0] + ":0"].count // w.shape[0])
    b0 = tensor_util.MakeNdarray(before[bias_name].attr["value"].tensor)
    b1 = tensor_util.MakeNdarray(after[bias_name].attr["value"].tensor)
    np.testing.assert_allclose(b0 - b1, mean @ weight_rounding_error(w, "MatMul"), atol=1e-6)
    images = _images(prep, HELDOUT)
    reference = run_model(float_model, images)
    fixed = convert_tflite(corrected, TfliteConfig(quantize="int8"), ranges).flatbuffer
    mse = {name: float(np.mean((LiteRTRunner(f).predict(images).reshape(len(images), -1) - reference) ** 2))
           for name, f in (("plain", plain), ("corrected", fixed))}
    assert mse["corrected"] < mse["plain"] * BIAS_CORRECTION_MSE_RATIO, mse


def test_metadata_roundtrip_and_size(digits_int8):
    from tfcompress.export import metadata
    quantized = digits_int8[4]
    labels = [str(i) for i in range(10)]
    tagged = metadata.attach(quantized, metadata.ModelInfo(name="digits", mean=[127.5], std=[127.5], labels=labels))
    meta = metadata.read(tagged)
    assert meta.mean == (127.5,) * 3 and meta.std == (127.5,) * 3 and meta.labels == tuple(labels) and meta.name == "digits"
    assert len(tagged) - len(quantized) <= METADATA_SIZE_BYTES
    images = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    np.testing.assert_array_equal(LiteRTRunner(tagged).predict(images), LiteRTRunner(quantized).predict(images))
    # Written twice, the buffer is replaced, not duplicated, and the labels archive goes with the labels.
    again = metadata.attach(tagged, metadata.ModelInfo(name="digits", mean=[0.0], std=[255.0]))
    assert metadata.read(again).mean == (0.0,) * 3 and metadata.read(again).labels is None
    assert len(fb.parse(again).metadata) == len(fb.parse(tagged).metadata) and len(again) < len(tagged)
    assert metadata.read(quantized) is None


def test_target_preflight(float_model, digits_int8):
    quantized = digits_int8[4]
    float_fb = convert_tflite(float_model, TfliteConfig(quantize="none")).flatbuffer
    assert preflight(quantized, "hexagon-dsp").ok and preflight(quantized, "edgetpu").ok
    assert preflight(quantized, "generic").ok and preflight(float_fb, "generic").ok
    edge = preflight(float_fb, "edgetpu")
    assert any("not fully 8-bit quantized" in c for c in edge.failed_constraints)
    assert any("int8 or uint8" in c for c in edge.failed_constraints)
    gpu = preflight(quantized, "gpu")
    assert any("float32" in c for c in gpu.failed_constraints) and not gpu.unsupported_ops
    arm = preflight(quantized, "arm-cpu")
    assert set(arm.unsupported_ops) == {"AVERAGE_POOL_2D (8-bit)", "SOFTMAX (8-bit)"}
    # A legacy-style uint8 model with per-channel weights: made by retyping one per-channel filter.
    model = fb.parse(quantized)
    conv_filter = next(t for t in fb.tensors(model) if t.constant and len(t.scales) > 1 and t.dtype == np.int8)
    model.subgraphs[0].tensors[conv_filter.index].type = 3  # UINT8
    assert any("per-channel" in c for c in preflight(fb.serialize(model), "hexagon-dsp").failed_constraints)
    with pytest.raises(TfcError, match="unknown --target 'npu'"):
        preflight(quantized, "npu")


def test_corrupt_flatbuffers_are_named(digits_int8):
    quantized = digits_int8[4]
    with pytest.raises(TfcError, match="not a TFLite flatbuffer"):
        fb.parse(b"\x00" * 64)
    with pytest.raises(TfcError, match="truncated or corrupt|truncated TFLite"):
        fb.parse(quantized[: len(quantized) // 3])



def test_every_tensor_read_per_image_even_a_scalar():
    """x * mean(x) has a 0-d tensor inside: exposed as an output, it is read per image as [B], not a
    traceback (the stock converter's int8 of the zoo SE net has such tensors)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 2], tf.float32)])
    def scaled(x):
        return {"y": x * tf.reduce_mean(x)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([scaled.get_concrete_function()], scaled)
    flatbuffer = fb.expose_all_tensors(converter.convert())
    batch = np.random.default_rng(0).uniform(0, 1, (3, 4, 4, 2)).astype(np.float32)
    values = LiteRTRunner(flatbuffer, xnnpack=False).outputs_by_name(batch)
    scalars = [v for v in values.values() if v.shape == (3,)]
    assert scalars, {k: v.shape for k, v in values.items()}
    np.testing.assert_allclose(scalars[0], batch.mean(axis=(1, 2, 3)), rtol=1e-6)
    full = [v for v in values.values() if v.shape == (3, 4, 4, 2)]
    np.testing.assert_allclose(full[-1], batch * batch.mean(axis=(1, 2, 3))[:, None, None, None], rtol=1e-6)

if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
