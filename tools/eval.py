"""eval: accuracy, agreement, latency, size and cost of any artifact.

    python tools/eval.py --model=net_int8.tflite --images=data/val --reference=net.keras \
        --input_mean=127.5 --input_std=127.5 --json

Models: SavedModel (also eightbit ones from quantize_graph), .keras, .h5,
frozen .pb, .tflite (LiteRT) and .onnx (onnxruntime).  With no --model the
shipped digits model is evaluated on the shipped held-out images.
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

_MODEL = flags.DEFINE_string("model", None, "Model to evaluate (default: the shipped digits model).")
flags.DEFINE_alias("input", "model")
_IMAGES = flags.DEFINE_string("images", None, "Labelled folder DIR/<label>/*.png, or a flat folder "
                              "(agreement and latency only).  Default: the shipped held-out digits.")
_LABELS = flags.DEFINE_string("labels", None, "Labels file, one name per line in output order.")
_REFERENCE = flags.DEFINE_string("reference", None, "Float model to measure top-1 agreement against.")
_NORM = common.define_normalization_flags()
_RUN = common.define_runtime_flags()
_RUNS = flags.DEFINE_integer("runs", 50, "Timed runs for the latency median.", lower_bound=50)
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed runs before timing.", lower_bound=0)
_JSON = flags.DEFINE_boolean("json", False, "Print one JSON object instead of a table.")


def main() -> None:
    from tfcompress.api.evaluate import evaluate

    result = evaluate(_MODEL.value or common.DEFAULT_MODEL, _IMAGES.value or common.DEFAULT_EVAL,
                      reference=_REFERENCE.value, labels=_LABELS.value, runs=_RUNS.value, warmup=_WARMUP.value,
                      options=common.runtime_options(_NORM, _RUN))
    if _JSON.value:
        print(json.dumps(result.as_dict(), sort_keys=True))
        return
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    common.print_table([
        ["model", "runtime", "images", "top-1", "top-5", "agreement", "max abs err", "latency ms (median)",
         "threads", "raw bytes", "gzip -9 bytes", "params", "MACs"],
        [result.model, result.runtime, result.images, pct(result.top1), pct(result.top5),
         pct(result.agreement_top1), "-" if result.max_abs_error is None else f"{result.max_abs_error:.4g}",
         f"{result.latency_ms:.3f} (of {result.latency_runs})", result.threads, result.size_bytes,
         result.size_gzip_bytes, result.params, result.macs]])


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
