"""Deep Compression's acceptance check: an unseen LeNet-5 through the shipped recipe, >= 40x, no accuracy loss.

The LeNet-5 is built and trained here (its own seed), on the 1,397
scikit-learn digits that are not shipped; accuracy is measured on the 300
shipped held-out digits, which it never saw.  `compress` runs
recipes/deep_compression.yaml (prune 95% -> cluster 16 -> int8 per-tensor ->
pack).  The packed .tfc must be at least 40x smaller than the model's float32
.tflite, not be significantly less accurate (MIN_P_VALUE), and unpack to a
.tflite that `eval` scores exactly as the manifest says.
"""

import json
import os

import numpy as np
import pytest

from tests.conftest import CALIBRATION, HELDOUT, ROOT, run_tool, write_digits

MIN_RATIO = 40.0
# "No loss of accuracy" (Han et al. report LeNet-5 at 0.80% error before, 0.74% after), tested as: the
# packed model is not significantly less accurate than the source on the same 300 images, by McNemar's
# exact one-sided test on the images only one of them gets right.  (A fixed 0.5% would be a 1.5-image
# threshold: a single image flipping by int8 rounding would decide it.)
MIN_P_VALUE = 0.05


def _mcnemar_p(source_right, packed_right) -> float:
    """P(at least this many of the discordant images go against the packed model | no difference)."""
    import math
    lost = int(np.sum(source_right & ~packed_right))
    discordant = lost + int(np.sum(~source_right & packed_right))
    return sum(math.comb(discordant, k) for k in range(lost, discordant + 1)) / 2 ** discordant


def test_deep_compression_recipe_on_an_unseen_lenet5(tmp_path):
    import keras
    import tensorflow as tf
    from tfcompress.keras.train import TrainConfig, fit
    from tfcompress.evaluate.zoo import digits_training_set, lenet5
    from tfcompress.io.atomic import save_keras
    keras.utils.set_random_seed(11)
    tf.config.experimental.enable_op_determinism()
    x, y = digits_training_set()
    x = x[..., :1]
    model = lenet5()
    fit(model, x, y, TrainConfig(epochs=30, alpha=1.0, seed=11, verbose=0))
    lenet = str(tmp_path / "lenet5.keras")
    save_keras(model, lenet)
    train = write_digits(tmp_path / "train", x, y)

    out = tmp_path / "out"
    proc = run_tool("compress", f"--recipe={os.path.join(ROOT, 'recipes', 'deep_compression.yaml')}",
                    f"--input={lenet}", f"--output={out}", f"--train_images={train}",
                    f"--calibration_images={CALIBRATION}", f"--eval_images={HELDOUT}", "--noprogress", "--runs=50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout[-1500:])
    steps = json.loads((out / "manifest.json").read_text())["steps"]
    source, packed = steps[0], steps[-1]
    assert source["accuracy"] >= 0.95  # A real LeNet-5, not a degenerate one.
    assert packed["command"] == "pack"
    assert packed["tflite_bytes"] / packed["packed_bytes"] > 5  # Packing itself, not only int8, shrinks it.
    assert source["tflite_bytes"] / packed["packed_bytes"] >= MIN_RATIO, packed
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    from tfcompress.export.litert import LiteRTRunner
    held = FolderSource(HELDOUT)
    images = held.array(Preprocessing.for_input((None, 32, 32, 1), mean=0.0, std=255.0))
    source_right = model.predict(images, verbose=0).argmax(1) == held.labels
    packed_right = LiteRTRunner((out / "03_convert.tflite").read_bytes()).predict(images).argmax(1) == held.labels
    assert (float(np.mean(source_right)), float(np.mean(packed_right))) == \
        pytest.approx((source["accuracy"], packed["accuracy"]))  # The manifest's own figures, recomputed.
    assert _mcnemar_p(source_right, packed_right) >= MIN_P_VALUE, (source["accuracy"], packed["accuracy"])

    unpacked = tmp_path / "unpacked.tflite"
    proc = run_tool("unpack", f"--input={out / '04_pack.tfc'}", f"--output={unpacked}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert unpacked.read_bytes() == (out / "03_convert.tflite").read_bytes()
    proc = run_tool("eval", f"--model={unpacked}", f"--images={HELDOUT}", "--json", "--runs=50")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["top1"] == packed["accuracy"]  # Exactly the accuracy the manifest reports.


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q", "-s"]))
