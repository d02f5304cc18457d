"""Histogram statistics vs numpy, calibrators, image reading and the cache."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CALIBRATION
from tfcompress.calibrate import cache as cache_lib
from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
from tfcompress.data.images import Preprocessing, list_images, load_image
from tfcompress.calibrate.run import calibrate
from tfcompress.calibrate.stats import MAX_BINS, TensorStats
from tfcompress.errors import TfcError

# A histogram quantile is exact up to one bin.
def _bin_tol(stats):
    return stats.bin_width


def test_stats_match_numpy_and_do_not_depend_on_batching():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.standard_normal(50_000), rng.standard_normal(100) * 30]).astype(np.float32)
    whole, streamed = TensorStats(), TensorStats()
    whole.update(data)
    for chunk in np.array_split(rng.permutation(data), 37):
        streamed.update(chunk)
    assert whole.min == float(data.min()) and whole.max == float(data.max()) and whole.count == data.size
    assert whole.counts.sum() == data.size and whole.counts.size <= MAX_BINS
    for q in (0.001, 0.5, 0.99, 0.9999):
        assert abs(whole.quantile(q) - np.quantile(data, q)) <= _bin_tol(whole), q
        assert abs(streamed.quantile(q) - np.quantile(data, q)) <= _bin_tol(streamed), q


def test_channel_means_match_numpy_and_survive_the_cache_format():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((40, 5, 5, 6)) + np.arange(6)
    streamed = TensorStats()
    for chunk in np.array_split(data, 7):
        streamed.update(chunk)
    np.testing.assert_allclose(streamed.channel_mean(), data.mean(axis=(0, 1, 2)), rtol=1e-12)
    again = TensorStats.from_json(json.loads(json.dumps(streamed.to_json())))
    np.testing.assert_array_equal(again.channel_mean(), streamed.channel_mean())
    with pytest.raises(TfcError, match="changed its channel count"):
        streamed.update(np.zeros((2, 5)))


def test_percentile_clips_outliers_and_keeps_zero():
    data = np.concatenate([np.linspace(0.5, 1.0, 10_000), [100.0]])
    s = TensorStats()
    s.update(data)
    lo, hi = compute_ranges({"t": s}, CalibratorConfig(method="percentile", percentile=99.9))["t"]
    assert lo == 0.0  # Widened to contain zero.
    assert hi == pytest.approx(np.quantile(data, 0.999), abs=s.bin_width)
    assert compute_ranges({"t": s}, CalibratorConfig())["t"] == (0.0, 100.0)


def _fake_quant_mse(x, lo, hi):
    """Mean squared error of 8-bit asymmetric quantize-dequantize over [lo, hi], in numpy."""
    scale = (hi - lo) / 255.0
    zero = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return float(np.mean((x - (q - zero) * scale) ** 2))


# The mse calibrator works on bin centres and a candidate grid: allow 3% above the brute-force optimum.
MSE_OPTIMUM_SLACK = 1.03


@pytest.mark.parametrize("signed", [False, True])
def test_mse_calibrator_finds_the_numpy_optimum(signed):
    rng = np.random.default_rng(3)
    data = rng.laplace(size=100_000)
    data[:30] *= 25  # Rare outliers.
    if not signed:
        data = np.maximum(data, 0)
    s = TensorStats()
    s.update(data)
    lo, hi = compute_ranges({"t": s}, CalibratorConfig(method="mse"))["t"]
    thresholds = np.linspace(0.2, np.abs(data).max(), 600)
    brute = min(_fake_quant_mse(data, max(data.min(), -t), min(data.max(), t)) for t in thresholds)
    assert _fake_quant_mse(data, lo, hi) <= brute * MSE_OPTIMUM_SLACK
    assert _fake_quant_mse(data, lo, hi) < _fake_quant_mse(data, *compute_ranges({"t": s}, CalibratorConfig())["t"])


def test_kl_calibrator_clips_a_heavy_tail_but_not_a_compact_distribution():
    rng = np.random.default_rng(4)
    compact = rng.uniform(0, 1, 100_000)
    tailed = np.concatenate([np.abs(rng.standard_normal(100_000)), [60.0, 80.0]])
    kl_range = lambda d: compute_ranges({"t": _stats(d)}, CalibratorConfig(method="kl"))["t"]  # noqa: E731
    lo, hi = kl_range(compact)
    assert lo == 0.0 and hi >= 0.95  # Nothing to gain by clipping a uniform distribution.
    lo, hi = kl_range(tailed)
    # The threshold lands in the tail of the bulk: beyond 3 sigma, far below the outliers.
    assert lo == 0.0 and 3.0 < hi < 20.0


def _stats(data):
    s = TensorStats()
    s.update(data)
    return s


@pytest.mark.parametrize("pair, message", [((float("nan"), 1.0), "NaN or Inf"), ((0.0, float("inf")), "NaN or Inf"),
                                           ((2.0, 1.0), "min 2 > max 1")])
def test_tensor_ranges_refuse_bad_ranges_when_made(pair, message):
    from tfcompress.calibrate.calibrators import TensorRanges
    with pytest.raises(TfcError, match=message):
        TensorRanges({"good:0": (-1.0, 1.0), "bad:0": pair})
    ranges = TensorRanges({"a:0": (np.float32(-1.5), 2)})
    assert dict(ranges) == {"a:0": (-1.5, 2.0)} and "a:0" in ranges and len(ranges) == 1
    with pytest.raises(TypeError):
        ranges["a:0"] = (0.0, 1.0)  # Read-only once made.


def test_bad_calibrator_settings():
    with pytest.raises(TfcError, match="unknown calibrator"):
        CalibratorConfig(method="nope")
    with pytest.raises(TfcError, match="percentile"):
        CalibratorConfig(method="percentile", percentile=101)


def test_images_are_found_recursively_and_normalized():
    paths = list_images(CALIBRATION)
    assert len(paths) == 100
    assert {os.path.splitext(p)[1] for p in paths} == {".png", ".jpg", ".bmp", ".gif"}
    prep = Preprocessing(height=16, width=16, channels=3, mean=127.5, std=127.5)
    img = load_image(paths[0], prep)
    assert img.shape == (16, 16, 3) and img.dtype == np.float32
    assert img.min() >= -1.0 and img.max() <= 1.0
    # Gray replicated to RGB.
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    raw = np.asarray(Image.open(paths[0]).convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32)
    np.testing.assert_allclose(img[..., 0], (raw - 127.5) / 127.5, atol=1e-6)


def test_image_errors(tmp_path):
    prep = Preprocessing(height=8, width=8, channels=1)
    with pytest.raises(TfcError, match="does not exist"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TfcError, match="has no images"):
        list_images(str(tmp_path))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(TfcError, match="cannot read image"):
        load_image(str(bad), prep)
    color = tmp_path / "color.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(color)
    with pytest.raises(TfcError, match="color"):
        load_image(str(color), prep)
    with pytest.raises(TfcError, match="channels"):
        Preprocessing(height=8, width=8, channels=2)


def test_cache_roundtrip_reuse_and_staleness(float_model, tmp_path):
    path = str(tmp_path / "ranges.json")
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    first = calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), images=CALIBRATION,
                      cache_path=path, progress=False)
    assert not first.reused and first.images_read == 100
    doc = json.load(open(path))
    assert doc["format"] == "tfcompress.calibration" and doc["version"] == 2
    assert doc["fingerprint"]["model"] == float_model.fingerprint()
    # Reuse: no images needed at all (the folder is not even given).
    second = calibrate(float_model, prep=prep, calibrator=CalibratorConfig(method="percentile", percentile=99.0),
                       images=None, cache_path=path, progress=False)
    assert second.reused and second.images_read == 0
    assert second.cache.ranges(CalibratorConfig()) == first.cache.ranges()
    # Another percentile is re-derived from histograms: ranges shrink or stay.
    p = second.cache.ranges()
    m = first.cache.ranges()
    assert all(p[t][1] <= m[t][1] for t in m) and any(p[t][1] < m[t][1] for t in m)
    # Stale: different preprocessing.
    other = Preprocessing.for_input(float_model.image_input().shape, mean=127.5, std=127.5)
    with pytest.raises(TfcError, match="stale.*preprocessing differs \\(mean, std\\)"):
        calibrate(float_model, prep=other, calibrator=CalibratorConfig(), images=CALIBRATION, cache_path=path)
    # ... unless recalibrating, which rewrites the cache.
    third = calibrate(float_model, prep=other, calibrator=CalibratorConfig(), images=CALIBRATION,
                      cache_path=path, recalibrate=True, progress=False)
    assert not third.reused and json.load(open(path))["fingerprint"]["preprocessing"]["mean"] == 127.5
    # Stale: different model.
    doc = json.load(open(path))
    doc["fingerprint"]["model"] = "0" * 64
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(TfcError, match="different model"):
        calibrate(float_model, prep=other, calibrator=CalibratorConfig(), cache_path=path)
    # NaN range and corrupt file.
    doc["fingerprint"]["model"] = float_model.fingerprint()
    first_tensor = sorted(doc["tensors"])[0]
    doc["tensors"][first_tensor]["max"] = float("nan")
    open(path, "w").write(json.dumps(doc))
    with pytest.raises(TfcError, match="NaN or Inf"):
        cache_lib.load(path)
    open(path, "w").write("{truncated")
    with pytest.raises(TfcError, match="corrupt"):
        cache_lib.load(path)



# Channel sums are added per image in float32 in the graph, then in float64: this close to numpy's float64 sum.
CHANNEL_SUM_RTOL = 1e-5


@pytest.mark.parametrize("name", ["mobilenetv2_patches", "se_patches", "boxes_digits"])
def test_statistics_reduced_in_the_graph_equal_streaming_every_value(name):
    """collect_stats fetches only reductions; the result must be what TensorStats.update gives on every value
    (histograms, min, max and counts exactly), whatever the batch size, the last batch a partial one."""
    from tfcompress.api.models import load_frozen
    from tfcompress.calibrate.collect import calibration_tensors, collect_stats
    from tfcompress.data.source import as_source
    from tfcompress.evaluate.zoo import ZOO
    from tfcompress.graph.passes import optimize
    from tfcompress.graph.runner import GraphRunner
    entry = ZOO[name]
    model, _ = optimize(load_frozen(entry.path))
    prep = Preprocessing.for_input(model.image_input().shape, mean=entry.mean, std=entry.std)
    tensors = calibration_tensors(model)
    reference = {t: TensorStats() for t in tensors}
    with GraphRunner(model.graph_def, [model.image_input().tensor], tensors) as runner:
        for batch in as_source(entry.calibration).batches(prep, 7):
            for t, v in zip(tensors, runner.run(batch)):
                reference[t].update(v)
    for batch_size in (5, None):
        got = collect_stats(model, entry.calibration, prep, batch_size=batch_size, progress=False)
        assert list(got) == tensors
        for t in tensors:
            a, b = reference[t], got[t]
            assert (a.min, a.max, a.count, a.bin_width, a.first_bin) == (b.min, b.max, b.count, b.bin_width,
                                                                          b.first_bin), t
            np.testing.assert_array_equal(a.counts, b.counts, err_msg=t)
            np.testing.assert_allclose(b.channel_sum, a.channel_sum,
                                       atol=CHANNEL_SUM_RTOL * max(1.0, float(np.abs(a.channel_sum).max(initial=0))))


def test_automatic_batch_size_follows_the_widest_activation():
    from tfcompress.calibrate.collect import ACTIVATION_BUDGET_BYTES, MAX_AUTO_BATCH, auto_batch_size
    from tfcompress.io.frozen import FrozenModel, TensorSig
    import tensorflow as tf

    def model(h, w, c):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (None, h, w, c), name="x")
            tf.nn.relu(x, name="y")
        return FrozenModel(graph.as_graph_def(), [TensorSig("x", "x:0", "float32", (None, h, w, c))],
                           [TensorSig("y", "y:0", "float32", (None, h, w, c))])

    assert auto_batch_size(model(32, 32, 3), ["y:0"]) == MAX_AUTO_BATCH
    per_image = 256 * 256 * 64 * 4  # VGG16's first block at 256x256.
    assert auto_batch_size(model(256, 256, 64), ["y:0"]) == ACTIVATION_BUDGET_BYTES // per_image == 1
    assert auto_batch_size(model(112, 112, 96), ["y:0"]) == 3  # EfficientNetB0's widest at 224x224.
    assert auto_batch_size(model(2048, 2048, 64), ["y:0"]) == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
