"""Tensor calibration data (--calibration_data): every form gives the same cache, the cache pins the data,
and both sample layouts feed the same values."""

import sys

import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress.api.models import LoadOptions
from tfcompress.errors import TfcError


def two_input_graph(batch=None):
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, (batch, 3), name="a")
        b = tf.compat.v1.placeholder(tf.int32, (batch, 3), name="b")
        tf.nn.relu(tf.matmul(a * tf.cast(b, tf.float32), tf.constant(np.eye(3, 4, dtype=np.float32))), name="y")
    return graph.as_graph_def()


def data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(n, 3)).astype(np.float32), "b": rng.integers(0, 3, size=(n, 3)).astype(np.int32)}


def cache_text(tmp_path, name, calibration_data, graph=None):
    path = tmp_path / f"{name}.json"
    result = tfc.calibrate(graph or two_input_graph(), data=calibration_data, cache=str(path),
                           options=tfc.CalibrationOptions(batch_size=4))
    assert not result.reused and result.images_read == 10
    return path.read_text()


def test_npz_dict_and_dataset_give_the_same_cache(tmp_path):
    arrays = data()
    np.savez(tmp_path / "d.npz", **arrays)
    from_npz = cache_text(tmp_path, "npz", str(tmp_path / "d.npz"))
    from_dict = cache_text(tmp_path, "dict", arrays)
    from_dataset = cache_text(tmp_path, "dataset", tf.data.Dataset.from_tensor_slices(arrays).batch(3))
    assert from_npz == from_dict == from_dataset
    # The statistics are the data's own: the relu output's max against numpy.
    import json
    doc = json.loads(from_npz)
    want = np.maximum((arrays["a"] * arrays["b"]) @ np.eye(3, 4), 0).max()
    assert doc["tensors"]["y:0"]["max"] == pytest.approx(want, rel=1e-6)
    assert "calibration_data" in doc["fingerprint"]["preprocessing"]


def test_per_sample_and_batched_layouts_agree(tmp_path):
    arrays = data()
    batched = cache_text(tmp_path, "batched", arrays)
    per_sample = cache_text(tmp_path, "per_sample", {k: v[:, None] for k, v in arrays.items()},
                            graph=two_input_graph(batch=1))
    import json
    a, b = json.loads(batched)["tensors"], json.loads(per_sample)["tensors"]
    assert set(a) == set(b)
    for name in a:
        assert (a[name]["min"], a[name]["max"], a[name]["count"]) == (b[name]["min"], b[name]["max"], b[name]["count"])


def test_the_cache_pins_the_data(tmp_path):
    cache = str(tmp_path / "c.json")
    first = tfc.calibrate(two_input_graph(), data=data(), cache=cache)
    assert not first.reused
    assert tfc.calibrate(two_input_graph(), data=data(), cache=cache).reused
    assert tfc.calibrate(two_input_graph(), cache=cache).reused  # No data at hand: the cache stands for it.
    with pytest.raises(TfcError, match="made from other calibration data"):
        tfc.calibrate(two_input_graph(), data=data(seed=1), cache=cache)
    assert tfc.calibrate(two_input_graph(), data=data(seed=1), cache=cache, recalibrate=True).images_read == 10


def test_quantize_graph_measures_on_the_data(tmp_path):
    result = tfc.quantize_graph(two_input_graph(), str(tmp_path / "q.pb"), data=data(), output_format="frozen_pb",
                                load=LoadOptions(output_names=["y"]))
    assert result.agreement.images == 10
    assert result.agreement.heads[0].max_abs_error < 0.05  # One 8-bit step of ranges within about [-4, 4].


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
