"""TFLite export: every mode runs in LiteRT, and our calibrated ranges are the ones in the int8 flatbuffer."""

import sys

import numpy as np
import pytest

from tests.conftest import CALIBRATION, HELDOUT
from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
from tfcompress.calibrate.collect import collect_stats
from tfcompress.data.images import Preprocessing, iter_batches, list_images
from tfcompress.errors import TfcError
from tfcompress.export.tflite import TfliteConfig, convert_tflite
from tfcompress.graph.runner import GraphRunner

# Top-1 agreement with the float graph every mode must keep on the shipped model.
MIN_TOP1_AGREEMENT = 0.98
# A float32 scale read back from the flatbuffer against one computed in float64.
SCALE_RTOL = 1e-6
# The tensor whose range is checked: the first Relu, fused by TFLite with its conv and bias.
RELU = "digits_resnet_1/re_lu_1/Relu"


@pytest.fixture(scope="module")
def setup(float_model):
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    stats = collect_stats(float_model, list_images(CALIBRATION), prep, progress=False)
    images = np.concatenate(list(iter_batches(list_images(HELDOUT)[::3], prep, 32)))
    with GraphRunner(float_model.graph_def, [float_model.image_input().tensor],
                     [float_model.outputs[0].tensor]) as runner:
        reference = runner.run(images)[0]
    float_size = len(convert_tflite(float_model, TfliteConfig(quantize="none")).flatbuffer)
    return prep, stats, images, reference, float_size


def _run_litert(flatbuffer, images):
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_content=flatbuffer, num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for x in images:
        x = x[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        results.append(y[0])
    return np.array(results), interp


@pytest.mark.parametrize("mode", ["none", "float16", "dynamic", "int8", "uint8", "int16x8"])
def test_every_mode_runs_in_litert_and_agrees(float_model, setup, mode):
    prep, stats, images, reference, float_size = setup
    ranges = compute_ranges(stats, CalibratorConfig())
    dataset = lambda: ([b] for b in iter_batches(list_images(CALIBRATION)[:20], prep, 1))  # noqa: E731
    result = convert_tflite(float_model, TfliteConfig(quantize=mode), ranges, dataset)
    out, interp = _run_litert(result.flatbuffer, images)
    agreement = float(np.mean(out.argmax(1) == reference.argmax(1)))
    assert agreement >= MIN_TOP1_AGREEMENT, (mode, agreement)
    io_dtype = {"int8": np.int8, "uint8": np.uint8, "int16x8": np.int16}.get(mode, np.float32)
    assert interp.get_input_details()[0]["dtype"] == io_dtype
    if mode in ("int8", "uint8", "dynamic"):
        assert len(result.flatbuffer) < float_size / 3, (mode, len(result.flatbuffer), float_size)
    elif mode == "float16":
        assert len(result.flatbuffer) < float_size * 0.6


def _relu_quantization(flatbuffer):
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_content=flatbuffer)
    for t in interp.get_tensor_details():
        if RELU in t["name"].split(";") and t["dtype"] == np.int8:
            return t["quantization"]
    raise AssertionError(f"no TFLite tensor for {RELU}")


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_our_ranges_reach_the_flatbuffer(float_model, setup, method):
    stats = setup[1]
    config = CalibratorConfig(method=method, percentile=99.0)
    result = convert_tflite(float_model, TfliteConfig(quantize="int8"), compute_ranges(stats, config))
    assert any(RELU in name.split(";") for name in result.ranges_applied)
    scale, zero = _relu_quantization(result.flatbuffer)
    # Independent expectation: a Relu's range is [0, hi]; int8 maps it onto [-128, 127].
    s = stats[RELU + ":0"]
    hi = s.max if method == "minmax" else float(np.quantile(_relu_values(float_model, setup), 0.99))
    if method == "minmax":
        np.testing.assert_allclose(scale, hi / 255.0, rtol=SCALE_RTOL)
    else:
        # The histogram quantile is exact to one bin; the data quantile is the reference.
        assert abs(scale * 255.0 - hi) <= max(hi * 0.02, s.max / 2048 * 2), (scale * 255.0, hi)
        assert scale * 255.0 < s.max  # The percentile clipped: a different range reached the model.
    assert zero == -128


def _relu_values(float_model, setup):
    prep = setup[0]
    images = np.concatenate(list(iter_batches(list_images(CALIBRATION), prep, 32)))
    with GraphRunner(float_model.graph_def, [float_model.image_input().tensor], [RELU + ":0"]) as runner:
        return runner.run(images)[0].ravel()


def test_missing_range_is_an_error(float_model, setup):
    stats = setup[1]
    ranges = dict(compute_ranges(stats, CalibratorConfig()))  # TensorRanges is read-only: edit a copy.
    ranges.pop(RELU + ":0")
    with pytest.raises(TfcError, match="no calibrated range for TFLite tensor"):
        convert_tflite(float_model, TfliteConfig(quantize="int8"), ranges)


def test_unknown_mode_is_an_error():
    with pytest.raises(TfcError, match="unknown --quantize"):
        TfliteConfig(quantize="int4")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
