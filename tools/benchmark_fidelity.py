"""benchmark_fidelity: int8 fidelity on the whole zoo, ours beside the stock TFLite converter, in one run.

    python tools/benchmark_fidelity.py                  # every zoo model; about 3 minutes
    python tools/benchmark_fidelity.py --models=se_patches,boxes_digits

For each model of testdata/zoo (see tfcompress/evaluate/zoo.py), from the
same calibration images:
  - float: the float32 .tflite (the latency baseline);
  - converter int8: the stock TFLiteConverter's default full-integer
    quantization (Optimize.DEFAULT with a representative dataset of the
    calibration images, float input and output);
  - ours int8: `convert` with default flags (`tfc.convert`).
Each runs in LiteRT on the model's held-out images and is compared with the
float Keras model, head by head: top-1 agreement and output MSE for class
heads (on the probabilities), mean absolute error for regression heads.
Sizes are raw and gzip -9 bytes; latency is the median of interleaved LiteRT
runs (batch 1, --threads), as a ratio to the float .tflite.
"""

import os
import sys
import tempfile

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_MODELS = flags.DEFINE_list("models", None, "Zoo models (default: all).")
_RUNS = flags.DEFINE_integer("runs", 100, "Timed LiteRT runs per artifact.", lower_bound=10)
_THREADS = flags.DEFINE_integer("threads", 1, "LiteRT threads.", lower_bound=1)


def _stock_int8(model, calibration):
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    return converter.convert()


def _by_head(outputs, sizes):
    """LiteRT outputs (name -> [N, K]) matched to the Keras heads by their sizes (the zoo's heads differ)."""
    out = {}
    for head, size in sizes.items():
        match = [v.reshape(len(v), -1) for v in outputs.values() if v.reshape(len(v), -1).shape[1] == size]
        if len(match) != 1:
            from tfcompress.errors import TfcError
            raise TfcError(f"cannot match head {head} ({size} values) to the .tflite outputs")
        out[head] = match[0]
    return out


def measure(name):
    """Rows for one zoo model."""
    import numpy as np
    import tfcompress as tfc
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    from tfcompress.evaluate.artifacts import interleaved_latency
    from tfcompress.evaluate.measure import bytes_size
    from tfcompress.evaluate.zoo import ZOO
    from tfcompress.export.litert import LiteRTRunner
    from tfcompress.export.tflite import keras_float_flatbuffer
    from tfcompress.io.keras_models import load_keras
    entry = ZOO[name]
    model = load_keras(entry.path)
    _, h, w, c = model.input_shape
    prep = Preprocessing(height=h, width=w, channels=c, mean=entry.mean, std=entry.std)
    calibration = FolderSource(entry.calibration).array(prep)
    held = FolderSource(entry.heldout).array(prep)
    reference = model.predict(held, verbose=0)
    reference = dict(zip(entry.heads, reference if isinstance(reference, list) else [reference]))
    sizes = {head: int(np.prod(v.shape[1:])) for head, v in reference.items()}
    with tempfile.TemporaryDirectory() as tmp:
        ours = tfc.convert(entry.path, os.path.join(tmp, "ours.tflite"), images=entry.calibration,
                           options=tfc.CalibrationOptions(input_mean=entry.mean, input_std=entry.std)).flatbuffer
    artifacts = {"float": keras_float_flatbuffer(model), "converter int8": _stock_int8(model, calibration),
                 "ours int8": ours}
    latency = dict(zip(artifacts, interleaved_latency(list(artifacts.values()), held[:1], _RUNS.value,
                                                      threads=_THREADS.value)))
    rows = []
    for label, flatbuffer in artifacts.items():
        outputs = _by_head(LiteRTRunner(flatbuffer, threads=_THREADS.value).outputs_by_name(held), sizes)
        cells = []
        for head, kind in entry.heads.items():
            ref, got = reference[head].reshape(len(held), -1), outputs[head]
            if kind == "class":
                cells.append(f"{head}: top-1 {np.mean(ref.argmax(1) == got.argmax(1)):.2%}, "
                             f"MSE {np.mean((ref - got) ** 2):.3g}")
            else:
                cells.append(f"{head}: MAE {np.mean(np.abs(ref - got)):.4f}")
        size = bytes_size(flatbuffer)
        rows.append([name, label, "; ".join(cells), size.raw, size.gzip,
                     f"{latency[label] / latency['float']:.2f}x"])
    return rows


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import ZOO
    names = _MODELS.value or list(ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        raise TfcError(f"unknown zoo model {unknown[0]!r} (choose from {', '.join(ZOO)})")
    rows = [["model", "artifact", "against the float Keras model, per head", "raw bytes", "gzip -9 bytes",
             "latency vs float"]]
    for name in names:
        rows += measure(name)
    common.print_table(rows)
    print(f"held-out images of each model; LiteRT latency: median of {_RUNS.value} interleaved runs, batch 1, "
          f"{_THREADS.value} thread(s)")


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
