"""Leave-one-image-out widening of per-image vector tensors' ranges (tfcompress/calibrate/vectors.py)."""

import sys

import numpy as np
import pytest

from tfcompress.calibrate import vectors

# Sums of squared errors agree to float64 rounding with a brute-force recomputation.
SUM_RTOL = 1e-9


def _brute_force(values, factor):
    """Each image quantized with the others' range (explicitly: the array without it), scaled by `factor`."""
    total = 0.0
    for i in range(len(values)):
        others = np.delete(values, i, axis=0)
        lo, hi = min(others.min(), 0.0) * factor, max(others.max(), 0.0) * factor
        step = (hi - lo) / 255.0
        for x in values[i]:
            code = min(max(round((x - lo) / step), 0), 255)
            total += (code * step + lo - x) ** 2
    return total


def test_leave_one_out_errors_equal_a_brute_force_recomputation():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((12, 5)) * rng.lognormal(0.0, 0.5, (12, 1))
    factors = np.array([1.0, 1.5, 2.75])
    got = vectors.leave_one_out_errors(values, factors)
    want = [_brute_force(values, f) for f in factors]
    np.testing.assert_allclose(got, want, rtol=SUM_RTOL)


def test_extremes_every_image_reaches_keep_their_range():
    # A saturated gate: every image holds 0 and 1, so no left-out image overshoots and widening only
    # coarsens the steps.
    rng = np.random.default_rng(1)
    values = rng.uniform(0.0, 1.0, (40, 16))
    values[:, 0], values[:, 1] = 0.0, 1.0
    errors = vectors.leave_one_out_errors(values)
    # Rounding error grows with the step's square: 4x the range, about 16x the error.
    assert errors[0] < errors[1:].min() and errors[-1] > 8 * errors[0]


def test_image_level_outliers_widen_and_the_wider_range_fits_new_images_better():
    # Each image's values have their own scale (heavy-tailed across images, as a pooled SE activation's):
    # a range from 50 images is overshot by new ones.
    rng = np.random.default_rng(2)

    def images(count):
        return np.abs(rng.standard_normal((count, 8))) * rng.lognormal(0.0, 0.6, (count, 1))

    calibration, fresh = images(50), images(5000)
    factor = vectors.FACTORS[int(np.argmin(vectors.leave_one_out_errors(calibration)))]
    assert factor > 1.0

    def error(hi):
        step = hi / 255.0
        return float(np.sum((np.clip(np.round(fresh / step), 0, 255) * step - fresh) ** 2))

    assert error(calibration.max() * factor) < error(calibration.max())


def test_only_per_image_vectors_are_chosen():
    import re
    import keras
    from tfcompress.io.loaders import freeze_keras_model
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    kept = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool_map")(x)
    gate = keras.layers.Dense(4, activation="sigmoid", name="gate")(pooled)
    out = keras.layers.Multiply(name="scaled")([x, keras.layers.Reshape((1, 1, 4), name="shaped")(gate)])
    model = keras.Model(inputs, [keras.layers.Flatten(name="flat")(out), kept])
    frozen = freeze_keras_model(model, "vectors")
    names = [f"{n.name}:0" for n in frozen.graph_def.node if n.op not in ("Const", "Placeholder")]
    chosen = vectors.vector_tensors(frozen, names)
    # Keras names a layer's ops "functional_1/<layer>_1/...".
    layers = {re.search(r"/([a-z_]+?)_\d+/", name).group(1) if "/" in name else name for name in chosen}
    # The pools (as a vector and as a 1x1 map) and the dense gate; not the conv or the gated map, and not
    # the Reshape or Flatten, which only move values (the flattened conv map is a vector by shape alone).
    assert layers == {"pool", "pool_map", "gate"}, chosen


def test_on_the_se_net_widened_ranges_fit_held_out_images_better():
    from tfcompress.calibrate.calibrators import CalibratorConfig
    from tfcompress.calibrate.run import calibrate
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    from tfcompress.evaluate.zoo import ZOO
    from tfcompress.graph.passes import optimize
    from tfcompress.graph.runner import GraphRunner
    from tfcompress.io.loaders import load_model
    entry = ZOO["se_patches"]
    model, _ = optimize(load_model(entry.path))
    prep = Preprocessing.for_input(tuple(model.inputs[0].shape), mean=entry.mean, std=entry.std)
    source = FolderSource(entry.calibration)
    minmax = CalibratorConfig(method="minmax")
    ranges = calibrate(model, prep=prep, calibrator=minmax, images=source, progress=False).cache.ranges(minmax)
    widened, factors = vectors.widen(model, ranges, source.batches(prep, 32))
    assert factors and all(widened[name] != ranges[name] for name in factors)
    assert all(widened[name] == ranges[name] for name in ranges if name not in factors)
    names = sorted(factors)
    with GraphRunner(model.graph_def, [model.image_input().tensor], names, inner_fetches=True) as runner:
        held = runner.run(FolderSource(entry.heldout).array(prep))

    def error(chosen):
        total = 0.0
        for name, values in zip(names, held):
            lo, hi = chosen[name]
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            step = (hi - lo) / 255.0
            total += float(np.sum((np.clip(np.round((values - lo) / step), 0, 255) * step + lo - values) ** 2))
        return total

    # The images the ranges never saw: their summed quantization error over the widened tensors.
    assert error(widened) < error(ranges), (error(widened), error(ranges))


def test_convert_reads_pixels_for_it_and_says_when_it_cannot(tmp_path):
    import glob
    from PIL import Image
    import tfcompress as tfc
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import ZOO
    entry = ZOO["se_patches"]
    options = tfc.CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
    cache = str(tmp_path / "ranges.json")
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(glob.glob(entry.calibration + "/*"))])
    # A pixel array, as the Python API takes: read for the calibration and again for the vector ranges.
    first = tfc.convert(entry.path, str(tmp_path / "a.tflite"), images=pixels, cache=cache, options=options)
    assert "vector range(s) widened" in first.calibration
    # The cache alone holds no pixels: the ranges stay as calibrated, and the note says so.
    again = tfc.convert(entry.path, str(tmp_path / "b.tflite"), cache=cache, options=options)
    assert "vector ranges as calibrated (no calibration images" in again.calibration
    with pytest.raises(TfcError, match="unknown --vector_ranges"):
        tfc.convert(entry.path, str(tmp_path / "c.tflite"), images=pixels, options=options, vector_ranges="wide")
    assert not (tmp_path / "c.tflite").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
