"""The range path on the whole zoo, with the stock converter as the oracle.

With --calibrator=minmax our int8 flatbuffer must carry the converter's own
scales and zero points for the same images.  The one place they may differ
is where the converter's statistic is not the tensor's min/max: its
calibrator logs an operator's inputs after the operator ran, and an
operator that writes its output into an input's buffer (ADD, MUL, ...)
leaves the output's values there (tensorflow/tensorflow#127842).  The true
min/max of every tensor is measured independently here, by running the
float .tflite with every tensor exposed, and:
  - our statistic equals the true min/max on every tensor;
  - wherever the converter's statistic also equals it, the quantized scale
    and zero point are the converter's;
  - every tensor where the converter's statistic is not the true min/max is
    an input of an in-place elementwise operator (the bug above, nothing else).
"""

import sys

import numpy as np
import pytest
import tensorflow as tf

from tfcompress.evaluate.zoo import ZOO, minmax_ranges
from tfcompress.export import flatbuffer as fb
from tfcompress.export import tflite
from tfcompress.export.litert import tensor_values

IMAGES = 40
# A statistic equals a min/max to float rounding: TF and TFLite kernels sum in different orders.
RANGE_RTOL = 1e-4
# Scales are computed from equal ranges by the same quantizer: equal to float32 rounding.
SCALE_RTOL = 1e-5
# Operators TFLite may run in place (output written into input 0's buffer).
IN_PLACE = {"ADD", "MUL", "SUB", "DIV"}


def _statistics(flatbuffer: bytes):
    out = {}
    for tensor in fb.parse(flatbuffer).subgraphs[0].tensors:
        q = tensor.quantization
        if q is not None and q.min is not None and len(q.min):
            out[fb.text(tensor.name)] = (float(q.min[0]), float(q.max[0]))
    return out


def _close(a, b):
    span = max(abs(b[0]), abs(b[1]), 1e-6)
    return abs(a[0] - b[0]) <= RANGE_RTOL * span and abs(a[1] - b[1]) <= RANGE_RTOL * span


def _params(flatbuffer: bytes):
    return {t.name: (t.scales, t.zero_points) for t in fb.tensors(fb.parse(flatbuffer))
            if len(t.scales) == 1 and t.dtype == np.int8}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_minmax_ranges_are_the_true_ranges_and_the_converters(name):
    model, prep, source, ranges = minmax_ranges(name, IMAGES)
    images = source.array(prep)

    ours_calibrated, applied = tflite.calibrated_flatbuffer(model, ranges)
    converter = tflite._converter(model)  # pylint: disable=protected-access
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in images)
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    stock_calibrated = converter.convert()

    ours, stock = _statistics(ours_calibrated), _statistics(stock_calibrated)
    assert set(ours) == set(stock) and len(applied) == len(ours)
    values = tensor_values(stock_calibrated, list(stock), images)
    true = {k: (min(float(v.min()), 0.0), max(float(v.max()), 0.0)) for k, v in values.items()}
    assert set(true) == set(stock)
    wrong_ours = [k for k in ours if not _close(ours[k], true[k])]
    assert not wrong_ours, [(k, ours[k], true[k]) for k in wrong_ours]

    # The converter's statistics are not nudged to include 0; compare them as the quantizer will use them.
    stock_nudged = {k: (min(lo, 0.0), max(hi, 0.0)) for k, (lo, hi) in stock.items()}
    polluted = {k for k in stock if not _close(stock_nudged[k], true[k])}
    parsed = fb.parse(stock_calibrated)
    in_place_inputs = {fb.text(parsed.subgraphs[0].tensors[t].name) for op in fb.operators(parsed)
                       if op.name in IN_PLACE for t in op.inputs if t >= 0}
    assert polluted <= in_place_inputs, sorted(polluted - in_place_inputs)

    ours_q = _params(tflite.quantize_calibrated(ours_calibrated, "int8"))
    stock_q = _params(tflite.convert_tflite_default(model, lambda: ([x[None]] for x in images)))
    compared = 0
    for tensor in set(ours_q) & set(stock_q):
        if tensor in polluted or tensor not in stock:
            continue
        (s1, z1), (s2, z2) = ours_q[tensor], stock_q[tensor]
        assert np.isclose(s1[0], s2[0], rtol=SCALE_RTOL) and z1 == z2, (tensor, ours_q[tensor], stock_q[tensor])
        compared += 1
    assert compared >= len(stock) // 2, (compared, len(stock))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
