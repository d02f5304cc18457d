"""quantize_graph on a two-headed zoo model: agreement per output, and coverage per op kind."""

import sys

import numpy as np
import pytest

from tfcompress.data.images import Preprocessing
from tfcompress.data.source import FolderSource
from tfcompress.errors import TfcError
from tfcompress.evaluate import measure
from tfcompress.evaluate.zoo import ZOO
from tfcompress.graph.runner import GraphRunner

ENTRY = ZOO["boxes_digits"]
# The eightbit class head agrees with float on at least this share of held-out images (float: 94.67% accurate).
MIN_TOP1 = 0.9
# The library runs the graphs in batches and this test in one: TF's float kernels round differently by
# batch size (3e-6 relative measured on the MSE with TF_ENABLE_ONEDNN_OPTS=0), so sums agree to this.
BATCHING_RTOL = 1e-4


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    import tfcompress as tfc
    out = tmp_path_factory.mktemp("heads") / "q8"
    return tfc.quantize_graph(ENTRY.path, str(out), images=ENTRY.calibration, eval_images=ENTRY.heldout,
                              options=tfc.CalibrationOptions(input_mean=ENTRY.mean, input_std=ENTRY.std))


def _outputs(model, images):
    with GraphRunner(model.graph_def, [model.image_input().tensor], [o.tensor for o in model.outputs]) as runner:
        return [np.asarray(v, np.float64).reshape(len(images), -1) for v in runner.run(images)]


def test_every_output_is_reported_and_only_the_softmax_is_a_class_vector(quantized):
    agreement = quantized.agreement
    keys = [o.key for o in quantized.float_model.outputs]
    assert [h.key for h in agreement.heads] == keys
    by_kind = dict(zip(ENTRY.heads, agreement.heads))  # The zoo lists heads in output order.
    assert by_kind["class"].is_class and not by_kind["box"].is_class
    assert by_kind["box"].top1 is None and agreement.top1 == by_kind["class"].top1

    # Independent numbers: both graphs run here, compared with numpy.
    prep = Preprocessing.for_input(tuple(quantized.float_model.inputs[0].shape), mean=ENTRY.mean, std=ENTRY.std)
    images = FolderSource(ENTRY.heldout).array(prep)
    ref, got = _outputs(quantized.float_model, images), _outputs(quantized.quantized, images)
    for head, r, g in zip(agreement.heads, ref, got):
        assert head.mse == pytest.approx(float(np.mean((g - r) ** 2)), rel=BATCHING_RTOL)
        assert head.mean_abs_error == pytest.approx(float(np.mean(np.abs(g - r))), rel=BATCHING_RTOL)
    assert by_kind["class"].top1 == pytest.approx(float(np.mean(ref[0].argmax(1) == got[0].argmax(1))))
    assert by_kind["class"].top1 >= MIN_TOP1


def test_output_index_chooses_the_class_outputs(quantized):
    prep = Preprocessing.for_input(tuple(quantized.float_model.inputs[0].shape), mean=ENTRY.mean, std=ENTRY.std)
    images = FolderSource.from_paths(FolderSource(ENTRY.heldout).paths[:20])
    keys = [o.key for o in quantized.float_model.outputs]
    chosen = measure.agreement(quantized.float_model, quantized.quantized, images, prep, classes=[keys[1]])
    assert [h.is_class for h in chosen.heads] == [False, True]
    with pytest.raises(TfcError, match="out of range"):
        measure.agreement(quantized.float_model, quantized.quantized, images, prep, classes=["5"])
    with pytest.raises(TfcError, match="names no output"):
        measure.agreement(quantized.float_model, quantized.quantized, images, prep, classes=["logits"])


def test_coverage_counts_each_linear_kind():
    before = {"Conv2D": 4, "DepthwiseConv2dNative": 3, "MatMul": 2, "Relu": 5}
    after = {"QuantizedConv2DWithBiasAndReluAndRequantize": 3, "QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize": 1,
             "DepthwiseConv2dNative": 2, "QuantizedMatMulWithBiasAndDequantize": 2, "Conv2D": 1}
    assert measure.linear_coverage(before, after) == {"Conv2D": (3, 4), "DepthwiseConv2dNative": (1, 3),
                                                      "MatMul": (2, 2)}
    assert measure.linear_quantized_share(before, after) == pytest.approx(6 / 9)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
