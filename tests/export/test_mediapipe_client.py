"""A real client reads our .tflite: MediaPipe Tasks' ImageClassifier, from the metadata alone.

MediaPipe runs in its own virtualenv (.venv-clients, made by
tools/setup_clients.sh), with nothing of tfcompress or TensorFlow: it is
given the .tflite and raw RGB pixels, as an Android app gives them, and must
find the normalization (float input) and the labels in the standard TFLite
Metadata.  Its top class is checked against the float Keras model run here on
the same pixels, normalized by hand, and its label against the class folder.

Two zoo classifiers (RGB, ten named classes each: MobileNetV2-style and
squeeze-and-excitation), each as float, --quantize=uint8 and the default
(--quantize=int8, whose default I/O is uint8).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tfcompress as tfc
from tfcompress.api.graph_jobs import CalibrationOptions
from tfcompress.evaluate.zoo import ZOO

CLIENT_PYTHON = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(sys.executable))),
                             ".venv-clients", "bin", "python3")
# Top-1 agreement of MediaPipe's class with the float Keras model's, on the held-out images used.
# Float: the same network, normalized by MediaPipe from the metadata (float32 rounding only).
# 8-bit: the quantized model's own disagreement with float (measured: 29/30 or 30/30 per model).
MIN_AGREEMENT = {"none": 1.0, "uint8": 0.9, "int8": 0.9}
PER_CLASS = 3  # held-out images per class

_CLIENT = r"""
import json, sys
import numpy as np
from PIL import Image
import mediapipe as mp
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core import base_options
model, paths = sys.argv[1], sys.argv[2:]
options = vision.ImageClassifierOptions(base_options=base_options.BaseOptions(model_asset_path=model),
                                        max_results=1)
with vision.ImageClassifier.create_from_options(options) as classifier:
    for path in paths:
        pixels = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels))
        top = result.classifications[0].categories[0]
        print(json.dumps({"index": top.index, "label": top.category_name}))
"""

pytestmark = pytest.mark.skipif(not os.path.exists(CLIENT_PYTHON),
                                reason="no .venv-clients with MediaPipe (run tools/setup_clients.sh)")


def _heldout(entry):
    classes = sorted(os.listdir(entry.heldout))
    paths = [os.path.join(entry.heldout, c, f) for c in classes
             for f in sorted(os.listdir(os.path.join(entry.heldout, c)))[:PER_CLASS]]
    return classes, paths


def _mediapipe(model_path: str, paths):
    done = subprocess.run([CLIENT_PYTHON, "-c", _CLIENT, model_path] + paths, capture_output=True, text=True,
                          timeout=600, check=False, env={"PATH": os.environ.get("PATH", "/usr/bin")})
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("name", ["mobilenetv2_patches", "se_patches"])
def test_mediapipe_classifies_with_our_metadata(name, tmp_path):
    import keras  # pylint: disable=import-outside-toplevel
    entry = ZOO[name]
    classes, paths = _heldout(entry)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    model = keras.saving.load_model(entry.path, safe_mode=True)
    reference = np.argmax(model.predict((pixels - entry.mean) / entry.std, verbose=0), axis=-1)
    options = CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
    for mode in ("none", "uint8", "int8"):
        out = str(tmp_path / f"{name}_{mode}.tflite")
        result = tfc.convert(entry.path, out, quantize=mode, labels_from=entry.heldout, options=options,
                             images=None if mode == "none" else entry.calibration)
        expected_input = "float32" if mode == "none" else "uint8"
        assert result.labels == classes
        answers = _mediapipe(out, paths)
        assert len(answers) == len(paths), (mode, answers[:3])
        indices = np.array([a["index"] for a in answers])
        assert [a["label"] for a in answers] == [classes[i] for i in indices], mode
        agreement = float(np.mean(indices == reference))
        assert agreement >= MIN_AGREEMENT[mode], (mode, expected_input, agreement)


def test_mediapipe_refuses_int8_io_and_the_preflight_says_so(tmp_path):
    entry = ZOO["mobilenetv2_patches"]
    out = str(tmp_path / "int8_io.tflite")
    result = tfc.convert(entry.path, out, io="int8", images=entry.calibration, labels_from=entry.heldout,
                         options=CalibrationOptions(input_mean=entry.mean, input_std=entry.std))
    assert any("int8 image input" in w for w in result.preflight.client_warnings)
    done = subprocess.run([CLIENT_PYTHON, "-c", _CLIENT, out, _heldout(entry)[1][0]], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode != 0 and "INT8" in done.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
