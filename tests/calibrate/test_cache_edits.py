"""The cache reader on hand-edited caches: each invalid field is named (seeded mutation of caches is in
tests/export/test_fuzz.py)."""

import json

import pytest

from tests.conftest import CALIBRATION
from tfcompress.calibrate import cache as cache_lib
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.errors import TfcError


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
