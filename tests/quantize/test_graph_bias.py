"""Empirical bias correction of the eightbit graph, checked against the float graph's own tensors."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import CALIBRATION, KERAS_MODEL
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.calibrate.run import calibrate
from tfcompress.data.images import Preprocessing, list_images, load_image
from tfcompress.errors import TfcError
from tfcompress.graph.runner import run_graph
from tfcompress.quantize import empirical_bias
from tfcompress.quantize.config import QuantConfig
from tfcompress.quantize.convert import quantize_model

# Summed over the corrected layers, the mean |per-channel mean error| must at least halve on the images the
# correction measured (what is left: channels below the significance bar, later layers' input errors).
MIN_REDUCTION = 2.0


@pytest.fixture(scope="module")
def graphs(float_model):
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    ranges = calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), images=CALIBRATION,
                       progress=False).cache.ranges()
    quantized, _ = quantize_model(float_model, QuantConfig(), ranges)
    images = np.stack([load_image(p, prep) for p in list_images(CALIBRATION)[:64]])
    return quantized, images


def _mean_errors(model, float_model, nodes, images):
    """Per node, the mean over channels of |mean error|, over the values that reach the next layer: where a
    Relu alone reads the node, those whose float value is > 0 (the ReLU passes nothing else)."""
    fetch = [n + ":0" for n in nodes]
    got = run_graph(model.graph_def, {model.image_input().tensor: images}, fetch)
    want = run_graph(float_model.graph_def, {float_model.image_input().tensor: images}, fetch)
    errors = {}
    for n, g, w in zip(nodes, got, want):
        readers = [r.op for r in float_model.graph_def.node if n in [i.split(":")[0] for i in r.input]]
        g, w = g.reshape(-1, g.shape[-1]).astype(np.float64), w.reshape(-1, w.shape[-1]).astype(np.float64)
        inside = w > 0 if readers == ["Relu"] else np.ones_like(w, bool)
        means = ((g - w) * inside).sum(0) / np.maximum(inside.sum(0), 1)
        errors[n] = float(np.mean(np.abs(means)))
    return errors


def test_only_biases_change_and_the_mean_error_goes(float_model, graphs):
    quantized, images = graphs
    pairs = empirical_bias.correctable(quantized, float_model)
    assert len(pairs) == 10  # The shipped model's 8 convs and 2 dense layers.
    corrected, done = empirical_bias.correct(quantized, float_model, images)
    assert len(done) >= 8
    before = {n.name: n.SerializeToString(deterministic=True) for n in quantized.graph_def.node}
    changed = {n.name for n in corrected.graph_def.node if n.SerializeToString(deterministic=True) != before[n.name]}
    assert changed and changed <= {bias for _, bias in pairs}
    assert [n.name for n in corrected.graph_def.node] == [n.name for n in quantized.graph_def.node]
    old = _mean_errors(quantized, float_model, done, images)
    new = _mean_errors(corrected, float_model, done, images)
    assert sum(new.values()) * MIN_REDUCTION <= sum(old.values()), (old, new)


def test_same_images_same_bytes(float_model, graphs):
    quantized, images = graphs
    first = empirical_bias.correct(quantized, float_model, images)[0].graph_def.SerializeToString(deterministic=True)
    second = empirical_bias.correct(quantized, float_model, images.copy())[0].graph_def
    assert first == second.SerializeToString(deterministic=True)


def test_other_chains_have_nothing_to_correct(float_model):
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    ranges = calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), images=CALIBRATION,
                       progress=False).cache.ranges()
    tf1, _ = quantize_model(float_model, QuantConfig(kernels="tf1"), ranges)
    assert empirical_bias.correctable(tf1, float_model) == []


def test_quantize_graph_bias_correction_option(tmp_path):
    from tfcompress.api.graph_jobs import quantize_graph
    with pytest.raises(TfcError, match="unknown --bias_correction 'analytic'"):
        quantize_graph(KERAS_MODEL, str(tmp_path / "q"), images=CALIBRATION, bias_correction="analytic")
    result = quantize_graph(KERAS_MODEL, str(tmp_path / "q"), images=CALIBRATION)
    assert "empirical bias correction on" in result.calibration
    consts = [n for n in result.quantized.graph_def.node if n.op == "Const"]
    assert all(np.all(np.isfinite(tf.make_ndarray(n.attr["value"].tensor))) for n in consts
               if n.attr["value"].tensor.dtype == tf.float32.as_datatype_enum)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
