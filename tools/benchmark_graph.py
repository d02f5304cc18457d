"""benchmark_graph: eightbit TF graphs against their float graph, timed in one run.

    python tools/benchmark_graph.py                    # digits model + MobileNetV2(0.35)
    python tools/benchmark_graph.py --models=digits --batch_sizes=1,32 --runs=100

For each model and batch size it prints, per variant (float; eightbit on the
reference kernels, in the default chain and in TF1's; eightbit on the fused
oneDNN kernels), the median latency
over --runs runs, the speed-up over float measured in the same run (variants
are interleaved run by run, so machine noise hits all alike), and top-1
agreement with float on the held-out testdata images, with the largest output
error as a fraction of the float outputs' span (the honest number for
MobileNetV2, whose seeded random weights give near-tied classes).

The process sets TF_ENABLE_ONEDNN_OPTS=1 (unless already set) before TF
starts, so that the oneDNN kernels exist; the float graph then runs on
oneDNN too, which is the fair comparison.
"""

import os
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["digits", "mobilenet_v2"], "digits (the testdata model) and/or "
                            "mobilenet_v2 (Keras MobileNetV2, alpha 0.35, seeded weights, BN set from images).")
_MOBILENET_SIZE = flags.DEFINE_integer("mobilenet_size", 224, "MobileNetV2 input height and width.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to time.")
_RUNS = flags.DEFINE_integer("runs", 50, "Timed runs per variant (after 5 warm-up runs).", lower_bound=5)
_CALIBRATOR = flags.DEFINE_enum("calibrator", "percentile", ["minmax", "percentile", "kl", "mse"], "Range calibrator.")
_EVAL_COUNT = flags.DEFINE_integer("eval_images", 300, "Held-out images for the agreement column.")


def _variants(float_model, ranges):
    from tfcompress.quantize.config import QuantConfig
    from tfcompress.quantize.convert import quantize_model
    from tfcompress.quantize.onednn import mkl_enabled
    out = [("float", float_model)]
    out.append(("eightbit reference", quantize_model(float_model, QuantConfig(kernels="reference"), ranges)[0]))
    out.append(("eightbit tf1", quantize_model(float_model, QuantConfig(kernels="tf1"), ranges)[0]))
    if mkl_enabled():
        out.append(("eightbit onednn", quantize_model(float_model, QuantConfig(kernels="onednn"), ranges)[0]))
    return out


def main() -> None:
    import numpy as np

    from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
    from tfcompress.calibrate.collect import collect_stats, full_range_tensors
    from tfcompress.data.images import iter_batches, list_images
    from tfcompress.evaluate import measure
    from tfcompress.graph.runner import GraphRunner
    from tfcompress.quantize.onednn import mkl_enabled

    heldout = list_images(common.DEFAULT_EVAL)[:_EVAL_COUNT.value]
    rows = [["model", "variant", "batch", "median ms", "speed-up vs float", "conv/matmul quantized",
             "top-1 agreement", "max abs error / output span"]]
    for name in _MODELS.value:
        float_model, prep, calibration = common.benchmark_model(name, _MOBILENET_SIZE.value)
        stats = collect_stats(float_model, calibration, prep, progress=False)
        ranges = compute_ranges(stats, CalibratorConfig(method=_CALIBRATOR.value), full_range_tensors(float_model))
        variants = _variants(float_model, ranges)
        before = measure.op_census(float_model.graph_def)
        shares, agreements = {}, {}
        for label, model in variants:
            shares[label] = measure.linear_quantized_share(before, measure.op_census(model.graph_def))
            agreements[label] = measure.agreement(float_model, model, heldout, prep)
        images = np.concatenate(list(iter_batches(heldout, prep, 32)))
        for batch_size in [int(b) for b in _BATCH_SIZES.value]:
            batch = np.resize(images, (batch_size,) + images.shape[1:])
            runners = [GraphRunner(m.graph_def, [m.image_input().tensor], [m.outputs[0].tensor]) for _, m in variants]
            times = [[] for _ in variants]
            for _ in range(5):
                for r in runners:
                    r.run(batch)
            for _ in range(_RUNS.value):
                for i, r in enumerate(runners):
                    start = time.perf_counter()
                    r.run(batch)
                    times[i].append(time.perf_counter() - start)
            for r in runners:
                r.close()
            medians = [float(np.median(t)) for t in times]
            for (label, _), med in zip(variants, medians):
                top1, rel = agreements[label].top1, agreements[label].relative_error
                rows.append([name, label, batch_size, f"{med * 1e3:.2f}", f"{medians[0] / med:.2f}x",
                             "-" if label == "float" else f"{shares[label]:.0%}",
                             "-" if label == "float" else (f"{top1:.2%}" if top1 is not None else "n/a"),
                             "-" if label == "float" else f"{rel:.2%}"])
    print(f"\nbenchmark_graph: {_RUNS.value} runs per variant, interleaved; oneDNN kernels "
          f"{'on' if mkl_enabled() else 'off (no onednn rows)'}; calibrator {_CALIBRATOR.value}; "
          f"agreement on {len(heldout)} held-out images")
    common.print_table(rows)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
