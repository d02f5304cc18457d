"""The zoo: each model is the architecture it claims, trained (held-out quality), and loads in safe mode."""

import collections
import os
import re

import numpy as np
import pytest

from tfcompress.evaluate.zoo import ZOO, TESTDATA

# Held-out top-1 every trained zoo classifier reaches (an untrained one is near 10%: ten classes).
MIN_ACCURACY = 0.90
# Box regression on held-out canvases, mean absolute error in canvas fractions (an untrained head: ~0.25).
MAX_BOX_ERROR = 0.05


def _kinds(model):
    counts = collections.Counter(type(layer).__name__ for layer in model.layers)
    counts["swish"] = sum(1 for layer in model.layers if type(layer).__name__ == "Activation"
                          and layer.get_config()["activation"] in ("swish", "silu"))  # Keras 3 names it silu.
    counts["relu6"] = sum(1 for layer in model.layers if type(layer).__name__ == "ReLU"
                          and float(layer.max_value or 0) == 6.0)
    counts["projection"] = sum(1 for layer in model.layers if type(layer).__name__ == "Conv2D"
                               and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (2, 2))
    return counts


STRUCTURE = {
    "xception_digits": lambda k: k["SeparableConv2D"] >= 6 and k["Add"] >= 3 and k["BatchNormalization"] >= 8,
    "mobilenetv2_patches": lambda k: k["DepthwiseConv2D"] >= 8 and k["relu6"] >= 16 and k["Add"] >= 4,
    "resnet_patches": lambda k: k["projection"] >= 2 and k["Add"] >= 5,
    "vgg_patches": lambda k: k["Conv2D"] == 6 and k["BatchNormalization"] == 0 and k["Flatten"] == 1,
    "se_patches": lambda k: k["PReLU"] >= 2 and k["LeakyReLU"] >= 1 and k["swish"] >= 1 and k["Multiply"] >= 3,
    "boxes_digits": lambda k: k["PReLU"] >= 4 and k["Dense"] >= 3,
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_is_its_architecture_and_trained(name):
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    from tfcompress.io.keras_models import load_keras
    entry = ZOO[name]
    model = load_keras(entry.path)
    assert STRUCTURE[name](_kinds(model)), _kinds(model)
    _, h, w, c = model.input_shape
    prep = Preprocessing(height=h, width=w, channels=c, mean=entry.mean, std=entry.std)
    held = FolderSource(entry.heldout)
    outputs = model.predict(held.array(prep), verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    assert list(model.output_names) == list(entry.heads)
    by_head = dict(zip(entry.heads, outputs))
    for head, kind in entry.heads.items():
        if kind == "class":
            accuracy = float(np.mean(by_head[head].argmax(1) == held.labels))
            assert accuracy >= MIN_ACCURACY, (name, head, accuracy)
    if "box" in by_head:
        truth = np.load(os.path.join(TESTDATA, "images", "boxes", "heldout_boxes.npz"))["boxes"]
        order = [int(re.search(r"digit_(\d+)", p).group(1)) for p in held.paths]  # Row k of the npz is file k.
        error = float(np.mean(np.abs(by_head["box"] - truth[order])))
        assert error <= MAX_BOX_ERROR, error


def _effect(a, b) -> float:
    """The difference of two image sets' mean pixel values, in units of their pooled standard deviation."""
    return float(abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_benchmark_fine_tunes_each_model_on_images_of_its_task(name):
    """benchmark_speed's unshipped fine-tuning images for a model (`ZooModel.task`) have its input shape and are
    closer to its shipped calibration images than any other task's images of that shape: the boxes model, whose
    name contains "digits", was once fine-tuned on full-frame digits (mean pixel 0.30 against its canvases'
    0.10)."""
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    from tfcompress.io.keras_models import load_keras
    from tools import benchmark_speed
    entry = ZOO[name]
    _, h, w, c = load_keras(entry.path).input_shape
    shipped = FolderSource(entry.calibration).array(Preprocessing(height=h, width=w, channels=c, mean=entry.mean,
                                                                  std=entry.std))[:64]
    images = {task: benchmark_speed._zoo_images(task, 64, 0) for task in ("digits", "patches", "boxes")}
    assert images[entry.task].shape[1:] == shipped.shape[1:]
    own = _effect(images[entry.task], shipped)
    for task, x in images.items():
        if task != entry.task and x.shape[1:] == shipped.shape[1:]:
            assert own < _effect(x, shipped), (task, own)


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
