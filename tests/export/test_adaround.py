"""AdaRound on int8 flatbuffers: checked against numpy's float layer outputs and nearest rounding."""

import os
import sys

import numpy as np
import pytest

from tfcompress.errors import TfcError
from tfcompress.export import adaround
from tfcompress.export import flatbuffer as fb
from tfcompress.export import tflite
from tfcompress.export.litert import tensor_values
from tests.conftest import CALIBRATION, KERAS_MODEL
from tests.export.fixtures import biased_conv, int8_flatbuffers

# On the biased fixture, nearest rounding leaves a systematic output error that learned rounding must cut by
# at least this factor (measured: see the test).
MIN_GAIN = 4.0


def _weights(flatbuffer):
    """Output tensor name -> (int8 weights, scales) of each conv/dense."""
    model = fb.parse(flatbuffer)
    subgraph = model.subgraphs[0]
    out = {}
    for op in subgraph.operators:
        if fb.op_name(model, op) in ("CONV_2D", "FULLY_CONNECTED"):
            t = subgraph.tensors[op.inputs[1]]
            data = np.frombuffer(np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes(), np.int8)
            out[fb.text(subgraph.tensors[op.outputs[0]].name)] = (data.reshape(tuple(t.shape)).copy(),
                                                                  np.asarray(t.quantization.scale))
    return out


def test_learned_rounding_is_floor_or_ceil_and_cuts_the_biased_error():
    model, images, codes = biased_conv()
    calibrated, quantized = int8_flatbuffers(model, images)
    learned, rounded, skipped = adaround.adaround(quantized, calibrated, images)
    assert not skipped and len(rounded) == 2
    before, after = _weights(quantized), _weights(learned)
    conv = next(name for name in before if before[name][0].ndim == 4)
    q_before, scales = before[conv]
    q_after, scales_after = after[conv]
    np.testing.assert_array_equal(scales, scales_after)
    # The scales are the pinned 0.01 per channel, so the float codes are `codes` (TFLite layout [O, 1, 1, I]).
    np.testing.assert_allclose(scales, 0.01, rtol=1e-6)
    want = codes.transpose(3, 0, 1, 2)
    np.testing.assert_array_equal(q_before, np.round(want))
    assert np.all((q_after == np.floor(want)) | (q_after == np.ceil(want)))
    assert np.mean(q_after != q_before) > 0.05

    # The conv's output error against numpy's float conv + ReLU, in LiteRT, before and after.
    w, b = model.get_layer("conv").get_weights()
    reference = np.maximum(np.einsum("nhwi,io->nhwo", images, w[0, 0]) + b, 0.0)
    errors = []
    for flatbuffer in (quantized, learned):
        got = tensor_values(flatbuffer, [conv], images)[conv]
        errors.append(float(np.mean((got - reference) ** 2)))
    assert errors[1] * MIN_GAIN < errors[0], errors
    record = next(r for r in rounded if r.tensor == conv)
    assert record.kept and record.error_learned * MIN_GAIN < record.error_nearest


def test_only_weight_buffers_change_and_same_images_give_same_bytes():
    model, images, _ = biased_conv(seed=1)
    calibrated, quantized = int8_flatbuffers(model, images)
    first = adaround.adaround(quantized, calibrated, images)[0]
    assert first == adaround.adaround(quantized, calibrated, images)[0]
    a, b = fb.parse(quantized), fb.parse(first)
    weight_buffers = set()
    for op in a.subgraphs[0].operators:
        if fb.op_name(a, op) in ("CONV_2D", "FULLY_CONNECTED"):
            weight_buffers.add(a.subgraphs[0].tensors[op.inputs[1]].buffer)
    for ta, tb in zip(a.subgraphs[0].tensors, b.subgraphs[0].tensors):
        qa, qb = ta.quantization, tb.quantization
        if qa is not None and qa.scale is not None:
            np.testing.assert_array_equal(qa.scale, qb.scale)
            np.testing.assert_array_equal(qa.zeroPoint, qb.zeroPoint)
    changed = [i for i, (x, y) in enumerate(zip(a.buffers, b.buffers))
               if not np.array_equal(np.asarray(x.data if x.data is not None else []),
                                     np.asarray(y.data if y.data is not None else []))]
    assert changed and set(changed) <= weight_buffers


def test_too_few_images_is_an_error():
    model, images, _ = biased_conv()
    calibrated, quantized = int8_flatbuffers(model, images)
    with pytest.raises(TfcError, match=f"at least {adaround.MIN_IMAGES} calibration images"):
        adaround.adaround(quantized, calibrated, images[:adaround.MIN_IMAGES - 1])


def test_a_float_layer_is_a_listed_skip():
    model, images, _ = biased_conv()
    calibrated, _ = int8_flatbuffers(model, images)
    conv = next(name for name, (w, _) in _weights(tflite.quantize_calibrated(calibrated, "int8")).items()
                if w.ndim == 4)
    kept_float = tflite.quantize_calibrated(calibrated, "int8", float_layers=[conv])
    _, rounded, skipped = adaround.adaround(kept_float, calibrated, images)
    assert [s.tensor for s in skipped] == [conv] and skipped[0].reason == "weights are not int8"
    assert len(rounded) == 1


def test_convert_rounding_errors(tmp_path):
    from tfcompress.api.graph_jobs import convert
    out = str(tmp_path / "m.tflite")
    with pytest.raises(TfcError, match="unknown --rounding"):
        convert(KERAS_MODEL, out, images=CALIBRATION, rounding="stochastic")
    with pytest.raises(TfcError, match="needs --quantize=int8 or uint8 and --calibration_images"):
        convert(KERAS_MODEL, out, quantize="float16", rounding="adaround")
    assert not os.path.exists(out)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
