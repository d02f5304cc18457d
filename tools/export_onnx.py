"""export_onnx: model -> ONNX (tf2onnx), then parity with onnxruntime on sample images.

    python tools/export_onnx.py --input=net.keras --output=net.onnx --opset=17 --images=data/sample

Prints the largest absolute difference between TF's float graph and
onnxruntime over the images, and fails if it exceeds --max_abs_diff (the
ONNX file is then not written).  With no --input it exports the shipped model.
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
_OUTPUT = flags.DEFINE_string("output", None, "Output .onnx file.")
_OVERWRITE = common.define_overwrite_flag()
_OPSET = flags.DEFINE_integer("opset", 17, "ONNX opset.")
_IMAGES = flags.DEFINE_string("images", None, "Sample images for the parity check (default: the shipped "
                              "calibration images when exporting the shipped model).")
_COUNT = flags.DEFINE_integer("count", 32, "How many sample images to compare.", lower_bound=1)
_NORM = common.define_normalization_flags(0.0, 255.0)
_MAX_DIFF = flags.DEFINE_float("max_abs_diff", 1e-4, "Largest accepted |TF - onnxruntime| on any output.")


def main() -> None:
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.errors import TfcError
    from tfcompress.export.onnx import check_parity, export_onnx
    from tfcompress.graph.passes import optimize
    from tfcompress.io.atomic import check_output, write_bytes

    input_path = _MODEL["input"].value or common.DEFAULT_MODEL
    images = _IMAGES.value or (common.DEFAULT_CALIBRATION if _MODEL["input"].value is None else None)
    check_output(_OUTPUT.value, [input_path, images], overwrite=_OVERWRITE.value, directory=False)
    if not images:
        raise TfcError("--images is required for the onnxruntime parity check")
    model, _ = optimize(common.load_model_from_flags(_MODEL))
    prep = Preprocessing.for_input(model.image_input().shape, mean=_NORM["input_mean"].value,
                                   std=_NORM["input_std"].value)
    onnx_bytes = export_onnx(model, _OPSET.value)
    paths = list_images(images)[:_COUNT.value]
    parity = check_parity(model, onnx_bytes, list(iter_batches(paths, prep, 8)))
    print(f"export_onnx: {input_path} -> {_OUTPUT.value} (opset {_OPSET.value}, {len(onnx_bytes)} bytes)")
    print(f"parity with onnxruntime on {parity.images} images: max abs diff {parity.max_abs_diff:.3g}, "
          f"top-1 agreement {100 * parity.top1_agreement:.2f}%")
    if parity.max_abs_diff > _MAX_DIFF.value:
        raise TfcError(f"onnxruntime differs from TF by {parity.max_abs_diff:.3g} > --max_abs_diff="
                       f"{_MAX_DIFF.value:g}; {_OUTPUT.value} not written")
    write_bytes(_OUTPUT.value, onnx_bytes, overwrite=_OVERWRITE.value)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
