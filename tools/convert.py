"""convert: SavedModel / .keras / .h5 / frozen .pb -> TFLite flatbuffer, calibrated from our cache.

    python tools/convert.py --input=net.keras --output=net_int8.tflite --quantize=int8 \
        --calibration_images=data/sample --calibration_cache=out/net.ranges.json \
        --input_mean=127.5 --input_std=127.5

int8 and uint8 take their activation ranges from the same calibration cache
as quantize_graph (any calibrator), so a model calibrated once converts to
every mode without reading images again.  With no --input it converts the
model shipped in testdata/.
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

_MODEL = common.define_model_flags()
_CAL = common.define_calibration_flags()
_OUTPUT = flags.DEFINE_string("output", None, "Output .tflite file.")
_QUANTIZE = flags.DEFINE_enum("quantize", "int8", ["none", "float16", "dynamic", "int8", "uint8", "int16x8"],
                              "none | float16 | dynamic | int8 | uint8 (DSPs) | int16x8.")
_IO = flags.DEFINE_enum("io", None, ["float", "uint8", "int8"], "Input/output type (default: uint8 for int8 "
                        "and uint8, which the Task Library and MediaPipe accept; float for the float modes).")
_NAME = flags.DEFINE_string("metadata_name", None, "Model name in the TFLite Metadata (default: the file name).")
_DESCRIPTION = flags.DEFINE_string("metadata_description", None, "Model description in the TFLite Metadata.")
_VERSION = flags.DEFINE_string("metadata_version", "1", "Model version in the TFLite Metadata.")
_PER_TENSOR = flags.DEFINE_boolean("per_tensor", False, "Per-tensor weights (default per-channel).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")
_OVERWRITE = common.define_overwrite_flag()
_TARGET = flags.DEFINE_string("target", "generic", "arm-cpu | hexagon-dsp | edgetpu | gpu | generic: print a "
                              "preflight of ops and constraints the target's delegate does not meet.")
_STRICT = flags.DEFINE_boolean("strict", False, "Fail (write nothing) if the preflight finds a problem.")
_FLOAT_LAYERS = flags.DEFINE_list("float_layers", [], "int8/uint8: layers kept in float (names from "
                                  "--layer_report, TF op names or TFLite tensor names).")
_MIN_AGREEMENT = flags.DEFINE_float("min_agreement", None, "int8/uint8: keep the worst layers float until top-1 "
                                    "agreement with the float model reaches this fraction (e.g. 0.99).")
_AGREEMENT_IMAGES = flags.DEFINE_string("agreement_images", None, "Images for --layer_report and "
                                        "--min_agreement (default: the calibration images).")
_LAYER_REPORT = flags.DEFINE_integer("layer_report", 0, "int8/uint8: print the N layers that add the most "
                                     "quantization error (0: none; -1: all).")
_BIAS_CORRECTION = flags.DEFINE_enum("bias_correction", "empirical", ["empirical", "analytic", "none"],
                                     "int8/uint8: empirical (each layer's mean output error, measured on the "
                                     "calibration images, absorbed in its bias), analytic (the expected "
                                     "weight-rounding shift, from the cache's channel means) or none.")
_ROUNDING = flags.DEFINE_enum("rounding", "nearest", ["nearest", "adaround"],
                               "int8/uint8 weights: nearest, or adaround (each layer's up-or-down rounding "
                               "learned from the calibration images' layer outputs; Nagel et al. 2020).")
_VECTOR_RANGES = flags.DEFINE_enum("vector_ranges", "leave_one_out", ["leave_one_out", "calibrated"],
                                   "int8/uint8 with min/max ranges: leave_one_out (each per-image vector "
                                   "tensor's range, a pool's or dense layer's output, widened by the factor "
                                   "with the least leave-one-image-out error) or calibrated (as calibrated).")
_RESIDUAL_RANGES = flags.DEFINE_enum("residual_ranges", "sum", ["sum", "calibrated"],
                                     "int8/uint8 with min/max ranges: sum (a residual Add's operand that "
                                     "nothing else reads takes the union of its range and the sum's) or "
                                     "calibrated (as calibrated).")
_LABELS = flags.DEFINE_string("labels", None, "Labels file (one per line, output order) to embed as metadata.")
_LABELS_FROM = flags.DEFINE_string("labels_from", None, "Labelled folder DIR/<label>/ whose sorted class names "
                                   "are embedded as labels.")


def main() -> None:
    from tfcompress.api.graph_jobs import ModelCard, convert
    from tfcompress.evaluate import measure

    input_path, images, _ = common.default_inputs(_MODEL, _CAL)
    result = convert(input_path, _OUTPUT.value, quantize=_QUANTIZE.value, images=images,
                     cache=_CAL["calibration_cache"].value, recalibrate=_CAL["recalibrate"].value,
                     per_channel=not _PER_TENSOR.value, bias_correction=_BIAS_CORRECTION.value,
                     rounding=_ROUNDING.value, vector_ranges=_VECTOR_RANGES.value,
                     residual_ranges=_RESIDUAL_RANGES.value, labels=_LABELS.value,
                     labels_from=_LABELS_FROM.value, target=_TARGET.value,
                     strict=_STRICT.value, float_layers=_FLOAT_LAYERS.value, min_agreement=_MIN_AGREEMENT.value,
                     agreement_images=_AGREEMENT_IMAGES.value, layer_report=_LAYER_REPORT.value,
                     io=_IO.value, card=ModelCard(name=_NAME.value, description=_DESCRIPTION.value,
                                                  version=_VERSION.value),
                     options=common.calibration_options(_CAL), load=common.load_options(_MODEL),
                     overwrite=_OVERWRITE.value, progress=_PROGRESS.value)
    if result.auto:
        print(f"\ncalibrator=auto: int8 outputs against float on {result.agreement_count} images")
        common.print_table([["calibrator", "top-1 agreement", "output MSE", "chosen"]] + [
            [c.calibrator.method + (f" {c.calibrator.percentile:g}" if c.calibrator.method == "percentile" else ""),
             f"{100 * c.agreement:.2f}%", f"{c.output_mse:.3g}", "*" if c is result.auto_best else ""]
            for c in result.auto])
    if result.layer_errors:
        print(f"\nper-layer quantization error on {result.agreement_count} images (worst first; 'added' = "
              "relative error this layer adds over its inputs):")
        common.print_table([["layer", "op", "rmse/scale", "relative", "added"]] + [
            [r.layer, r.op, f"{r.steps:.3f}", f"{r.relative:.4f}", f"{r.added:+.4f}"] for r in result.layer_errors])
    print("\n" + "\n".join(result.preflight.lines()))
    size = measure.path_size(_OUTPUT.value)
    print(f"\nconvert: {input_path} -> {_OUTPUT.value} (quantize={result.quantize}, {result.io} I/O, "
          f"weights {'per-channel' if result.per_channel else 'per-tensor'})")
    print(f"calibration: {result.calibration}" + (f"; {result.ranges_applied} activation ranges from the cache "
                                                   f"({result.calibrator})" if result.calibrator else ""))
    for note in result.notes:
        print(note)
    mean, std = (",".join(f"{v:g}" for v in values) for values in (result.mean, result.std))
    print(f"TFLite Metadata: input mean {mean}, std {std}" + (f", {len(result.labels)} labels (labels.txt)"
                                                              if result.labels else ""))
    common.print_table([["size", "raw bytes", "gzip -9 bytes"], ["output", size.raw, size.gzip]])


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
