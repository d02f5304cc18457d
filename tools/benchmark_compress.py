"""Deep Compression's Table 1 on the shipped digits: LeNet-300-100 and LeNet-5 through a compress recipe.

    python tools/benchmark_compress.py            # or: bazel run //tools:benchmark_compress

Each model is built and trained here (seeded, 30 epochs) on the 1,397
scikit-learn digits that are not shipped, then `compress` runs
recipes/deep_compression.yaml on it (prune 95% -> cluster 16 -> int8
per-tensor -> pack) with those digits as training images, the shipped
calibration images and the 300 shipped held-out digits for measuring.
Rows: float, prune, prune+cluster, prune+cluster+int8 and packed; sizes are
of the deployable .tflite (raw and gzip -9) and the packed .tfc; ratios are
against the float32 .tflite.
"""

import json
import os
import subprocess
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["lenet_300_100", "lenet5"], "Models: lenet_300_100, lenet5.")
_RECIPE = flags.DEFINE_string("recipe", os.path.join(os.path.dirname(common.TOOLS_DIR), "recipes",
                                                     "deep_compression.yaml"), "Recipe to run.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Epochs to train each model before compressing.")
_KEEP = flags.DEFINE_string("keep", None, "Directory to keep every model and artifact in (default: a temp dir).")

ROW_NAMES = {"input": "float", "prune": "prune", "cluster": "prune+cluster", "convert": "prune+cluster+int8",
             "pack": "packed (.tfc)"}


def _train(name, x, y, path):
    import keras
    import tensorflow as tf
    from tfcompress.keras.train import TrainConfig, fit
    from tfcompress.evaluate import zoo
    from tfcompress.io.atomic import save_keras
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    model = {"lenet_300_100": zoo.lenet_300_100, "lenet5": zoo.lenet5}[name]()
    fit(model, x, y, TrainConfig(epochs=_EPOCHS.value, alpha=1.0, verbose=0))
    save_keras(model, path)


def main() -> None:
    import numpy as np
    from PIL import Image
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import digits_training_set
    unknown = set(_MODELS.value) - {"lenet_300_100", "lenet5"}
    if unknown:
        raise TfcError(f"unknown model {sorted(unknown)[0]!r} in --models (choose from lenet_300_100, lenet5)")
    root = _KEEP.value or tempfile.mkdtemp(prefix="benchmark_compress.")
    x, y = digits_training_set()
    x = x[..., :1]
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        for k, (img, label) in enumerate(zip(x, y)):
            os.makedirs(os.path.join(train, str(label)), exist_ok=True)
            Image.fromarray((img[..., 0] * 255).round().astype(np.uint8)).save(
                os.path.join(train, str(label), f"{k:04d}.png"))
    table = [["model", "row", "accuracy", ".tflite raw", "gzip -9", "packed", "ratio raw", "ratio gzip",
              "ratio packed"]]
    for name in _MODELS.value:
        model_path = os.path.join(root, f"{name}.keras")
        _train(name, x, y, model_path)
        out = os.path.join(root, name)
        cmd = [sys.executable, os.path.join(common.TOOLS_DIR, "compress.py"), f"--recipe={_RECIPE.value}",
               f"--input={model_path}", f"--output={out}", f"--train_images={train}",
               f"--calibration_images={common.DEFAULT_CALIBRATION}", f"--eval_images={common.DEFAULT_EVAL}",
               "--noprogress", "--runs=0"]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            raise TfcError(f"compress failed on {name}")
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            steps = json.load(f)["steps"]
        float_raw = steps[0]["tflite_bytes"]
        for step in steps:
            packed = step["packed_bytes"]
            table.append([name, ROW_NAMES.get(step["command"], step["command"]), f"{100 * step['accuracy']:.2f}%",
                          step["tflite_bytes"], step["tflite_gzip_bytes"], packed,
                          f"{float_raw / step['tflite_bytes']:.1f}x", f"{float_raw / step['tflite_gzip_bytes']:.1f}x",
                          f"{float_raw / packed:.1f}x"])
    print(f"\nDeep Compression on digits (300 held-out; ratios against the float32 .tflite; artifacts in {root})")
    common.print_table(table)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
