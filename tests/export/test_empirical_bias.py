"""Empirical bias correction of int8 flatbuffers, checked against the float .tflite's own tensors."""

import sys

import numpy as np
import pytest

from tfcompress.errors import TfcError
from tfcompress.evaluate.zoo import ZOO, minmax_ranges
from tfcompress.export import empirical_bias
from tfcompress.export import flatbuffer as fb
from tfcompress.export import tflite
from tfcompress.export.litert import tensor_values

IMAGES = 40
# Summed over the corrected layers, the mean |per-channel mean error| must at least halve on the images the
# correction measured (what is left: channels below the significance bar, int32 rounding, ReLU bounds).
MIN_REDUCTION = 2.0
# No layer may end up with a larger systematic error than before, beyond this fraction of its float RMS.
LAYER_SLACK = 1e-3


def _channel_mean_error(got, want, activation):
    lo, hi = empirical_bias._ACTIVE[activation]  # pylint: disable=protected-access
    channels = want.shape[-1]
    f, q = want.reshape(-1, channels), got.reshape(-1, channels)
    active = (f > lo) & (f < hi)
    means = ((q - f) * active).sum(0) / np.maximum(active.sum(0), 1)
    return float(np.mean(np.abs(means)))


def _layers(flatbuffer):
    model = fb.parse(flatbuffer)
    out = {}
    for op in model.subgraphs[0].operators:
        if fb.op_name(model, op) in empirical_bias.LINEAR:
            out[fb.text(model.subgraphs[0].tensors[op.outputs[0]].name)] = empirical_bias._activation(model, op)  # pylint: disable=protected-access
    return out


def _quantized(name):
    model, prep, source, ranges = minmax_ranges(name, IMAGES)
    calibrated, _ = tflite.calibrated_flatbuffer(model, ranges)
    return calibrated, tflite.quantize_calibrated(calibrated, "int8"), source.array(prep)


@pytest.mark.parametrize("name", ["mobilenetv2_patches", "se_patches"])
def test_correction_changes_only_biases_and_removes_the_mean_error(name):
    calibrated, quantized, images = _quantized(name)
    corrected, done = empirical_bias.correct(quantized, calibrated, images)
    assert len(done) >= 10

    # Structure: the same operators and tensors; only int32 bias buffers differ.
    before, after = fb.parse(quantized), fb.parse(corrected)
    assert [fb.op_name(before, o) for o in before.subgraphs[0].operators] == \
           [fb.op_name(after, o) for o in after.subgraphs[0].operators]
    changed_types = set()
    for tb, ta in zip(fb.tensors(before), fb.tensors(after)):
        assert (tb.name, tb.dtype, tb.shape, tb.scales, tb.zero_points) == \
               (ta.name, ta.dtype, ta.shape, ta.scales, ta.zero_points)
        raw_b = before.buffers[before.subgraphs[0].tensors[tb.index].buffer].data
        raw_a = after.buffers[after.subgraphs[0].tensors[ta.index].buffer].data
        if raw_b is not None and not np.array_equal(raw_b, raw_a):
            changed_types.add(tb.dtype)
    assert changed_types == {np.dtype(np.int32)}

    # Values: the float .tflite's own tensors are the reference.
    layers = {k: v for k, v in _layers(quantized).items() if k in {d.tensor for d in done}}
    want = tensor_values(calibrated, list(layers), images)
    old, new = tensor_values(quantized, list(layers), images), tensor_values(corrected, list(layers), images)
    total_old = total_new = 0.0
    for tensor, activation in layers.items():
        e_old = _channel_mean_error(old[tensor], want[tensor], activation)
        e_new = _channel_mean_error(new[tensor], want[tensor], activation)
        rms = float(np.sqrt(np.mean(want[tensor] ** 2)))
        assert e_new <= e_old + LAYER_SLACK * rms, (tensor, e_old, e_new)
        total_old, total_new = total_old + e_old, total_new + e_new
    assert total_new * MIN_REDUCTION <= total_old, (total_old, total_new)


def test_same_images_same_bytes():
    calibrated, quantized, images = _quantized("resnet_patches")
    first, _ = empirical_bias.correct(quantized, calibrated, images)
    second, _ = empirical_bias.correct(quantized, calibrated, images.copy())
    assert first == second


def test_convert_rejects_an_unknown_bias_correction(tmp_path):
    from tfcompress.api.graph_jobs import convert
    with pytest.raises(TfcError, match="unknown --bias_correction"):
        convert(ZOO["vgg_patches"].path, str(tmp_path / "x.tflite"), images=ZOO["vgg_patches"].calibration,
                bias_correction="yes")
    assert not (tmp_path / "x.tflite").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_dense_layer_that_is_the_model_output_is_corrected():
    """The quantizer renames an output it moves to the boundary ("Identity" -> "Identity1"); the layer is still
    paired with its float op and corrected (it was skipped when layers were paired by name)."""
    from tests.export.fixtures import biased_conv, int8_flatbuffers
    model, images, _ = biased_conv()
    calibrated, quantized = int8_flatbuffers(model, images)
    output = fb.text(fb.parse(quantized).subgraphs[0].tensors[fb.parse(quantized).subgraphs[0].outputs[0]].name)
    corrected, done = empirical_bias.correct(quantized, calibrated, images)
    assert output in {d.tensor for d in done}
    want = model.predict(images, verbose=0)
    errors = [float(np.mean(np.abs(np.mean(tensor_values(f, [output], images)[output] - want, axis=0))))
              for f in (quantized, corrected)]
    assert errors[1] * MIN_REDUCTION <= errors[0], errors
