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


def main() -> None:
    from tfcompress.calibrate.images import Preprocessing, iter_batches, list_images
    from tfcompress.calibrate.run import calibrate
    from tfcompress.errors import TfcError
    from tfcompress.evaluate import measure
    from tfcompress.export.tflite import TfliteConfig, convert_tflite
    from tfcompress.graph.passes import optimize
    from tfcompress.io.atomic import write_bytes

    input_path, images, _ = common.resolve_paths(_MODEL, _CAL, _OUTPUT.value)
    config = TfliteConfig(quantize=_QUANTIZE.value, per_channel=not _PER_TENSOR.value)
    calibrator = common.calibrator_from_flags(_CAL)

    float_model, _ = optimize(common.load_model_from_flags(_MODEL))
    prep = Preprocessing.for_input(float_model.image_input().shape, mean=_CAL["input_mean"].value,
                                   std=_CAL["input_std"].value)
    ranges, dataset, cal_note = None, None, "not needed"
    if config.needs_ranges:
        result = calibrate(float_model, prep=prep, calibrator=calibrator, images_dir=images,
                           cache_path=_CAL["calibration_cache"].value, recalibrate=_CAL["recalibrate"].value,
                           batch_size=_CAL["batch_size"].value, progress=_PROGRESS.value)
        ranges = result.cache.ranges(calibrator)
        cal_note = "reused cache, 0 images read" if result.reused else f"{result.images_read} images read"
    elif config.quantize == "int16x8":
        if not images:
            raise TfcError("--quantize=int16x8 needs --calibration_images (its quantizer runs the images itself)")
        paths = list_images(images)
        dataset = lambda: ([b] for b in iter_batches(paths, prep, 1))  # noqa: E731
        cal_note = f"{len(paths)} images run by the converter's int16x8 quantizer"
    result = convert_tflite(float_model, config, ranges, dataset)
    write_bytes(_OUTPUT.value, result.flatbuffer)

    size = measure.path_size(_OUTPUT.value)
    print(f"\nconvert: {input_path} -> {_OUTPUT.value} (quantize={config.quantize}, "
          f"weights {'per-channel' if config.per_channel else 'per-tensor'})")
    print(f"calibration: {cal_note}" + (f"; {len(result.ranges_applied)} activation ranges from the cache "
                                         f"({calibrator.method})" if config.needs_ranges else ""))
    common.print_table([["size", "raw bytes", "gzip -9 bytes"], ["output", size.raw, size.gzip]])


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
