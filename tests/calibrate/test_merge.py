"""Sharded calibration: caches of shards merge into the cache a single process makes of the whole set."""

import json
import os
import sys

import numpy as np
import pytest

from tfcompress.calibrate.stats import MAX_BINS, TensorStats
from tfcompress.errors import TfcError

# Per-channel sums are float64 sums added in another order when shards merge.
CHANNEL_SUM_RTOL = 1e-12


def _same_histogram(a: TensorStats, b: TensorStats) -> None:
    assert (a.min, a.max, a.count, a.bin_width, a.first_bin) == (b.min, b.max, b.count, b.bin_width, b.first_bin)
    np.testing.assert_array_equal(a.counts, b.counts)


@pytest.mark.parametrize("kind", ["relu", "signed", "offset", "constant", "outliers", "narrow"])
def test_merged_shards_equal_the_whole_however_batched(kind):
    """The histogram of a set does not depend on how it was split into batches or shards: the width is the
    largest any batch asks for (a function of the set's largest magnitude) doubled to fit [min, max]."""
    rng = np.random.default_rng(7)
    values = {
        "relu": np.maximum(rng.standard_normal(30_000), 0) * 3,
        "signed": rng.standard_normal(30_000) * 2 - 0.5,
        "offset": 100 + rng.random(30_000),  # far from zero: [min, max] fits fine bins
        "constant": np.full(30_000, -1.25),
        "outliers": np.concatenate([rng.standard_normal(29_990) * 0.01, rng.standard_normal(10) * 400]),
        # Far from zero, across a power of two: the first batches alone would ask for a finer width.
        "narrow": 120 + 20 * rng.random(30_000),
    }[kind].astype(np.float32)
    whole = TensorStats()
    for batch in np.array_split(values, 9):
        whole.update(batch)
    orders = [rng.permutation(values.size), np.argsort(values), np.argsort(-values)]
    for shards, order in zip((2, 3, 5), orders):
        merged = TensorStats()
        for part in np.array_split(values[order], shards):  # other images in each shard, other batches
            shard = TensorStats()
            for batch in np.array_split(part, int(rng.integers(1, 6))):
                shard.update(batch)
            merged.merge(shard)
        _same_histogram(whole, merged)
        assert merged.counts.sum() == values.size and merged.counts.size <= MAX_BINS


def test_merge_refuses_another_channel_count():
    a, b = TensorStats(), TensorStats()
    a.update(np.ones((4, 3), np.float32))
    b.update(np.ones((4, 5), np.float32))
    with pytest.raises(TfcError, match="channel count"):
        a.merge(b)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(folder, whole cache, shard caches) of the zoo SE net: 2 shards, calibrated from the image folder."""
    from tfcompress import CalibrationOptions, calibrate
    from tfcompress.evaluate.zoo import ZOO
    entry = ZOO["se_patches"]
    root = tmp_path_factory.mktemp("merge")
    options = CalibrationOptions(input_mean=entry.mean, input_std=entry.std, batch_size=16)
    whole = str(root / "whole.json")
    calibrate(entry.path, entry.calibration, cache=whole, options=options)
    parts = []
    for k in range(2):
        parts.append(str(root / f"part{k}.json"))
        # Another batch size in each worker: batching must not matter either.
        calibrate(entry.path, entry.calibration, cache=parts[-1], shard=(k, 2),
                  options=CalibrationOptions(input_mean=entry.mean, input_std=entry.std, batch_size=7 + k))
    return root, whole, parts


def test_merged_cache_equals_the_single_process_cache(shards):
    from tfcompress import merge_caches
    from tfcompress.calibrate import cache as cache_lib
    from tfcompress.calibrate.calibrators import CalibratorConfig
    root, whole, parts = shards
    one = cache_lib.load(whole)
    halves = [cache_lib.load(p) for p in parts]
    assert sum(h.image_count for h in halves) == one.image_count and all(h.image_count for h in halves)
    merged_path = str(root / "merged.json")
    merged = merge_caches(parts[::-1], merged_path)  # any order
    assert merged.image_count == one.image_count
    assert sorted(merged.stats) == sorted(one.stats)
    for name, stats in one.stats.items():
        _same_histogram(stats, merged.stats[name])
        np.testing.assert_allclose(merged.stats[name].channel_sum, stats.channel_sum, rtol=CHANNEL_SUM_RTOL,
                                   atol=CHANNEL_SUM_RTOL * float(np.abs(stats.channel_sum).max(initial=1.0)))
    # Hence every calibrator's ranges are equal too, as written to the file and re-derived.
    for calibrator in (CalibratorConfig(method="minmax"), CalibratorConfig(method="percentile", percentile=99.9),
                       CalibratorConfig(method="mse")):
        assert cache_lib.load(merged_path).ranges(calibrator) == one.ranges(calibrator)
    written, single = json.load(open(merged_path)), json.load(open(whole))
    assert written["fingerprint"] == single["fingerprint"]
    # A shard of the whole is not: it saw half the images.
    assert any(halves[0].stats[n].max != s.max or halves[0].stats[n].count != s.count for n, s in one.stats.items())


def test_quantize_graph_reads_the_merged_cache_as_the_whole(shards, tmp_path):
    """quantize_graph reads the merged cache as the single-process one: the same eightbit graph, bytes."""
    from tfcompress import merge_caches, quantize_graph, CalibrationOptions
    from tfcompress.evaluate.zoo import ZOO
    root, whole, parts = shards
    entry = ZOO["se_patches"]
    merged = str(tmp_path / "merged.json")
    merge_caches(parts, merged)
    outputs = []
    for cache in (whole, merged):
        out = str(tmp_path / (os.path.basename(cache) + ".pb"))
        quantize_graph(entry.path, out, cache=cache, output_format="frozen_pb",
                       options=CalibrationOptions(input_mean=entry.mean, input_std=entry.std))
        outputs.append(open(out, "rb").read())
    assert outputs[0] == outputs[1]


def test_two_calibrate_processes_and_a_merge_give_the_single_process_cache(tmp_path):
    """The command line as a cluster runs it: two worker processes at once, each on its shard, then --merge."""
    import subprocess
    from tests.conftest import ROOT
    from tfcompress.calibrate import cache as cache_lib
    from tfcompress.evaluate.zoo import ZOO
    entry = ZOO["mobilenetv2_patches"]
    common = [sys.executable, os.path.join(ROOT, "tools", "calibrate.py"), f"--input={entry.path}",
              f"--calibration_images={entry.calibration}", f"--input_mean={entry.mean}", f"--input_std={entry.std}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    workers = [subprocess.Popen(common + [f"--shard={k}/2", f"--calibration_cache={tmp_path}/part{k}.json"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    single = subprocess.run(common + [f"--calibration_cache={tmp_path}/all.json"], env=env, capture_output=True,
                            text=True)
    assert single.returncode == 0 and [w.wait(timeout=600) for w in workers] == [0, 0], single.stderr[-800:]
    merge = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "calibrate.py"), "--merge",
                            f"{tmp_path}/part0.json", f"{tmp_path}/part1.json",
                            f"--calibration_cache={tmp_path}/merged.json"], env=env, capture_output=True, text=True)
    assert merge.returncode == 0, merge.stderr[-800:]
    assert "from 2 shards" in merge.stdout
    one, merged = cache_lib.load(f"{tmp_path}/all.json"), cache_lib.load(f"{tmp_path}/merged.json")
    assert merged.image_count == one.image_count and sorted(merged.stats) == sorted(one.stats)
    for name, stats in one.stats.items():
        _same_histogram(stats, merged.stats[name])
        np.testing.assert_allclose(merged.stats[name].channel_sum, stats.channel_sum, rtol=CHANNEL_SUM_RTOL,
                                   atol=CHANNEL_SUM_RTOL * float(np.abs(stats.channel_sum).max(initial=1.0)))
    assert json.load(open(f"{tmp_path}/merged.json"))["tensors"].keys() == \
        json.load(open(f"{tmp_path}/all.json"))["tensors"].keys()


def test_shards_of_tensor_data_merge_into_the_whole(tmp_path):
    """--calibration_data shards: the same statistics, and the merged record counts every sample."""
    from tfcompress import calibrate, merge_caches
    from tfcompress.calibrate import cache as cache_lib
    from tfcompress.evaluate.zoo import ZOO
    entry = ZOO["se_patches"]
    import keras
    shape = tuple(keras.saving.load_model(entry.path, safe_mode=True, compile=False).inputs[0].shape[1:])
    samples = np.random.default_rng(5).standard_normal((24,) + shape).astype(np.float32)
    data = str(tmp_path / "data.npz")
    np.savez(data, patch=samples)
    calibrate(entry.path, data=data, cache=str(tmp_path / "all.json"))
    parts = [str(tmp_path / f"part{k}.json") for k in range(3)]
    for k, part in enumerate(parts):
        calibrate(entry.path, data=data, cache=part, shard=(k, 3))
    merged = merge_caches(parts, str(tmp_path / "merged.json"))
    one = cache_lib.load(str(tmp_path / "all.json"))
    for name, stats in one.stats.items():
        _same_histogram(stats, merged.stats[name])
    [spec] = merged.preprocessing["calibration_data"]["inputs"].values()
    assert spec["shape"][0] == 24 and merged.image_count == 24
    doc = json.load(open(parts[1]))
    for spec in doc["fingerprint"]["preprocessing"]["calibration_data"]["inputs"].values():
        spec["shape"] = "broken"
    json.dump(doc, open(parts[1], "w"))
    with pytest.raises(TfcError, match="different preprocessing or input layouts"):
        merge_caches(parts, str(tmp_path / "again.json"))
    assert not (tmp_path / "again.json").exists()


def _doctored(path, out, **changes):
    doc = json.load(open(path))
    for key, value in changes.items():
        target = doc
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    with open(out, "w") as f:
        json.dump(doc, f)
    return out


@pytest.mark.parametrize("change,message", [
    ({"fingerprint.model": "0" * 64}, "were made for different models"),
    ({"fingerprint.preprocessing.mean": 1.0}, "different preprocessing"),
    ({"images.sha256": None}, "unreadable or corrupt"),
])
def test_merging_caches_that_do_not_belong_together_writes_nothing(shards, tmp_path, change, message):
    from tfcompress import merge_caches
    _, _, parts = shards
    other = _doctored(parts[1], str(tmp_path / "other.json"), **change)
    out = tmp_path / "merged.json"
    with pytest.raises(TfcError, match=message):
        merge_caches([parts[0], other], str(out))
    assert not out.exists()


def test_merge_refuses_a_shard_twice_a_lone_cache_and_writing_over_an_input(shards, tmp_path):
    from tfcompress import merge_caches
    _, _, parts = shards
    before = open(parts[0], "rb").read()
    with pytest.raises(TfcError, match="same images"):
        merge_caches([parts[0], parts[0]], str(tmp_path / "m.json"))
    with pytest.raises(TfcError, match="at least two"):
        merge_caches(parts[:1], str(tmp_path / "m.json"))
    with pytest.raises(TfcError, match="one of the caches being merged"):
        merge_caches(parts, parts[0])
    assert open(parts[0], "rb").read() == before and not (tmp_path / "m.json").exists()


def test_shards_cover_every_image_once():
    from tfcompress.data.source import as_source, shard
    from tfcompress.evaluate.zoo import ZOO
    source = as_source(ZOO["se_patches"].calibration)
    paths = [p for k in range(3) for p in shard(source, k, 3).paths]
    assert sorted(paths) == sorted(source.paths) and len(paths) == len(source)
    assert len(shard(source, 0, 1)) == len(source)
    with pytest.raises(TfcError, match="empty"):
        shard(as_source(np.zeros((2, 4, 4, 3), np.uint8)), 2, 3)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
