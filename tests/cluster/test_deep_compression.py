"""Deep Compression's acceptance check: an unseen LeNet-5 through the shipped recipe, >= 40x at <= 0.5 point.

The LeNet-5 is built and trained here (its own seed), on the 1,397
scikit-learn digits that are not shipped; accuracy is measured on the 300
shipped held-out digits, which it never saw.  `compress` runs
recipes/deep_compression.yaml (prune 95% -> cluster 16 -> int8 per-tensor ->
pack).  The packed .tfc must be at least 40x smaller than the model's float32
.tflite, lose at most half a point, and unpack to a .tflite that `eval` scores
exactly as the manifest says.
"""

import json
import os

import pytest

from tests.conftest import CALIBRATION, HELDOUT, ROOT, run_tool, write_digits

MIN_RATIO = 40.0
MAX_ACCURACY_LOSS = 0.005


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
    assert packed["accuracy"] >= source["accuracy"] - MAX_ACCURACY_LOSS, (source["accuracy"], packed["accuracy"])

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
