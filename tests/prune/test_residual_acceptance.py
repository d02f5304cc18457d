"""Structured pruning's acceptance checks on a residual CNN the tools have never seen, without labels.

The network (a ResNet-10 for 32x32 inputs, different from the shipped digits
model) is built and trained here, seeded, on the 1,397 scikit-learn digits
that are not shipped.  The tools then get only unlabelled images and learn by
distillation from the original; agreement is measured on the 300 shipped
held-out digits.

- `prune --method=thinet --ratio=0.5` (every channel group, the residual
  stream's included): at least 40% fewer MACs, at least 97% top-1
  agreement, and the result converts to an int8 .tflite that runs.
- `drop_blocks --latency_target=0.25`: the tool measures LiteRT latency itself
  and writes nothing unless the cut is reached; dropped blocks must also
  remove at least a quarter of the MACs.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CALIBRATION, HELDOUT, ROOT

MIN_MAC_CUT = 0.40
MIN_AGREEMENT = 0.97
LATENCY_TARGET = 0.25
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), "--noprogress", *args],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)


def resnet10():
    """Stem, then three stages of two basic blocks (16, 32, 64 channels; projection shortcuts on downsampling)."""
    import keras
    layers = keras.layers

    def block(x, filters, stride):
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
        if stride != 1 or x.shape[-1] != filters:
            x = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
        return layers.ReLU()(layers.Add()([x, y]))

    inp = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)))
    for filters, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
        x = block(x, filters, stride)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x), name="resnet10")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model path, unlabelled training folder of 600 unshipped digits, held-out reference predictions)."""
    import keras
    import tensorflow as tf
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.keras.train import TrainConfig, batches, fit, set_bn_statistics
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.io.atomic import save_keras
    keras.utils.set_random_seed(7)
    tf.config.experimental.enable_op_determinism()
    root = tmp_path_factory.mktemp("resnet10")
    x, y = digits_training_set()
    model = resnet10()
    fit(model, x, y, TrainConfig(epochs=8, alpha=1.0, verbose=0))
    # Eight epochs leave the moving BN statistics far behind the weights; set them from the data.
    set_bn_statistics(model, batches(x))
    path = str(root / "resnet10.keras")
    save_keras(model, path)
    images = root / "unlabelled"
    images.mkdir()
    for k, img in enumerate(x[:600]):
        Image.fromarray((img[..., 0] * 255).round().astype(np.uint8)).save(images / f"{k:04d}.png")
    held = np.concatenate(list(iter_batches(list_images(HELDOUT), Preprocessing(height=32, width=32, channels=3),
                                            100)))
    return path, str(images), held, model.predict(held, verbose=0).argmax(1)


def _ratio_line(stdout):
    """(params ratio, MACs ratio) from the tool's cost table."""
    line = next(l for l in stdout.splitlines() if l.startswith("ratio"))
    return float(line.split()[1]), float(line.split()[2])


def test_thinet_halves_the_blocks_and_keeps_agreement(trained, tmp_path):
    import keras
    from tfcompress.export.litert import LiteRTRunner
    from tfcompress.keras.cost import count
    path, images, held, reference = trained
    out = str(tmp_path / "thin.keras")
    proc = _tool("prune", f"--input={path}", f"--output={out}", f"--train_images={images}", "--method=thinet",
                 "--ratio=0.5", "--layer_epochs=1", "--epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distilled from the original, 600 images" in proc.stdout
    thin = keras.saving.load_model(out, safe_mode=True, compile=False)
    original = keras.saving.load_model(path, safe_mode=True, compile=False)
    macs0, macs = count(original)[1], count(thin)[1]
    assert macs <= (1 - MIN_MAC_CUT) * macs0, (macs, macs0)
    agreement = float(np.mean(thin.predict(held, verbose=0).argmax(1) == reference))
    print(f"thinet 0.5 (residual groups included): MACs {macs / macs0:.2f}x, agreement {agreement:.2%}")
    assert agreement >= MIN_AGREEMENT, agreement
    tflite = str(tmp_path / "thin.tflite")
    proc = _tool("convert", f"--input={out}", f"--output={tflite}", "--quantize=int8",
                 f"--calibration_images={CALIBRATION}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tflite, "rb") as f:
        runner = LiteRTRunner(f.read())
    int8 = np.concatenate([runner.predict(held[i:i + 1]) for i in range(len(held))])
    assert np.mean(int8.argmax(1) == thin.predict(held, verbose=0).argmax(1)) >= MIN_AGREEMENT


def test_block_dropping_meets_a_quarter_latency_cut(trained, tmp_path):
    import keras
    path, images, held, reference = trained
    out = str(tmp_path / "drop.keras")
    proc = _tool("drop_blocks", f"--input={path}", f"--output={out}", f"--train_images={images}",
                 f"--latency_target={LATENCY_TARGET}", "--adapter_epochs=3", "--epochs=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cut = next(l for l in proc.stdout.splitlines() if l.startswith("LiteRT float32 latency"))
    print(cut)
    # The cut the tool measured on the blocks it reports dropped (the original and the result, interleaved).
    before_us, after_us = (float(v) for v in re.findall(r"([0-9.]+) us", cut)[:2])
    assert after_us <= (1 - LATENCY_TARGET) * before_us + 1.0, cut  # Printed to the microsecond.
    assert _ratio_line(proc.stdout)[1] <= 1 - LATENCY_TARGET
    dropped = keras.saving.load_model(out, safe_mode=True, compile=False)
    agreement = float(np.mean(dropped.predict(held, verbose=0).argmax(1) == reference))
    print(f"block dropping agreement {agreement:.2%}")
    assert agreement >= 0.9, agreement


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
