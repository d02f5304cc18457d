"""compress: runs a recipe (a YAML list of commands) and measures every step into a manifest.

    python tools/compress.py --recipe=recipes/deep_compression.yaml --input=net.keras --output=out/net \
        --train_images=data/train --calibration_images=data/sample --eval_images=data/val

Each step is one of the jobs (prune, cluster, pq, distill, binarize, qat,
lowrank, drop_blocks, convert, pack), run in this process through the Python
API on the previous step's output with the recipe's options plus the data
flags given here: --train_images/--labels to the training jobs,
--calibration_images to convert, --input_mean/--input_std/--channel_order and
--seed to every job, and the recipe's input as distill's teacher unless the
step names one.  The recipe is checked against the API's signatures before
any step runs.
Every artifact goes into --output as NN_<command>.<ext>, with manifest.json:
input and data fingerprints, library versions, the seed, and per step its
flags, SHA-256, sizes (file, deployable .tflite raw and gzip -9, packed),
accuracy and agreement on --eval_images, and LiteRT latency (all steps timed
in one interleaved run).  The output directory appears only when every step
has succeeded.  The recipe schema is documented in tfcompress/recipe.py.

With no --recipe, recipes/prune_cluster_int8.yaml runs (50% magnitude
pruning, 16 clusters, int8 per-tensor, pack); with no --input, on the
shipped digits model and images.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

common.use_system_allocator()

from absl import flags  # noqa: E402

DEFAULT_RECIPE = os.path.join(os.path.dirname(common.TOOLS_DIR), "recipes", "prune_cluster_int8.yaml")

_RECIPE = flags.DEFINE_string("recipe", None, "Recipe YAML (default: recipes/prune_cluster_int8.yaml).")
_INPUT = flags.DEFINE_string("input", None, "Model to compress (.keras, .h5; .tflite if the recipe only packs). "
                             "Default: the shipped digits model.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory, written whole when every step succeeds (an "
                              "existing one only with --overwrite, and only if compress wrote it).")
_OVERWRITE = common.define_overwrite_flag()
_TRAIN = flags.DEFINE_string("train_images", None, "Training images for the training steps (required with --input "
                             "when the recipe trains; default without --input: the shipped calibration images).")
_LABELS = flags.DEFINE_string("labels", None, "Labels file for --train_images.")
_CALIBRATION = flags.DEFINE_string("calibration_images", None, "Calibration images for convert (default: "
                                   "--train_images; without --input: the shipped calibration images).")
_EVAL = flags.DEFINE_string("eval_images", None, "Images every step is measured on (required with --input; "
                            "default without --input: the shipped held-out digits).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed passed to every step.")
_NORM = common.define_normalization_flags(0.0, 255.0)
_RUNS = flags.DEFINE_integer("runs", 100, "Timed LiteRT runs per artifact (0: no latency).", lower_bound=0)
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show the steps' progress bars.")
common.define_onednn_training_flag()  # Read by common.run_main, before TensorFlow starts.


def main() -> None:
    from tfcompress.api.compress import CompressData, compress

    input_path = _INPUT.value or common.DEFAULT_MODEL
    recipe_path = _RECIPE.value or DEFAULT_RECIPE
    # The shipped digits serve the shipped model only: a user's model needs its own images.
    shipped = not _INPUT.value
    data = CompressData(train_images=_TRAIN.value or (common.DEFAULT_CALIBRATION if shipped else None),
                        labels=_LABELS.value,
                        calibration_images=_CALIBRATION.value or (common.DEFAULT_CALIBRATION if shipped else None),
                        eval_images=_EVAL.value or (common.DEFAULT_EVAL if shipped else None),
                        input_mean=_NORM["input_mean"].value,
                        input_std=_NORM["input_std"].value, channel_order=_NORM["channel_order"].value,
                        seed=_SEED.value)
    manifest = compress(input_path, recipe_path, _OUTPUT.value, data=data, latency_runs=_RUNS.value,
                        overwrite=_OVERWRITE.value, progress=_PROGRESS.value)

    print(f"\ncompress: {input_path} -> {_OUTPUT.value}/ ({recipe_path}, {len(manifest['steps']) - 1} steps)")
    table = [["step", "artifact", "tflite raw", "gzip -9", "packed", "vs float .tflite", "accuracy", "agreement",
              "latency"]]
    for entry in manifest["steps"]:
        table.append([entry["index"], entry["output"] if entry["index"] else "input", entry["tflite_bytes"],
                      entry["tflite_gzip_bytes"], entry["packed_bytes"], f"{entry['ratio_vs_float_tflite']:.1f}x",
                      "-" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.2f}%",
                      f"{100 * entry['agreement']:.2f}%",
                      "-" if entry["latency_ratio"] is None else f"{entry['latency_ratio']:.2f}x"])
    common.print_table(table)
    print("ratio: float32 .tflite of the input over the step's .tflite (its .tfc for pack); latency relative to "
          "the input's float32 .tflite, one interleaved LiteRT run")


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
