"""quantize_graph: SavedModel / .keras / .h5 / frozen .pb -> calibrated eightbit TF graph.

    python tools/quantize_graph.py --input=net_savedmodel --output=out/net_q8 \
        --mode=eightbit --calibration_images=data/sample_images \
        --input_mean=127.5 --input_std=127.5 --calibration_cache=out/net.ranges.json

With no --input it runs on the model and images shipped in testdata/.
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
_DATA = common.define_calibration_data_flag()
_OUTPUT = flags.DEFINE_string("output", None, "Output SavedModel directory (or .pb with --output_format=frozen_pb).")
_OUTPUT_FORMAT = flags.DEFINE_enum("output_format", "saved_model", ["saved_model", "frozen_pb"], "Output format.")
_MODE = flags.DEFINE_enum("mode", "eightbit", ["eightbit", "weights", "weights_rounded"], "Quantization mode.")
_BITDEPTH = flags.DEFINE_integer("bitdepth", 8, "Bits for the weights modes (eightbit is 8).")
_MIN_WEIGHT_SIZE = flags.DEFINE_integer("min_weight_size", 1024, "Smaller constants stay float (weights modes).")
_BIAS_CORRECTION = flags.DEFINE_enum("bias_correction", "empirical", ["empirical", "none"],
                                     "eightbit, reference kernels: empirical (each conv's and matmul's mean "
                                     "output error on the calibration images, absorbed in its float bias) or "
                                     "none.")
_KERNELS = flags.DEFINE_enum("kernels", "reference", ["reference", "tf1", "onednn"],
                             "reference: portable kernels, one 8-bit step per conv; tf1: the same kernels in TF1's "
                             "chain (two requantizations per conv); onednn: fused oneDNN kernels (need oneDNN ops on).")
_EVAL_IMAGES = flags.DEFINE_string("eval_images", None, "Images for the agreement check "
                                   "(default: the calibration images).")
_OUTPUT_INDEX = flags.DEFINE_list("output_index", None, "Outputs (indices or signature keys) that are class "
                                  "vectors, for top-1 agreement (default: the softmax outputs; a single "
                                  "vector output).")
_QUANTIZED_INPUT = flags.DEFINE_boolean("quantized_input", False, "eightbit: the float inputs arrive as quint8 "
                                        "codes over [--quantized_input_min, --quantized_input_max] (no "
                                        "QuantizeV2 for them).")
_QUANTIZED_INPUT_MIN = flags.DEFINE_float("quantized_input_min", 0.0, "Float value of input code 0.")
_QUANTIZED_INPUT_MAX = flags.DEFINE_float("quantized_input_max", 1.0, "Float value of input code 255.")
_FALLBACK_MIN = flags.DEFINE_float("quantized_fallback_min", None, "eightbit: with --quantized_fallback_max, the "
                                   "range of every tensor without a calibrated range (no calibration needed).")
_FALLBACK_MAX = flags.DEFINE_float("quantized_fallback_max", None, "See --quantized_fallback_min.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")
_OVERWRITE = common.define_overwrite_flag()


def main() -> None:
    from tfcompress.api.graph_jobs import quantize_graph
    from tfcompress.evaluate import measure

    from tfcompress.errors import TfcError

    input_path, images, default_run = common.default_inputs(_MODEL, _CAL, _DATA)
    eval_images = _EVAL_IMAGES.value or (common.DEFAULT_EVAL if default_run and not _DATA.value else images)
    if (_FALLBACK_MIN.value is None) != (_FALLBACK_MAX.value is None):
        raise TfcError("give --quantized_fallback_min and --quantized_fallback_max together")
    fallback = None if _FALLBACK_MIN.value is None else (_FALLBACK_MIN.value, _FALLBACK_MAX.value)
    quantized_input = (_QUANTIZED_INPUT_MIN.value, _QUANTIZED_INPUT_MAX.value) if _QUANTIZED_INPUT.value else None
    result = quantize_graph(input_path, _OUTPUT.value, images=images, data=_DATA.value,
                            cache=_CAL["calibration_cache"].value,
                            recalibrate=_CAL["recalibrate"].value, mode=_MODE.value, kernels=_KERNELS.value,
                            bias_correction=_BIAS_CORRECTION.value,
                            bitdepth=_BITDEPTH.value, min_weight_size=_MIN_WEIGHT_SIZE.value,
                            quantized_input=quantized_input, fallback_range=fallback,
                            output_format=_OUTPUT_FORMAT.value, eval_images=eval_images,
                            class_outputs=_OUTPUT_INDEX.value,
                            options=common.calibration_options(_CAL), load=common.load_options(_MODEL),
                            overwrite=_OVERWRITE.value, progress=_PROGRESS.value)

    before = measure.op_census(result.float_model.graph_def)
    after = measure.op_census(result.quantized.graph_def)
    rows = [["", "float", "quantized"]]
    for op in sorted(set(before) | set(after)):
        rows.append([op, before.get(op, 0), after.get(op, 0)])
    print(f"\nquantize_graph: {input_path} -> {_OUTPUT.value} (mode={result.mode}, kernels={result.kernels})")
    print("rewrites: " + ", ".join(f"{p.name}={p.rewrites}" for p in result.passes))
    print(f"calibration: {result.calibration}")
    print("\nop census")
    common.print_table(rows)
    coverage = measure.linear_coverage(before, after)
    share = measure.linear_quantized_share(before, after)
    print(f"\nconv, depthwise and matmul ops quantized: {share:.0%} ("
          + ", ".join(f"{op} {q}/{t}" for op, (q, t) in coverage.items()) + ")")
    if result.report.kept_float:
        kept = sorted(set(result.report.kept_float.values()))
        why = ("the reference chain runs what follows a conv or matmul in float, on its exact accumulator, "
               "and has no depthwise kernel" if result.kernels == "reference" else "no quantized kernel or declined")
        print(f"ops in float ({why}): {', '.join(kept)}")
    if result.report.alone:
        print("quantized alone, between a QuantizeV2 and a Dequantize (float may be faster there): "
              + ", ".join(result.report.alone))
    for note in result.report.notes:
        print(f"warning: {note}")
    in_size = measure.path_size(input_path)
    float_size = measure.graph_size(result.float_model.graph_def)
    out_size = measure.path_size(_OUTPUT.value)
    print()
    common.print_table([["size", "raw bytes", "gzip -9 bytes"],
                        ["input model file", in_size.raw, in_size.gzip],
                        ["float graph (frozen, folded)", float_size.raw, float_size.gzip],
                        ["output", out_size.raw, out_size.gzip]])
    if result.agreement is not None:
        agree = result.agreement
        on = f"{agree.images} images ({eval_images})" if eval_images else \
            f"{agree.images} samples of the calibration data ({_DATA.value})"
        print(f"\nagreement with float on {on}, per output:")
        common.print_table([["output", "class vector", "top-1", "MSE", "mean abs error", "max abs error / span"]] + [
            [h.key, "yes" if h.is_class else "no", "-" if h.top1 is None else f"{h.top1:.2%}", f"{h.mse:.3g}",
             f"{h.mean_abs_error:.4g}", f"{h.max_abs_error:.4g} / {h.reference_span:.4g}"] for h in agree.heads])


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
