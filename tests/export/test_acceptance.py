"""The int8 acceptance check on a CNN and images the project was not developed against.

testdata/models/patches_vgg.keras (see tools/make_testdata.py --parts=patches)
tells which of 10 photos a 32x32 patch comes from; its calibration and
held-out patches come from disjoint regions of the photos.  `convert
--quantize=int8 --calibrator=auto` must reach the agreement target, match or
beat the plain converter (same calibration images) on agreement and output
error, and stay within 1% of its size including the embedded metadata.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MODELS, ROOT, TESTDATA

PATCHES = os.path.join(TESTDATA, "images", "patches")
MODEL = os.path.join(MODELS, "patches_vgg.keras")
MIN_AGREEMENT = 0.993
SIZE_SLACK = 1.01
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _tool(name, *args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance")
    ours = str(out / "patches_int8.tflite")
    _tool("convert", f"--input={MODEL}", f"--output={ours}", "--quantize=int8", "--calibrator=auto",
          f"--calibration_images={PATCHES}/calibration", "--input_mean=127.5", "--input_std=127.5",
          f"--labels_from={PATCHES}/heldout", "--noprogress")
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.export.tflite import convert_tflite_default
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import load_model
    model, _ = optimize(load_model(MODEL))
    prep = Preprocessing.for_input(model.image_input().shape, mean=127.5, std=127.5)
    calibration = list_images(f"{PATCHES}/calibration")
    default = str(out / "default_int8.tflite")
    with open(default, "wb") as f:
        f.write(convert_tflite_default(model, lambda: ([b] for b in iter_batches(calibration, prep, 1))))
    return ours, default


def _eval(path):
    # Normalization comes from our flatbuffer's metadata; the converter default has none, so it is given.
    return json.loads(_tool("eval", f"--model={path}", f"--images={PATCHES}/heldout", f"--reference={MODEL}",
                            "--input_mean=127.5", "--input_std=127.5", "--json").strip().splitlines()[-1])


def test_int8_meets_the_agreement_target_and_the_converter_default(converted):
    ours_path, default_path = converted
    ours, default = _eval(ours_path), _eval(default_path)
    assert ours["images"] == 300
    assert ours["agreement_top1"] >= MIN_AGREEMENT, ours
    assert ours["agreement_top1"] >= default["agreement_top1"], (ours, default)
    assert ours["size_bytes"] <= default["size_bytes"] * SIZE_SLACK, (ours["size_bytes"], default["size_bytes"])
    # Output error on the held-out images, computed here from the two flatbuffers.
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.export.litert import LiteRTRunner
    from tfcompress.graph.passes import optimize
    from tfcompress.graph.runner import run_model
    from tfcompress.io.loaders import load_model
    model, _ = optimize(load_model(MODEL))
    prep = Preprocessing.for_input(model.image_input().shape, mean=127.5, std=127.5)
    images = np.concatenate(list(iter_batches(list_images(f"{PATCHES}/heldout"), prep, 100)))
    reference = run_model(model, images)
    mse = {name: float(np.mean((LiteRTRunner(open(p, "rb").read()).predict(images) - reference) ** 2))
           for name, p in (("ours", ours_path), ("default", default_path))}
    assert mse["ours"] <= mse["default"], mse


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
