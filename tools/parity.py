"""parity: float reference vs LiteRT with XNNPACK vs LiteRT's builtin kernels, tensor by tensor.

    python tools/parity.py --model=net_int8.tflite --reference=net.keras --images=data/sample
    python tools/parity.py --model=net_q8/ --reference=net.keras --images=data/sample

Prints, for every operator output, the largest XNNPACK-vs-builtin difference
and the error against float, in quantization steps, and names the first
tensor where each pair diverges beyond one step.  With no --model the
shipped digits model is converted to int8 in memory and checked.  An
eightbit graph from quantize_graph (a SavedModel directory or .pb) is
compared with --reference tensor by tensor instead: the error of every float
tensor it keeps, the first that drifts by more than one step on average, and
the op that adds the most error.
"""

import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "The .tflite model, or an eightbit graph from quantize_graph (SavedModel "
                             "directory or .pb; needs --reference) (default: the shipped model, converted to int8).")
flags.DEFINE_alias("input", "model")
_REFERENCE = flags.DEFINE_string("reference", None, "Float model it was converted from (SavedModel, .keras, "
                                 ".h5 or .pb); without it only the two kernel sets are compared.")
_IMAGES = flags.DEFINE_string("images", None, "Sample images (default: the shipped calibration images).")
_COUNT = flags.DEFINE_integer("count", 16, "How many images to run.", lower_bound=1)
_NORM = common.define_normalization_flags()
_ALLOW_UNSAFE = flags.DEFINE_boolean("allow_unsafe_ops", False, "Accept reference graphs with ops outside the allowlist of pure ops.")
_JSON = flags.DEFINE_boolean("json", False, "Print the report as one JSON object.")
_EQUALIZE = flags.DEFINE_boolean("equalize", True, "Compare with the reference cross-layer equalized, as "
                                 "quantize_graph and convert make it by default (--noequalize for a model made "
                                 "with --noequalize).")


def _float_model(path: str, equalize: bool, allow_unsafe_ops: bool = False):
    """The optimized float graph of `path` that quantize_graph and convert quantize, cross-layer equalized or not."""
    from tfcompress.api.graph_jobs import CalibrationOptions
    from tfcompress.io.loaders import load_model
    return CalibrationOptions(equalize=equalize).float_model(load_model(path, allow_unsafe_ops=allow_unsafe_ops))[0]


def main() -> None:
    import dataclasses
    import numpy as np
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.parity import check_parity, describe
    from tfcompress.export.flatbuffer import layer_label
    from tfcompress.api.evaluate import normalization
    from tfcompress.export.litert import LiteRTRunner, check_untrusted

    if _MODEL.value and not _MODEL.value.endswith(".tflite"):
        _graph_parity(_MODEL.value)
        return
    reference = None
    if _MODEL.value:
        if not os.path.isfile(_MODEL.value):
            raise TfcError(f"model {_MODEL.value} does not exist")
        with open(_MODEL.value, "rb") as f:
            flatbuffer = f.read()
        check_untrusted(flatbuffer, _MODEL.value)  # LiteRT runs a user's file in a child process first.
    else:  # The shipped model's float graph is both what is converted and, unless --reference, the reference.
        reference = _float_model(common.DEFAULT_MODEL, _EQUALIZE.value)
        flatbuffer = _default_int8(reference)
    if _REFERENCE.value:
        reference = _float_model(_REFERENCE.value, _EQUALIZE.value, _ALLOW_UNSAFE.value)
    mean, std, order = normalization(_MODEL.value or "", _NORM["input_mean"].value, _NORM["input_std"].value,
                                     _NORM["channel_order"].value)
    shape = LiteRTRunner(flatbuffer, source=_MODEL.value or "model").input_shape
    prep = Preprocessing.for_input(shape, mean=mean, std=std, channel_order=order)
    paths = list_images(_IMAGES.value or common.DEFAULT_CALIBRATION)[:_COUNT.value]
    images = np.concatenate(list(iter_batches(paths, prep, 32)))
    report = check_parity(flatbuffer, reference, images)
    if _JSON.value:
        print(json.dumps(dataclasses.asdict(report), sort_keys=True))
        return
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"parity on {report.images} images (differences in quantization steps of each tensor)")
    common.print_table([["#", "op", "layer", "xnnpack vs builtin (max)", "xnnpack vs float (max / mean)",
                         "builtin vs float (mean)"]] + [
        [r.index, r.op, layer_label(r.tensor), fmt(r.kernels_max),
         f"{fmt(r.xnnpack_float_max)} / {fmt(r.xnnpack_float_mean)}", fmt(r.builtin_float_mean)]
        for r in report.tensors])
    print(f"\nfirst divergence, XNNPACK vs builtin (max > 1 step): {describe(report.first_kernel_divergence)}")
    if reference is not None:
        print(f"first divergence, XNNPACK vs float (mean > 1 step): "
              f"{describe(report.first_xnnpack_float_divergence)}")
        print(f"first divergence, builtin vs float (mean > 1 step): "
              f"{describe(report.first_builtin_float_divergence)}")
        print(f"top-1 agreement with float: XNNPACK {100 * report.output_top1_xnnpack_vs_float:.2f}%, "
              f"builtin {100 * report.output_top1_builtin_vs_float:.2f}%")


def _graph_parity(path: str) -> None:
    """An eightbit graph (SavedModel or .pb) against its float --reference."""
    import dataclasses
    import numpy as np
    from tfcompress.api.evaluate import normalization
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.parity import check_graph_parity, describe_graph
    from tfcompress.io.loaders import load_model
    if not _REFERENCE.value:
        raise TfcError(f"{path} is a TF graph: parity compares it with the float model it was made from, "
                       "so pass --reference")
    quantized = load_model(path, allow_unsafe_ops=_ALLOW_UNSAFE.value)
    reference = _float_model(_REFERENCE.value, _EQUALIZE.value, _ALLOW_UNSAFE.value)
    mean, std, order = normalization(path, _NORM["input_mean"].value, _NORM["input_std"].value,
                                     _NORM["channel_order"].value)
    prep = Preprocessing.for_input(reference.image_input().shape, mean=mean, std=std, channel_order=order)
    paths = list_images(_IMAGES.value or common.DEFAULT_CALIBRATION)[:_COUNT.value]
    report = check_graph_parity(quantized, reference, np.concatenate(list(iter_batches(paths, prep, 32))))
    if not report.tensors:
        raise TfcError(f"{path} shares no float tensor name with {_REFERENCE.value}: is it made from that model?")
    if _JSON.value:
        print(json.dumps(dataclasses.asdict(report), sort_keys=True))
        return
    print(f"eightbit graph parity on {report.images} images (errors in steps of each tensor: its float span / 255)")
    common.print_table([["#", "op", "tensor", "mean", "max", "relative RMS", "added by this op"]] + [
        [r.index, r.op, r.tensor[:-2], f"{r.mean_steps:.2f}", f"{r.max_steps:.2f}", f"{r.relative_rms:.2%}",
         f"{r.own:+.2%}"] for r in report.tensors])
    print(f"\nfirst divergence from float (mean > 1 step): {describe_graph(report.first_divergence)}")
    print(f"largest error added by one op: {describe_graph(report.largest_jump)}")
    for tensor, (top1, mae) in report.outputs.items():
        print(f"output {tensor}: top-1 agreement with float {top1:.2%}, mean abs error {mae:.3g}")


def _default_int8(model) -> bytes:
    """The shipped model's optimized float graph `model` (`_float_model`) converted to int8 with minmax ranges
    from the shipped calibration images."""
    from tfcompress.calibrate.calibrators import CalibratorConfig
    from tfcompress.data.images import Preprocessing
    from tfcompress.calibrate.run import calibrate
    from tfcompress.export.tflite import TfliteConfig, convert_tflite
    prep = Preprocessing.for_input(model.image_input().shape, mean=0.0, std=255.0)
    result = calibrate(model, prep=prep, calibrator=CalibratorConfig(), images=common.DEFAULT_CALIBRATION,
                       progress=False)
    return convert_tflite(model, TfliteConfig(quantize="int8"), result.cache.ranges()).flatbuffer


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
