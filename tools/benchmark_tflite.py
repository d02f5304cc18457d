"""benchmark_tflite: every TFLite mode against float, and our int8 against the plain converter's, in one run.

    python tools/benchmark_tflite.py
    python tools/benchmark_tflite.py --models=digits,digits_outliers --runs=100

Models: `digits` (the shipped model), `digits_outliers` (the same function
with one channel scaled x300 and compensated in the next conv, see
`zoo.digits_with_outliers`: the calibrator rows show what clipping does), and
`mobilenet_v2` (Keras MobileNetV2, alpha 0.35, seeded weights with batch-norm
statistics set from images).  Rows per model: float32, float16, dynamic, our
int8 (every calibrator for digits_outliers), the plain converter's int8
(`representative_dataset` over the same calibration images), uint8 and
int16x8.  Columns: size raw and gzip -9, top-1 agreement and the largest
output error against the TF float graph on held-out images, and LiteRT
latency (1 thread, batch 1, the default XNNPACK delegate) as a ratio to the
float32 flatbuffer; variants are interleaved run by run, in a fresh random
order each round, so machine noise hits all alike.  "Ours" rows are bias-corrected unless --nobias_correction.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["digits", "digits_outliers", "mobilenet_v2"],
                            "digits, digits_outliers and/or mobilenet_v2.")
_MOBILENET_SIZE = flags.DEFINE_integer("mobilenet_size", 224, "MobileNetV2 input height and width.")
_CALIBRATOR = flags.DEFINE_enum("calibrator", "percentile", ["minmax", "percentile", "kl", "mse"],
                                "Calibrator of the 'ours' int8/uint8 rows.")
_PERCENTILE = flags.DEFINE_float("percentile", 99.99, "Percentile kept by --calibrator=percentile.")
_BIAS_CORRECTION = flags.DEFINE_boolean("bias_correction", True, "Bias correction in the 'ours' int8/uint8 rows.")
_RUNS = flags.DEFINE_integer("runs", 100, "Timed runs per variant (after 5 warm-up runs).", lower_bound=50)
_EVAL_COUNT = flags.DEFINE_integer("eval_images", 300, "Held-out images for the agreement column.")


def _variants(name, model, prep, calibration):
    """(label, flatbuffer) rows for one model."""
    from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
    from tfcompress.calibrate.collect import collect_stats, full_range_tensors
    from tfcompress.data.images import iter_batches
    from tfcompress.export.tflite import TfliteConfig, convert_tflite, convert_tflite_default
    from tfcompress.quantize.bias_correction import correct_biases
    stats = collect_stats(model, calibration, prep, progress=False)
    ours = correct_biases(model, stats)[0] if _BIAS_CORRECTION.value else model
    full = full_range_tensors(model)
    def ranges(method):
        return compute_ranges(stats, CalibratorConfig(method=method, percentile=_PERCENTILE.value), full)
    dataset = lambda: ([b] for b in iter_batches(calibration, prep, 1))  # noqa: E731
    rows = [(mode, convert_tflite(model, TfliteConfig(quantize=mode)).flatbuffer)
            for mode in ("none", "float16", "dynamic")]
    methods = ["minmax", "percentile", "kl", "mse"] if name == "digits_outliers" else [_CALIBRATOR.value]
    for method in methods:
        rows.append((f"int8 ours ({method})",
                     convert_tflite(ours, TfliteConfig(quantize="int8"), ranges(method)).flatbuffer))
    rows.append(("int8 converter default", convert_tflite_default(model, dataset)))
    if name != "digits_outliers":
        rows.append((f"uint8 ours ({_CALIBRATOR.value})",
                     convert_tflite(ours, TfliteConfig(quantize="uint8"), ranges(_CALIBRATOR.value)).flatbuffer))
        rows.append(("int16x8", convert_tflite(model, TfliteConfig(quantize="int16x8"), dataset=dataset).flatbuffer))
    return rows


def main() -> None:
    import numpy as np
    from tfcompress.data.images import iter_batches, list_images
    from tfcompress.evaluate.artifacts import interleaved_latency
    from tfcompress.evaluate.measure import bytes_size
    from tfcompress.export.litert import LiteRTRunner
    from tfcompress.graph.runner import run_model

    heldout = list_images(common.DEFAULT_EVAL)[:_EVAL_COUNT.value]
    table = [["model", "variant", "raw bytes", "gzip -9 bytes", "top-1 agreement", "output MSE", "max abs error",
              "latency / float32"]]
    for name in _MODELS.value:
        model, prep, calibration = common.benchmark_model(name, _MOBILENET_SIZE.value)
        images = np.concatenate(list(iter_batches(heldout, prep, 32)))
        reference = run_model(model, images)
        variants = _variants(name, model, prep, calibration)
        medians = interleaved_latency([fb for _, fb in variants], images[:1], _RUNS.value)
        for (label, fb), med in zip(variants, medians):
            out = LiteRTRunner(fb, source=label).predict(images).reshape(len(images), -1)
            agree = float(np.mean(np.argmax(out, 1) == np.argmax(reference, 1)))
            diff = out.astype(np.float64) - reference
            table.append([name, "float32" if label == "none" else label, len(fb),
                          bytes_size(fb).gzip, f"{agree:.2%}",
                          f"{np.mean(diff ** 2):.3g}", f"{np.max(np.abs(diff)):.4g}",
                          f"{med / medians[0]:.2f}x"])
    print(f"\nbenchmark_tflite: LiteRT (XNNPACK), 1 thread, batch 1, {_RUNS.value} interleaved runs per variant; "
          f"agreement with the TF float graph on {len(heldout)} held-out images; latency ratio > 1 is slower "
          f"than float32; 'ours' rows {'with' if _BIAS_CORRECTION.value else 'without'} bias correction")
    common.print_table(table)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
