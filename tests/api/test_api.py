"""The Python API: the same bytes as the command line, image sources that agree, and the README's examples."""

import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CALIBRATION, KERAS_MODEL, ROOT, run_tool_in_process

import tfcompress as tfc
from tfcompress.errors import TfcError


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """The shipped calibration PNGs in a folder of their own, and the same images as a raw pixel array."""
    folder = tmp_path_factory.mktemp("pngs")
    paths = sorted(glob.glob(os.path.join(CALIBRATION, "*.png")))
    for p in paths:
        shutil.copy(p, folder)
    # Decoded the way a user would, with Pillow alone: grayscale digits as RGB, uint8.
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert pixels.shape == (len(paths), 32, 32, 3) and pixels.dtype == np.uint8
    return str(folder), pixels


def test_convert_from_a_keras_model_and_a_pixel_array_matches_the_cli_with_a_folder(png_folder, tmp_path):
    import keras
    folder, pixels = png_folder
    cli = tmp_path / "cli.tflite"
    proc = run_tool_in_process("convert", f"--input={KERAS_MODEL}", f"--output={cli}",
                               f"--calibration_images={folder}", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    api = tmp_path / "api.tflite"
    result = tfc.convert(model, str(api), images=pixels)
    assert api.read_bytes() == cli.read_bytes()
    assert result.flatbuffer == cli.read_bytes() and result.quantize == "int8" and result.calibrator == "minmax"


def test_quantize_graph_from_a_pixel_array_matches_the_cli_with_a_folder(png_folder, tmp_path):
    folder, pixels = png_folder
    proc = run_tool_in_process("quantize_graph", f"--input={KERAS_MODEL}", f"--output={tmp_path / 'cli'}",
                               f"--calibration_images={folder}", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = tfc.quantize_graph(KERAS_MODEL, str(tmp_path / "api"), images=pixels)
    assert result.mode == "eightbit" and result.agreement is None
    assert _tree(tmp_path / "api") == _tree(tmp_path / "cli")


def _tree(folder):
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


def test_job_names_shared_with_packages_stay_callable():
    """tfc.prune is both the job and the package tfcompress.prune: importing its modules keeps the job."""
    import tfcompress.evaluate.run  # noqa: F401  (binds the package to the attribute, as any import does)
    from tfcompress.prune import magnitude
    assert callable(tfc.evaluate) and callable(tfc.prune) and magnitude.__name__ == "tfcompress.prune.magnitude"
    with pytest.raises(TfcError, match="method must be magnitude or one of"):
        tfc.prune(KERAS_MODEL, method="nope")


def test_every_image_source_gives_the_same_floats(png_folder):
    import tensorflow as tf
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import as_source
    folder, pixels = png_folder
    prep = Preprocessing(height=32, width=32, channels=3, mean=127.5, std=127.5)
    expected = (pixels.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)  # numpy, independently
    dataset = tf.data.Dataset.from_tensor_slices(pixels).batch(7)
    for source in (folder, pixels, dataset, sorted(glob.glob(os.path.join(folder, "*.png")))):
        got = np.concatenate(list(as_source(source).batches(prep, 16)))
        np.testing.assert_array_equal(got, expected)
    assert as_source(folder).fingerprint() != as_source(pixels).fingerprint()
    assert as_source(pixels).fingerprint() == as_source(pixels.copy()).fingerprint()


def test_per_channel_normalization_and_bgr_order_against_numpy():
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import as_source
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    mean, std = (103.939, 116.779, 123.68), (1.0, 2.0, 4.0)
    prep = Preprocessing(height=4, width=4, channels=3, mean=mean, std=std, channel_order="bgr")
    got = np.concatenate(list(as_source(pixels).batches(prep)))
    expected = (pixels[..., ::-1].astype(np.float64) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)
    assert prep.as_dict()["mean"] == list(mean) and prep.as_dict()["channel_order"] == "bgr"
    # The RGB default keeps the cache fingerprint of a scalar normalization as it was.
    assert Preprocessing(height=4, width=4, channels=3).as_dict() == {
        "height": 4, "width": 4, "channels": 3, "mean": 0.0, "std": 255.0, "resize": "bilinear"}


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32), np.uint8), "must be an \\(N, H, W, C\\) array"),
    (np.zeros((0, 32, 32, 3), np.uint8), "no images"),
    (np.full((1, 32, 32, 3), np.nan, np.float32), "NaN or Inf"),
    (np.zeros((1, 32, 32, 3), np.complex64), "integers or floats"),
    (np.zeros((2, 32, 32, 1), np.uint8), "1 channels but the model takes 3"),
    (np.zeros((2, 16, 16, 3), np.float32), "only uint8 pixels are resized"),
    (42, "must be a folder path"),
])
def test_bad_image_arrays_are_one_clear_error(images, message):
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import as_source
    prep = Preprocessing(height=32, width=32, channels=3)
    with pytest.raises(TfcError, match=message):
        list(as_source(images).batches(prep))


def test_array_labels_are_checked():
    from tfcompress.data.source import ArraySource
    pixels = np.zeros((3, 8, 8, 3), np.uint8)
    assert ArraySource(pixels, [0, 2, 1]).labelled
    for labels in ([0, 1], [0.5, 1, 2], [-1, 0, 0]):
        with pytest.raises(TfcError, match="labels must be 3 non-negative class indices"):
            ArraySource(pixels, labels)


def test_keras_jobs_take_arrays_and_return_typed_results():
    """prune from an in-memory model and a labelled pixel array: the report's zeros are the model's zeros."""
    import keras
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.api.keras_jobs import KerasResult
    x, y = digits_training_set(64)
    pixels = np.round(x * 255).astype(np.uint8)
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    result = tfc.prune(model, sparsity=0.5, train_images=pixels, labels=y, options=tfc.TrainOptions(epochs=1))
    assert isinstance(result, KerasResult) and result.original is model
    kernels = [layer.kernel.numpy() for layer in result.model.layers if hasattr(layer, "kernel")]
    zeros, total = sum(int(np.sum(k == 0)) for k in kernels), sum(k.size for k in kernels)
    assert result.rows[-2][:3] == ["total (pruned kernels)", zeros, total] and 0.45 <= zeros / total <= 0.55
    every = [w.numpy() for w in result.model.trainable_weights]
    assert result.rows[-1][:3] == ["whole model (every trainable weight)", sum(int(np.sum(w == 0)) for w in every),
                                   sum(w.size for w in every)]
    assert "and labels, 64 images" in result.training
    with pytest.raises(TfcError, match="label 10 but the model outputs 10"):
        tfc.prune(model, train_images=pixels, labels=np.full(64, 10), options=tfc.TrainOptions(epochs=1))


def _readme_python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_a_python_section_with_an_example_per_job():
    code = "\n".join(_readme_python_blocks())
    for job in ("calibrate", "quantize_graph", "convert", "evaluate", "prune", "cluster", "lowrank", "qat",
                "binarize", "distill", "pq", "drop_blocks", "compress"):
        assert f"tfc.{job}(" in code, job


def test_the_readme_python_examples_run(tmp_path):
    """Each block runs as written, in order, in a fresh process (from a folder holding `testdata`)."""
    os.symlink(os.path.join(ROOT, "testdata"), tmp_path / "testdata")
    script = tmp_path / "examples.py"
    script.write_text("\n".join(_readme_python_blocks()))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "digits_int8.tflite").stat().st_size > 0
    assert "top-1" in proc.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
