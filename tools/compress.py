"""compress: runs a recipe (a YAML list of commands) and measures every step into a manifest.

    python tools/compress.py --recipe=recipes/deep_compression.yaml --input=net.keras --output=out/net \
        --train_images=data/train --calibration_images=data/sample --eval_images=data/val

Each step is one of the commands (prune, cluster, pq, distill, binarize, qat,
lowrank, drop_blocks, convert, pack), run as its own process on the previous
step's output with the recipe's flags plus the data flags given here:
--train_images/--labels to the training commands, --calibration_images to
convert, --input_mean/--input_std and --seed to every command that has them,
and the recipe's input as distill's --teacher unless the step names one.
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
import subprocess
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

DEFAULT_RECIPE = os.path.join(os.path.dirname(common.TOOLS_DIR), "recipes", "prune_cluster_int8.yaml")

_RECIPE = flags.DEFINE_string("recipe", None, "Recipe YAML (default: recipes/prune_cluster_int8.yaml).")
_INPUT = flags.DEFINE_string("input", None, "Model to compress (.keras, .h5; .tflite if the recipe only packs). "
                             "Default: the shipped digits model.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory, written whole when every step succeeds (an "
                              "existing one only with --overwrite, and only if compress wrote it).")
_OVERWRITE = common.define_overwrite_flag()
_TRAIN = flags.DEFINE_string("train_images", None, "Training images for the training steps (default: the "
                             "shipped calibration images).")
_LABELS = flags.DEFINE_string("labels", None, "Labels file for --train_images.")
_CALIBRATION = flags.DEFINE_string("calibration_images", None, "Calibration images for convert (default: the "
                                   "shipped calibration images).")
_EVAL = flags.DEFINE_string("eval_images", None, "Images every step is measured on (default: the shipped "
                            "held-out digits).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed passed to every step.")
_NORM = common.define_normalization_flags(0.0, 255.0)
_RUNS = flags.DEFINE_integer("runs", 100, "Timed LiteRT runs per artifact (0: no latency).", lower_bound=0)
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show the steps' progress bars.")


def _tool(command: str) -> str:
    return os.path.join(common.TOOLS_DIR, f"{command}.py")


def _known_flags(command: str):
    """The flag names a command defines (from its --helpxml, which loads absl only)."""
    import xml.etree.ElementTree as ET
    from tfcompress.errors import TfcError
    done = subprocess.run([sys.executable, _tool(command), "--helpxml"], capture_output=True, text=True, check=False)
    if not done.stdout.startswith("<?xml"):  # absl exits non-zero after printing the help.
        raise TfcError(f"cannot list the flags of {command}: {done.stderr.strip()[-200:]}")
    root = ET.fromstring(done.stdout)
    # The command's own flags and those it defines through tools/common.py; not absl's.
    return {flag.findtext("name") for flag in root.iter("flag")
            if not (flag.findtext("file") or "").startswith("absl.")}


def _data_flags(step, known, recipe_input: str):
    """The compress-level flags a step's command accepts and the recipe did not set."""
    values = {"train_images": _TRAIN.value or common.DEFAULT_CALIBRATION, "labels": _LABELS.value,
              "calibration_images": _CALIBRATION.value or common.DEFAULT_CALIBRATION,
              "input_mean": _NORM["input_mean"].value, "input_std": _NORM["input_std"].value, "seed": _SEED.value,
              "teacher": recipe_input}
    out = [f"--{name}={value}" for name, value in values.items()
           if value is not None and name in known and name not in step.flags]
    if "progress" in known and "progress" not in step.flags and not _PROGRESS.value:
        out.append("--noprogress")
    return out


def _run_step(step, argv) -> None:
    from tfcompress.errors import TfcError
    print(f"\n=== step {step.index}: {step.command} {' '.join(argv)}", flush=True)
    process = subprocess.Popen([sys.executable, _tool(step.command)] + argv, stderr=subprocess.PIPE, text=True)
    last_error = ""
    for line in process.stderr:
        if line.startswith("error:") or "FATAL Flags parsing error" in line:
            last_error = line.strip()
        sys.stderr.write(line)
    if process.wait() != 0:
        raise TfcError(f"recipe step {step.index} ({step.command}) failed: "
                       f"{last_error or f'exit status {process.returncode}'}")


def main() -> None:
    import json
    from tfcompress import recipe
    from tfcompress.data.folders import read_image_set
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.compare import measure
    from tfcompress.io.atomic import atomic_dir, check_output

    if not _OUTPUT.value:
        raise TfcError("--output (a directory) is required")
    input_path = _INPUT.value or common.DEFAULT_MODEL
    if not os.path.exists(input_path):
        raise TfcError(f"model {input_path} does not exist")
    recipe_path = _RECIPE.value or DEFAULT_RECIPE
    check_output(_OUTPUT.value, [input_path, recipe_path, _TRAIN.value, _LABELS.value, _CALIBRATION.value,
                                 _EVAL.value], overwrite=_OVERWRITE.value, directory=True)
    try:
        with open(recipe_path, encoding="utf-8") as f:
            recipe_text = f.read()
    except OSError as e:
        raise TfcError(f"cannot read recipe {recipe_path}: {e.strerror}") from e
    steps = recipe.parse_recipe(recipe_text, recipe_path, recipe.kind_of(input_path))
    known = {c: _known_flags(c) for c in sorted({s.command for s in steps})}
    recipe.check_flags(steps, known, recipe_path)
    eval_dir = _EVAL.value or common.DEFAULT_EVAL
    images = read_image_set(eval_dir)

    with atomic_dir(_OUTPUT.value, overwrite=_OVERWRITE.value) as staging:
        current = os.path.abspath(input_path)
        outputs = []
        for step in steps:
            output = os.path.join(staging, step.output_name)
            argv = [f"--input={current}", f"--output={output}"] + step.argv() + _data_flags(
                step, known[step.command], os.path.abspath(input_path))
            if step.command == "distill":
                argv[0] = f"--student={current}"
            _run_step(step, argv)
            outputs.append(output)
            current = output
        rows = measure([input_path] + outputs, images, mean=_NORM["input_mean"].value, std=_NORM["input_std"].value,
                       latency_runs=_RUNS.value)
        float_raw = rows[0].tflite_bytes
        manifest = {
            "format": "tfcompress.manifest", "version": 1,
            "recipe": {"path": recipe_path, "sha256": recipe.file_sha256(recipe_path)},
            "input": {"path": input_path, "sha256": recipe.file_sha256(input_path)},
            "data": {"train_images": recipe.folder_fingerprint(_TRAIN.value or common.DEFAULT_CALIBRATION),
                     "calibration_images": recipe.folder_fingerprint(_CALIBRATION.value or common.DEFAULT_CALIBRATION),
                     "eval_images": recipe.folder_fingerprint(eval_dir),
                     "input_mean": _NORM["input_mean"].value, "input_std": _NORM["input_std"].value},
            "seed": _SEED.value,
            "versions": recipe.versions(),
            "steps": [],
        }
        for i, row in enumerate(rows):
            step = steps[i - 1] if i else None
            entry = {"index": i, "command": step.command if step else "input",
                     "flags": step.flags if step else {}, "output": os.path.basename(row.path) if step else input_path,
                     "sha256": recipe.file_sha256(row.path), **row.as_dict(),
                     "ratio_vs_float_tflite": float_raw / (row.packed_bytes if row.path.endswith(".tfc")
                                                           else row.tflite_bytes)}
            entry["latency_ratio"] = (row.latency_ms / rows[0].latency_ms) if row.latency_ms else None
            del entry["path"]
            manifest["steps"].append(entry)
        with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")

    print(f"\ncompress: {input_path} -> {_OUTPUT.value}/ ({recipe_path}, {len(steps)} steps)")
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
