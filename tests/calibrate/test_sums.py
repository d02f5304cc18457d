"""A residual Add's branch operand takes the sum's range too (tfcompress/calibrate/sums.py), checked on the
int8 flatbuffers of the zoo models that have residual Adds."""

import sys

import numpy as np
import pytest

from tfcompress.calibrate import sums
from tfcompress.evaluate.zoo import ZOO, minmax_ranges
from tfcompress.export import flatbuffer as fb
from tfcompress.export import tflite
from tfcompress.io.keras_models import load_keras

IMAGES = 20
# Intervals are compared to within one int8 step of the wider one (the quantizer nudges zero onto the grid).
STEPS = 1.0
RESIDUAL = ("xception_digits", "mobilenetv2_patches", "resnet_patches", "se_patches")


def _interval(info):
    s, z = info.scales[0], info.zero_points[0]
    return (-128 - z) * s, (127 - z) * s, s


# TFLite ops whose int8 output has their input's scale.
SAME_SCALE = ("MAX_POOL_2D", "RESHAPE")


def _branch_inputs(flatbuffer):
    """[(input interval, sum interval)] for each int8 ADD input that no other op reads and an op other than
    a same-scale one writes."""
    model = fb.parse(flatbuffer)
    infos, ops = fb.tensors(model), fb.operators(model)
    readers, written = {}, set()
    for op in ops:
        if op.name not in SAME_SCALE:
            written.update(op.outputs)
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    pairs = []
    for op in ops:
        if op.name != "ADD":
            continue
        out = infos[op.outputs[0]]
        for t in op.inputs:
            if readers[t] == 1 and t in written and infos[t].dtype == np.int8 and out.dtype == np.int8:
                pairs.append((_interval(infos[t]), _interval(out)))
    return pairs


def _covers(inner, outer):
    """True if interval `inner` reaches at least as far as `outer` both ways, to within STEPS steps."""
    slack = STEPS * max(inner[2], outer[2])
    return inner[0] <= outer[0] + slack and inner[1] >= outer[1] - slack


@pytest.mark.parametrize("name", RESIDUAL)
def test_branch_operands_are_quantized_over_their_sums_range(name):
    model, _, _, ranges = minmax_ranges(name, IMAGES)
    widened, grown = sums.widen(model, ranges)

    # The graph's sums are the Keras model's Add layers (not PReLU's internal add), and the flatbuffer has
    # as many single-reader ADD inputs (not a max pool's) as the graph has such Add operands.
    keras_adds = [layer for layer in load_keras(ZOO[name].path).layers if type(layer).__name__ == "Add"]
    pairs = sums.branch_operands(model, ranges)
    assert len({total for _, total in pairs}) == len(keras_adds) > 0
    before = _branch_inputs(tflite.quantize_calibrated(tflite.calibrated_flatbuffer(model, ranges)[0], "int8"))
    after = _branch_inputs(tflite.quantize_calibrated(tflite.calibrated_flatbuffer(model, widened)[0], "int8"))
    assert len(before) == len(after) == len(pairs)

    # Widened, every branch reaches the sum's interval; as calibrated, at least one did not (else the
    # check above would hold for any ranges).
    assert all(_covers(branch, total) for branch, total in after), after
    assert grown and not all(_covers(branch, total) for branch, total in before)
    # Only branch operands changed, and each only grew.
    changed = {k for k in ranges if widened[k] != ranges[k]}
    assert changed == set(grown) <= {operand for operand, _ in pairs}
    assert all(widened[k][0] <= ranges[k][0] and widened[k][1] >= ranges[k][1] for k in changed)


def test_convert_applies_it_from_a_cache_alone_and_refuses_an_unknown_choice(tmp_path):
    import tfcompress as tfc
    from tfcompress.errors import TfcError
    entry = ZOO["mobilenetv2_patches"]
    options = tfc.CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
    cache = str(tmp_path / "ranges.json")
    tfc.calibrate(entry.path, entry.calibration, cache=cache, options=options)
    # No image is needed: the ranges come from the cache, the sums from the graph.
    model, _, _, _ = minmax_ranges("mobilenetv2_patches", 1)
    ranges = tfc.calibrate(entry.path, cache=cache, options=options).cache.ranges()
    grown = sums.widen(model, ranges)[1]
    result = tfc.convert(entry.path, str(tmp_path / "a.tflite"), cache=cache, options=options,
                         bias_correction="none")
    assert f"; {len(grown)} residual branch range(s) given their sum's" in result.calibration and grown
    same = tfc.convert(entry.path, str(tmp_path / "b.tflite"), cache=cache, options=options, bias_correction="none",
                       residual_ranges="calibrated")
    assert "residual branch" not in same.calibration and same.flatbuffer != result.flatbuffer
    with pytest.raises(TfcError, match="unknown --residual_ranges"):
        tfc.convert(entry.path, str(tmp_path / "c.tflite"), cache=cache, options=options, residual_ranges="wide")
    assert not (tmp_path / "c.tflite").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
