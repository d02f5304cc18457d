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

from absl import flags  # noqa: E402

_MODEL = common.define_model_flags()
_CAL = common.define_calibration_flags()
_OUTPUT = flags.DEFINE_string("output", None, "Output .tflite file.")
_QUANTIZE = flags.DEFINE_enum("quantize", "int8", ["none", "float16", "dynamic", "int8", "uint8", "int16x8"],
                              "none | float16 | dynamic | int8 (int8 I/O) | uint8 (uint8 I/O, DSPs) | int16x8.")
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
_BIAS_CORRECTION = flags.DEFINE_boolean("bias_correction", True, "int8/uint8: subtract each layer's expected "
                                        "weight-rounding shift from its bias (from the cache's channel means).")
_LABELS = flags.DEFINE_string("labels", None, "Labels file (one per line, output order) to embed as metadata.")
_LABELS_FROM = flags.DEFINE_string("labels_from", None, "Labelled folder DIR/<label>/ whose sorted class names "
                                   "are embedded as labels.")


def _labels(output_size):
    from tfcompress.errors import TfcError
    from tfcompress.data.folders import check_output_size, read_image_set, read_labels_file
    if _LABELS.value and _LABELS_FROM.value:
        raise TfcError("give --labels or --labels_from, not both")
    if _LABELS.value:
        names = read_labels_file(_LABELS.value)
        if len(names) != output_size:
            raise TfcError(f"labels file {_LABELS.value} names {len(names)} classes but the model outputs "
                           f"{output_size} values")
        return names
    if _LABELS_FROM.value:
        images = read_image_set(_LABELS_FROM.value, require_labels=True)
        check_output_size(images, output_size, f"labelled folder {_LABELS_FROM.value}")
        return images.class_names
    return None


def _agreement_set(float_model, prep, images_dir):
    """(float NHWC images, float-graph outputs) for --calibrator=auto, the fallback search and the report."""
    import numpy as np
    from tfcompress.data.images import iter_batches, list_images
    from tfcompress.errors import TfcError
    from tfcompress.graph.runner import run_model
    folder = _AGREEMENT_IMAGES.value or images_dir
    if not folder:
        raise TfcError("--calibrator=auto, --min_agreement and --layer_report need --agreement_images or "
                       "--calibration_images")
    x = np.concatenate(list(iter_batches(list_images(folder), prep, 32)))
    return x, run_model(float_model, x)


def main() -> None:
    from tfcompress.calibrate.calibrators import CalibratorConfig
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.calibrate.run import calibrate
    from tfcompress.errors import TfcError
    from tfcompress.evaluate import measure
    from tfcompress.export import autocal, fallback
    from tfcompress.export.flatbuffer import with_metadata
    from tfcompress.export.targets import get_target, preflight
    from tfcompress.export.tflite import (TfliteConfig, calibrated_flatbuffer, convert_qat, convert_tflite, is_qat,
                                          quantize_calibrated)
    from tfcompress.graph.passes import optimize
    from tfcompress.io.atomic import write_bytes
    from tfcompress.quantize.bias_correction import correct_biases

    input_path, images, _ = common.resolve_paths(
        _MODEL, _CAL, _OUTPUT.value, _OVERWRITE.value, directory=False,
        extra_inputs=[_LABELS.value, _LABELS_FROM.value, _AGREEMENT_IMAGES.value])
    config = TfliteConfig(quantize=_QUANTIZE.value, per_channel=not _PER_TENSOR.value)
    auto = _CAL["calibrator"].value == "auto"
    calibrator = CalibratorConfig() if auto else common.calibrator_from_flags(_CAL)
    get_target(_TARGET.value)
    wants_layers = bool(_FLOAT_LAYERS.value or _MIN_AGREEMENT.value is not None or _LAYER_REPORT.value)
    if wants_layers and not config.needs_ranges:
        raise TfcError("--float_layers, --min_agreement and --layer_report apply to --quantize=int8 and uint8 only")
    if _MIN_AGREEMENT.value is not None and not 0.0 < _MIN_AGREEMENT.value <= 1.0:
        raise TfcError(f"--min_agreement must be in (0, 1], got {_MIN_AGREEMENT.value}")

    float_model, _ = optimize(common.load_model_from_flags(_MODEL))
    qat = is_qat(float_model)
    if qat and (config.quantize != "int8" or wants_layers or auto):
        raise TfcError("a quantization-aware-trained model converts with --quantize=int8 only, without "
                       "--calibrator=auto or float layers: its ranges come from training")
    mean, std = _CAL["input_mean"].value, _CAL["input_std"].value
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=mean, std=std)
    memo = []

    def agreement_set():
        if not memo:
            memo.append(_agreement_set(float_model, prep, images))
        return memo[0]

    labels = _labels(int(float_model.outputs[0].shape[-1]) if float_model.outputs[0].shape else -1)
    # What is converted: the float model, or (int8/uint8) the float model with corrected biases.
    # Agreement is always measured against the float model itself.
    export_model = float_model
    ranges, dataset, cal_note = None, None, "not needed"
    if qat:
        cal_note = "quantization-aware model: ranges learned in training, no image read"
    elif config.needs_ranges:
        result = calibrate(float_model, prep=prep, calibrator=calibrator, images_dir=images,
                           cache_path=_CAL["calibration_cache"].value, recalibrate=_CAL["recalibrate"].value,
                           batch_size=_CAL["batch_size"].value, progress=_PROGRESS.value)
        cal_note = "reused cache, 0 images read" if result.reused else f"{result.images_read} images read"
        if _BIAS_CORRECTION.value:
            export_model, corrected = correct_biases(float_model, result.cache.stats, config.per_channel)
            cal_note += f"; bias correction on {corrected} layers"
        if auto:
            x, reference = agreement_set()
            best, tried = autocal.choose_calibrator(export_model, result.cache.ranges, config, x, reference,
                                                    autocal.candidates(_CAL["percentile"].value))
            print(f"\ncalibrator=auto: int8 outputs against float on {len(x)} images")
            common.print_table([["calibrator", "top-1 agreement", "output MSE", "chosen"]] + [
                [c.calibrator.method + (f" {c.calibrator.percentile:g}" if c.calibrator.method == "percentile"
                                        else ""), f"{100 * c.agreement:.2f}%", f"{c.output_mse:.3g}",
                 "*" if c is best else ""] for c in tried])
            calibrator = best.calibrator
        ranges = result.cache.ranges(calibrator)
    elif config.quantize == "int16x8":
        if not images:
            raise TfcError("--quantize=int16x8 needs --calibration_images (its quantizer runs the images itself)")
        paths = list_images(images)
        dataset = lambda: ([b] for b in iter_batches(paths, prep, 1))  # noqa: E731
        cal_note = f"{len(paths)} images run by the converter's int16x8 quantizer"

    notes = []
    if wants_layers:
        calibrated, applied = calibrated_flatbuffer(export_model, ranges, config.per_channel)
        flatbuffer = quantize_calibrated(calibrated, config.quantize, config.per_channel)
        all_int8_size = len(flatbuffer)
        requested = fallback.resolve_float_layers(_FLOAT_LAYERS.value, flatbuffer)
        if _LAYER_REPORT.value or _MIN_AGREEMENT.value is not None:
            x, reference = agreement_set()
            float_fb = convert_tflite(float_model, TfliteConfig(quantize="none")).flatbuffer
            ranking = fallback.layer_errors(float_fb, flatbuffer, x)
            if _LAYER_REPORT.value:
                shown = ranking if _LAYER_REPORT.value < 0 else ranking[:_LAYER_REPORT.value]
                print(f"\nper-layer quantization error on {len(x)} images (worst first; 'added' = relative "
                      "error this layer adds over its inputs):")
                common.print_table([["layer", "op", "rmse/scale", "relative", "added"]] + [
                    [r.layer, r.op, f"{r.steps:.3f}", f"{r.relative:.4f}", f"{r.added:+.4f}"] for r in shown])
        if _MIN_AGREEMENT.value is not None:
            found = fallback.search_min_agreement(calibrated, config.quantize, config.per_channel, ranking, x,
                                                  reference, _MIN_AGREEMENT.value, start=requested)
            flatbuffer = found.flatbuffer
            notes.append(f"min_agreement {_MIN_AGREEMENT.value:g}: top-1 agreement {100 * found.agreement:.2f}% on "
                         f"{len(x)} images with {len(found.float_layers)} layer(s) float"
                         + ("" if found.reached else " (target NOT reached: every ranked layer tried)"))
        elif requested:
            flatbuffer = quantize_calibrated(calibrated, config.quantize, config.per_channel, requested)
        kept = fallback.float_outputs(flatbuffer)
        if kept:
            notes.append(f"float layers: {', '.join(fallback.layer_label(k) for k in kept)}; size cost "
                         f"{len(flatbuffer) - all_int8_size:+d} bytes over all-int8 ({all_int8_size} bytes)")
        missing = [r for r in requested if r not in kept]
        if missing:
            notes.append("kept int8 by the quantizer (a neighbouring op requires a quantized tensor): "
                         + ", ".join(fallback.layer_label(r) for r in missing))
    elif qat:
        flatbuffer, applied = convert_qat(export_model), []
    else:
        converted = convert_tflite(export_model, config, ranges, dataset)
        flatbuffer, applied = converted.flatbuffer, converted.ranges_applied
    flatbuffer = with_metadata(flatbuffer, mean=[mean], std=[std], labels=labels)

    check = preflight(flatbuffer, _TARGET.value)
    print("\n" + "\n".join(check.lines()))
    if _STRICT.value and not check.ok:
        raise TfcError(f"--strict: the {_TARGET.value} preflight found problems; {_OUTPUT.value} not written")
    write_bytes(_OUTPUT.value, flatbuffer, overwrite=_OVERWRITE.value)

    size = measure.path_size(_OUTPUT.value)
    print(f"\nconvert: {input_path} -> {_OUTPUT.value} (quantize={config.quantize}, "
          f"weights {'per-channel' if config.per_channel else 'per-tensor'})")
    print(f"calibration: {cal_note}" + (f"; {len(applied)} activation ranges from the cache "
                                         f"({calibrator.method})" if config.needs_ranges and not qat else ""))
    for note in notes:
        print(note)
    print(f"metadata: input mean {mean:g}, std {std:g}" + (f", {len(labels)} labels" if labels else ""))
    common.print_table([["size", "raw bytes", "gzip -9 bytes"], ["output", size.raw, size.gzip]])


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
