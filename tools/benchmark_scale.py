"""Scale benchmark: wall time and peak RSS of every heavy step beside the stock converter, in one run.

    .venv/bin/python tools/benchmark_scale.py                 # VGG16 at 256x256, 60 and 120 images
    .venv/bin/python tools/benchmark_scale.py --models=zoo,VGG16,ResNet50,EfficientNetB0 --images=60
    .venv/bin/python tools/benchmark_scale.py --models=VGG16 --steps=calibrate,convert   # a subset of steps
    .venv/bin/python tools/benchmark_scale.py --models= --pass_copies=1,4,16,64   # graph passes only, ~10 s

Every measurement is a fresh process (its peak RSS from wait4), all in one run:
  - the stock TFLiteConverter's default int8 (Optimize.DEFAULT, representative dataset of the images);
  - `tfcompress calibrate` on N images, then on 2N (peak memory must not grow with the image count);
  - `tfcompress quantize_graph` (reference kernels) and `convert --quantize=int8` on N images;
  - `tfcompress prune --method=thinet --ratio=0.5` (one distillation epoch) and `drop_blocks --drop_blocks=1`
    on the N images (a model without residual blocks reports that instead of a cost).
Models: the trained zoo (`zoo` for all six, or a zoo name), and keras.applications backbones with seeded
weights (only cost is measured), a global-average pool and a 10-way softmax head: VGG16 at 256x256, ResNet50
and EfficientNetB0 at 224x224, fed the shipped patches resized to the model.  Each row gives the cost per
million parameters and per GMAC (multiply-accumulates of one image, `keras.cost.count`) and image, so
growth with model size shows.

First, the float-graph passes (`graph.passes.optimize`) on 1x, 4x, 16x and 64x stacked copies of an
inverted-residual block (`zoo.stacked_blocks`): nodes, time, time per node and pattern-match calls per
node, which stay flat when a pass is linear in graph size.
"""

import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODELS = flags.DEFINE_list("models", ["VGG16"], "keras.applications backbones (VGG16, ResNet50, EfficientNetB0), "
                            "zoo models by name, or zoo for all of them.")
STEPS = ("stock", "calibrate", "calibrate_2n", "quantize_graph", "convert", "prune_thinet", "drop_blocks")
_STEPS = flags.DEFINE_list("steps", list(STEPS), f"Steps to measure, of {', '.join(STEPS)} (stock is the anchor and "
                           "always runs).")
_IMAGES = flags.DEFINE_integer("images", 60, "Calibration images N (calibration is also run on 2N).", lower_bound=1)
_PASS_COPIES = flags.DEFINE_list("pass_copies", ["1", "4", "16", "64"], "Stacked block copies for the graph-pass "
                                 "table (empty: skip it).")
SIZES = {"VGG16": 256, "ResNet50": 224, "EfficientNetB0": 224}
NORMS = {"VGG16": ((123.68, 116.779, 103.939), 1.0, "bgr"), "ResNet50": ((123.68, 116.779, 103.939), 1.0, "bgr"),
         "EfficientNetB0": ((0.0,), 1.0, "rgb")}

_BUILD = """
import sys, keras
name, size, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keras.utils.set_random_seed(0)
base = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(size, size, 3))
out = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(base.output))
model = keras.Model(base.input, out)
model.save(path)
"""

_COUNT = """
import sys, keras
from tfcompress.keras.cost import count
params, macs = count(keras.saving.load_model(sys.argv[1], safe_mode=True, compile=False))
print(params, macs)
"""

_STOCK = """
import sys, numpy as np, tensorflow as tf, keras
from tfcompress.data.images import Preprocessing, iter_batches, list_images
path, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
mean = tuple(float(v) for v in sys.argv[4].split(","))
model = keras.saving.load_model(path, safe_mode=True, compile=False)
prep = Preprocessing.for_input(tuple(model.inputs[0].shape), mean=mean if len(mean) > 1 else mean[0],
                               std=float(sys.argv[5]), channel_order=sys.argv[6])
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([b] for b in iter_batches(list_images(folder), prep, batch_size=1))
open(out, "wb").write(converter.convert())
"""


def run_child(argv):
    """Runs argv and returns (wall seconds, peak RSS MB) measured by wait4 on the child itself.

    Raises:
      TfcError: the child failed; its last line is the message.
    """
    from tfcompress.errors import TfcError
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    start = time.monotonic()
    with open(os.devnull, "w") as null, tempfile.TemporaryFile("w+") as err:
        pid = subprocess.Popen(argv, stdout=null, stderr=err, env=env).pid
        _, status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - start
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            lines = err.read().strip().splitlines()
            raise TfcError(f"{os.path.basename(argv[1])} failed: {lines[-1] if lines else status}")
    return wall, usage.ru_maxrss / 1024.0


def pass_rows():
    """The graph-pass table: passes timed in this process on stacked blocks, best of 3."""
    from tfcompress.evaluate.zoo import stacked_blocks
    from tfcompress.graph.passes import optimize
    from tfcompress.graph.rewriters import base
    from tfcompress.io.loaders import freeze_keras_model
    rows = [["block copies", "nodes", "rewrites", "optimize ms", "µs per node", "match calls per node"]]
    for copies in [int(c) for c in _PASS_COPIES.value]:
        frozen = freeze_keras_model(stacked_blocks(copies))
        times = []
        for _ in range(3):
            base.MATCH_CALLS["count"] = 0
            start = time.perf_counter()
            _, results = optimize(frozen)
            times.append(time.perf_counter() - start)
        nodes = len(frozen.graph_def.node)
        rows.append([copies, nodes, sum(r.rewrites for r in results), f"{1e3 * min(times):.0f}",
                     f"{1e6 * min(times) / nodes:.0f}", f"{base.MATCH_CALLS['count'] / nodes:.2f}"])
    return rows


def _models(names):
    """[(name, keras.applications size or None, zoo entry or None)] for --models."""
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import ZOO
    chosen = []
    for name in names:
        if name == "zoo":
            chosen += [(n, None, entry) for n, entry in ZOO.items()]
        elif name in ZOO:
            chosen.append((name, None, ZOO[name]))
        elif name in SIZES:
            chosen.append((name, SIZES[name], None))
        else:
            raise TfcError(f"unknown model {name!r} (choose from zoo, {', '.join(ZOO)}, {', '.join(SIZES)})")
    return chosen


def _image_folders(tmp: str, images, counts):
    folders = {}
    for count in counts:
        folder = os.path.join(tmp, f"images{count}")
        os.mkdir(folder)
        for i, path in enumerate(images[:count]):
            os.symlink(path, os.path.join(folder, f"{i:04d}{os.path.splitext(path)[1]}"))
        folders[count] = folder
    return folders


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.data.images import list_images
    if _PASS_COPIES.value:
        print("graph passes on stacked inverted-residual blocks (this process, best of 3)")
        common.print_table(pass_rows())
    if not _MODELS.value:
        return
    unknown = sorted(set(_STEPS.value) - set(STEPS))
    if unknown:
        raise TfcError(f"--steps: unknown {', '.join(unknown)} (choose from {', '.join(STEPS)})")
    python = sys.executable
    tool = {name: [python, os.path.join(ROOT, "tools", name + ".py")]
            for name in ("calibrate", "convert", "quantize_graph", "prune", "drop_blocks")}
    n = _IMAGES.value
    rows = [["model", "params", "GMACs", "step", "images", "wall s", "peak RSS MB", "wall vs stock", "RSS vs stock",
             "ms per MParam·image", "ms per GMAC·image", "note"]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        patch_folders = None
        for name, size, entry in _models(_MODELS.value):
            work = os.path.join(tmp, name)
            os.mkdir(work)
            if entry is None:
                if patch_folders is None:
                    images = list_images(os.path.join(ROOT, "testdata", "images", "patches"))
                    if 2 * n > len(images):
                        raise TfcError(f"--images={n}: the shipped patches hold {len(images)} images, fewer than 2N")
                    patch_folders = _image_folders(tmp, images, (n, 2 * n))
                folders, (mean, std, order) = patch_folders, NORMS[name]
                path = os.path.join(work, f"{name}.keras")
                subprocess.run([python, "-c", _BUILD, name, str(size), path], check=True, env=env,
                               capture_output=True)
            else:
                images = list_images(entry.calibration)
                folders = _image_folders(work, images, sorted({min(n, len(images)), min(2 * n, len(images))}))
                folders.setdefault(2 * n, folders[max(folders)])
                folders.setdefault(n, folders[min(folders)])
                path, mean, std, order = entry.path, (entry.mean,), entry.std, "rgb"
            params, macs = (int(v) for v in subprocess.run([python, "-c", _COUNT, path], check=True, text=True,
                                                           capture_output=True, env=env).stdout.split()[-2:])
            norm = [f"--input_mean={','.join(str(v) for v in mean)}", f"--input_std={std}",
                    f"--channel_order={order}"]
            stock = run_child([python, "-c", _STOCK, path, folders[n], os.path.join(work, "stock.tflite"),
                               ",".join(str(v) for v in mean), str(std), order])
            steps = {
                "calibrate": (n, tool["calibrate"] + [f"--input={path}", f"--calibration_images={folders[n]}",
                                                      f"--calibration_cache={work}/n.json", "--recalibrate"] + norm),
                "calibrate_2n": (len(os.listdir(folders[2 * n])), tool["calibrate"] + [
                    f"--input={path}", f"--calibration_images={folders[2 * n]}",
                    f"--calibration_cache={work}/2n.json", "--recalibrate"] + norm),
                "quantize_graph": (n, tool["quantize_graph"] + [
                    f"--input={path}", f"--calibration_images={folders[n]}", f"--output={work}/eightbit"] + norm),
                "convert": (n, tool["convert"] + [f"--input={path}", f"--calibration_images={folders[n]}",
                                                  f"--output={work}/int8.tflite", "--overwrite"] + norm),
                "prune_thinet": (n, tool["prune"] + [
                    f"--input={path}", "--method=thinet", "--ratio=0.5", f"--train_images={folders[n]}",
                    "--epochs=1", f"--eval_images={folders[n]}", f"--output={work}/thin.keras", "--noprogress"] + norm),
                "drop_blocks": (n, tool["drop_blocks"] + [
                    f"--input={path}", "--drop_blocks=1", f"--train_images={folders[n]}", "--epochs=1",
                    f"--eval_images={folders[n]}", f"--output={work}/dropped.keras", "--noprogress"] + norm),
            }
            measured = [("stock converter int8", n, stock, "")]
            for step in STEPS[1:]:
                if step not in _STEPS.value:
                    continue
                count, argv = steps[step]
                try:
                    measured.append((step.replace("_", " "), count, run_child(argv), ""))
                except TfcError as e:
                    measured.append((step.replace("_", " "), count, None, str(e).split("error: ")[-1]))
            for step, count, cost, note in measured:
                head = [name, f"{params / 1e6:.2f}M", f"{macs / 1e9:.3f}", step, count]
                if cost is None:
                    rows.append(head + ["-"] * 6 + [note])
                    continue
                wall, rss = cost
                rows.append(head + [f"{wall:.1f}", f"{rss:.0f}", f"{wall / stock[0]:.2f}×", f"{rss / stock[1]:.2f}×",
                                    f"{1e3 * wall / (params / 1e6) / count:.1f}",
                                    f"{1e3 * wall / (macs / 1e9) / count:.1f}", note])
    print(f"\nscale benchmark ({os.cpu_count()} cores; each step a fresh process, peak RSS from wait4)")
    common.print_table(rows)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
