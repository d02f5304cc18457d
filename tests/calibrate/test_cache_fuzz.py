"""The cache reader under seeded mutation: every damaged or hand-edited cache is loaded or refused with a
TfcError, quickly; nothing it accepts yields an invalid range."""

import copy
import json
import math
import time

import numpy as np
import pytest

from tests.conftest import CALIBRATION
from tfcompress.calibrate import cache as cache_lib
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.errors import TfcError

CASES = 300
SECONDS_PER_LOAD = 2.0  # A valid cache of this model loads in milliseconds; no mutation may make it hang.


@pytest.fixture(scope="module")
def cache_text(float_model, tmp_path_factory):
    from tfcompress.calibrate.run import calibrate
    from tfcompress.data.images import Preprocessing, list_images
    path = str(tmp_path_factory.mktemp("cache") / "ranges.json")
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), images=list_images(CALIBRATION)[:16],
              cache_path=path, progress=False)
    with open(path, encoding="utf-8") as f:
        return f.read()


_ODD = [None, True, -1, 0, 2 ** 70, -1e30, 1e30, float("nan"), float("inf"), "x", [], {}, [1, -5, 3], [[1]],
        {"min": 1}, 0.5, -0.0]


def _paths(doc):
    """Every key path in the document (computed once: each case mutates a fresh parse of the same text)."""
    paths = []

    def walk(node, path):
        paths.append(path)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            walk(value, path + (key,))

    walk(doc, ())
    return paths[1:]


def _mutate_doc(doc, path, rng):
    """Replace the value at `path` with an odd one, or delete it from its mapping."""
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(_ODD[int(rng.integers(len(_ODD)))])
    return doc


def _mutate_bytes(data: bytes, rng) -> bytes:
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        i = int(rng.integers(len(data)))
        kind = rng.integers(3)
        if kind == 0:
            data[i] = int(rng.integers(256))
        elif kind == 1:
            del data[i:i + int(rng.integers(1, 16))]
        else:
            data[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    return bytes(data)


def test_mutated_caches_load_or_fail_cleanly(cache_text, tmp_path):
    rng = np.random.default_rng(0)
    paths = _paths(json.loads(cache_text))
    # Half the edits land on the top-level structure, half anywhere (most paths are histogram counts).
    top = [p for p in paths if len(p) <= 3]
    path = tmp_path / "mutant.json"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(CASES):
        if case % 2:
            path.write_bytes(_mutate_bytes(cache_text.encode(), rng))
        else:
            pool = top if case % 4 == 0 else paths
            target = pool[int(rng.integers(len(pool)))]
            path.write_text(json.dumps(_mutate_doc(json.loads(cache_text), target, rng)))
        start = time.perf_counter()
        try:
            loaded = cache_lib.load(str(path))
        except TfcError:
            outcomes["refused"] += 1
        else:
            outcomes["loaded"] += 1
            for lo, hi in loaded.ranges().values():  # Whatever is accepted gives valid ranges.
                assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        assert time.perf_counter() - start < SECONDS_PER_LOAD, case
    assert outcomes["refused"] > CASES // 2, outcomes  # Most mutations damage the cache; they are caught.


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(min=t["max"] + 1.0), "min .* > max"),
    (lambda t: t["histogram"]["counts"].__setitem__(0, -3), "negative or do not sum"),
    (lambda t: t.update(count=t["count"] + 1), "do not sum to count"),
    (lambda t: t.update(min=-1e30), "does not cover"),
    (lambda t: t["histogram"].update(bin_width=0.3), "power of two"),
    (lambda t: t["histogram"].update(counts=[1] * 5000), "at most 2048"),
    (lambda t: t.update(max=float("nan")), "NaN or Inf"),
])
def test_hand_edited_tensor_entries_are_named(cache_text, tmp_path, edit, message):
    doc = json.loads(cache_text)
    name = sorted(doc["tensors"])[3]
    edit(doc["tensors"][name])
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TfcError, match=f"tensor {name}: .*{message}"):
        cache_lib.load(str(path))


def test_a_cache_missing_a_tensor_the_graph_needs_is_refused(float_model, cache_text, tmp_path):
    from tfcompress.calibrate.run import calibrate
    from tfcompress.data.images import Preprocessing
    doc = json.loads(cache_text)
    del doc["tensors"][sorted(doc["tensors"])[0]]
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(doc))
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=0.0, std=255.0)
    with pytest.raises(TfcError, match="has no statistics for 1 tensor"):
        calibrate(float_model, prep=prep, calibrator=CalibratorConfig(), cache_path=str(path))


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
