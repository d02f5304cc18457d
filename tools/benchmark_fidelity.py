"""benchmark_fidelity: int8 fidelity on the whole zoo, ours beside the stock TFLite converter, in one run.

    python tools/benchmark_fidelity.py                  # every zoo model; about 20 minutes
    python tools/benchmark_fidelity.py --models=se_patches,boxes_digits --subsets=2

For each model of testdata/zoo (see tfcompress/evaluate/zoo.py) and each of
--subsets seeded halves of its calibration images, every artifact is built
from the same half:
  - converter int8: the stock TFLiteConverter's default full-integer
    quantization (Optimize.DEFAULT with a representative dataset, float I/O);
  - ours: `convert` with default flags (cross-layer equalization, min/max
    ranges, leave-one-out vector ranges, residual branches over their sum's
    range, empirical bias correction), and with one technique changed per row.
  - the eightbit TF graph of `quantize_graph` with default flags (reference
    kernels, cross-layer equalization), with TF1's chain (--kernels=tf1)
    and, where this process has oneDNN's ops, the fused oneDNN kernels, all
    from the same half.
Each .tflite runs in LiteRT and each graph in TF on the model's held-out
images, and is compared with the float Keras model head by head: top-1 agreement and output MSE for class
heads (on the probabilities), mean absolute error for regression heads.

One calibration set decides little: the MSE of a 99%-agreement model comes
mostly from a few images near a decision boundary, and the same artifact
built from another half of the images can land at half or twice the value.
So each error is given as the geometric mean over the subsets of its ratio
to the converter's (with the range over subsets), and agreement as the mean.
The last lines also give, per model, our default's error over the
converter's with both built once from every calibration image: one build,
not an average, but the one a user with these images gets.
Sizes (raw and gzip -9) and latency (median of interleaved LiteRT runs,
batch 1, --threads, as a ratio to the float .tflite) come from the first
subset; latency is measured for the converter and our default.
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
_SUBSETS = flags.DEFINE_integer("subsets", 4, "Seeded halves of the calibration images to build from.",
                                lower_bound=1)
_THREADS = flags.DEFINE_integer("threads", 1, "LiteRT threads.", lower_bound=1)


# Our rows: label -> the `tfc.convert` arguments (or CalibrationOptions' calibrator and equalize) that differ
# from the defaults.
OURS = {
    "ours (default)": {},
    "ours, vector_ranges=calibrated": {"vector_ranges": "calibrated"},
    "ours, residual_ranges=calibrated": {"residual_ranges": "calibrated"},
    "ours, bias_correction=none": {"bias_correction": "none"},
    "ours, bias_correction=analytic": {"bias_correction": "analytic"},
    "ours, calibrator=mse": {"calibrator": "mse"},
    "ours, equalize=False": {"equalize": False},
    "ours, rounding=adaround": {"rounding": "adaround"},
    "ours, rounding=adaround, bias_correction=none": {"rounding": "adaround", "bias_correction": "none"},
}


# The eightbit graph rows: label -> `tfc.quantize_graph`'s kernels.
GRAPHS = {"eightbit graph (default: reference)": "reference", "eightbit graph, kernels=tf1": "tf1",
          "eightbit graph, kernels=onednn": "onednn"}


def _graph_kernels():
    from tfcompress.quantize.onednn import mkl_enabled
    return {label: k for label, k in GRAPHS.items() if k != "onednn" or mkl_enabled()}


def _graph_outputs(quantized, held):
    """The eightbit graph's outputs on the held-out images, by name."""
    from tfcompress.graph.runner import GraphRunner
    with GraphRunner(quantized.graph_def, [quantized.image_input().tensor],
                     [o.tensor for o in quantized.outputs]) as runner:
        values = runner.run(held)
    return {o.tensor: v.reshape(len(held), -1) for o, v in zip(quantized.outputs, values)}


def _errors(entry, outputs, reference, count):
    """{head: (agreement or None, error)}: class heads give (top-1 agreement, MSE), regression heads (None, MAE)."""
    import numpy as np
    errors = {}
    for head, kind in entry.heads.items():
        ref, got = reference[head].reshape(count, -1), outputs[head]
        if kind == "class":
            errors[head] = (float(np.mean(ref.argmax(1) == got.argmax(1))), float(np.mean((ref - got) ** 2)))
        else:
            errors[head] = (None, float(np.mean(np.abs(ref - got))))
    return errors


def measure(name):
    """(rows for one zoo model, (our default's agreement >= the converter's on every class head, its largest
    error ratio to the converter over the heads), the eightbit graph against our default (`_graph_against_ours`),
    our default's error ratio to the converter per head with both built from every calibration image)."""
    import numpy as np
    import tfcompress as tfc
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    from tfcompress.evaluate.artifacts import interleaved_latency
    from tfcompress.evaluate.measure import bytes_size, graph_size
    from tfcompress.evaluate.zoo import ZOO
    from tfcompress.export.tflite import keras_float_flatbuffer
    from tfcompress.io.keras_models import load_keras
    entry = ZOO[name]
    model = load_keras(entry.path)
    _, h, w, c = model.input_shape
    prep = Preprocessing(height=h, width=w, channels=c, mean=entry.mean, std=entry.std)
    source = FolderSource(entry.calibration)
    calibration = source.array(prep)
    held = FolderSource(entry.heldout).array(prep)
    reference = model.predict(held, verbose=0)
    reference = dict(zip(entry.heads, reference if isinstance(reference, list) else [reference]))
    sizes = {head: int(np.prod(v.shape[1:])) for head, v in reference.items()}
    graphs = _graph_kernels()
    labels = ["converter int8"] + list(OURS) + list(graphs)
    errors = {label: [] for label in labels}
    first, graph_sizes = {}, {}
    for seed in range(_SUBSETS.value):
        half = np.sort(np.random.default_rng(seed).permutation(len(source))[:len(source) // 2])
        subset = FolderSource.from_paths([source.paths[i] for i in half])
        artifacts = {"converter int8": common.stock_int8(model, calibration[half])}
        with tempfile.TemporaryDirectory() as tmp:
            for label, changes in OURS.items():
                artifacts[label] = _ours(entry, subset, changes, tmp)
            for label, kernels in graphs.items():
                options = tfc.CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
                quantized = tfc.quantize_graph(entry.path, os.path.join(tmp, "graph_" + kernels), images=subset,
                                               kernels=kernels, options=options, overwrite=True).quantized
                outputs = common.outputs_by_head(_graph_outputs(quantized, held), sizes)
                errors[label].append(_errors(entry, outputs, reference, len(held)))
                if seed == 0:
                    graph_sizes[label] = graph_size(quantized.graph_def)
        for label, flatbuffer in artifacts.items():
            errors[label].append(_litert_errors(entry, flatbuffer, held, reference, sizes))
        if seed == 0:
            first = artifacts
    whole = _whole_set(entry, model, source, calibration, held, reference, sizes)
    timed = {"float": keras_float_flatbuffer(model), "converter int8": first["converter int8"],
             "ours (default)": first["ours (default)"]}
    latency = dict(zip(timed, interleaved_latency(list(timed.values()), held[:1], _RUNS.value,
                                                  threads=_THREADS.value)))
    rows, agrees, worst = [], True, 0.0
    for label in labels:
        cells = []
        for head in entry.heads:
            runs = [e[head] for e in errors[label]]
            base = [e[head] for e in errors["converter int8"]]
            ratios = np.array([r[1] / b[1] for r, b in zip(runs, base)])
            geo = float(np.exp(np.mean(np.log(ratios))))
            metric = "MSE" if runs[0][0] is not None else "MAE"
            cell = f"{head}: "
            if runs[0][0] is not None:
                agreement = float(np.mean([r[0] for r in runs]))
                cell += f"top-1 {agreement:.2%}, "
                if label == "ours (default)":
                    agrees &= agreement >= float(np.mean([b[0] for b in base]))
            cell += f"{metric} {np.mean([r[1] for r in runs]):.3g}"
            if label != "converter int8":
                cell += f" ({geo:.2f}x; {ratios.min():.2f}-{ratios.max():.2f})"
                if label == "ours (default)":
                    worst = max(worst, geo)
            cells.append(cell)
        size = graph_sizes[label] if label in graph_sizes else bytes_size(first[label])
        rows.append([name, label, "; ".join(cells), size.raw, size.gzip,
                     f"{latency[label] / latency['float']:.2f}x" if label in latency else ""])
    return rows, (agrees, worst), _graph_against_ours(entry, errors), whole


def _ours(entry, images, changes, tmp):
    """Our `convert` of the zoo model from `images`, with one OURS entry's `changes` to its defaults."""
    import tfcompress as tfc
    changes = dict(changes)
    options = tfc.CalibrationOptions(input_mean=entry.mean, input_std=entry.std,
                                     **{k: changes.pop(k) for k in ("calibrator", "equalize") if k in changes})
    return tfc.convert(entry.path, os.path.join(tmp, "ours.tflite"), images=images, options=options,
                       overwrite=True, **changes).flatbuffer


def _litert_errors(entry, flatbuffer, held, reference, sizes):
    """`_errors` of a flatbuffer run in LiteRT on the held-out images."""
    from tfcompress.export.litert import LiteRTRunner
    runner = LiteRTRunner(flatbuffer, threads=_THREADS.value)
    return _errors(entry, common.outputs_by_head(runner.outputs_by_name(held), sizes), reference, len(held))


def _whole_set(entry, model, source, calibration, held, reference, sizes):
    """{head: our default's error / the converter's}, each built once from every calibration image."""
    with tempfile.TemporaryDirectory() as tmp:
        ours = _ours(entry, source, {}, tmp)
    errors = [_litert_errors(entry, f, held, reference, sizes) for f in (ours, common.stock_int8(model, calibration))]
    return {head: errors[0][head][1] / errors[1][head][1] for head in entry.heads}


def _graph_against_ours(entry, errors, label="eightbit graph (default: reference)"):
    """(the default eightbit graph's largest top-1 shortfall against our default .tflite, in points, and
    its largest per-head error ratio to it: geometric mean over the subsets)."""
    import numpy as np
    shortfall, ratio = 0.0, 0.0
    for head in entry.heads:
        graph = [e[head] for e in errors[label]]
        ours = [e[head] for e in errors["ours (default)"]]
        if graph[0][0] is not None:
            shortfall = max(shortfall, 100 * (np.mean([o[0] for o in ours]) - np.mean([g[0] for g in graph])))
        ratio = max(ratio, float(np.exp(np.mean([np.log(g[1] / o[1]) for g, o in zip(graph, ours)]))))
    return shortfall, ratio


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import ZOO
    names = _MODELS.value or list(ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        raise TfcError(f"unknown zoo model {unknown[0]!r} (choose from {', '.join(ZOO)})")
    rows = [["model", "artifact", "against the float Keras model, per head (ratio to the converter: geometric "
             "mean; range over subsets)", "raw bytes", "gzip -9 bytes", "latency vs float"]]
    met, graph, whole = {}, {}, {}
    for name in names:
        model_rows, met[name], graph[name], whole[name] = measure(name)
        rows += model_rows
    common.print_table(rows)
    print(f"held-out images of each model; {_SUBSETS.value} calibration halves; LiteRT latency: median of "
          f"{_RUNS.value} interleaved runs, batch 1, {_THREADS.value} thread(s)")
    both = [n for n, (agrees, worst) in met.items() if agrees and worst <= 1.0]
    fifth = [n for n, (_, worst) in met.items() if worst <= 0.8]
    print(f"our default: agreement >= the converter's and every error ratio <= 1 on {len(both)}/{len(met)} models "
          f"({', '.join(both) or 'none'}); every error ratio <= 0.8 on {len(fifth)}/{len(met)} "
          f"({', '.join(fifth) or 'none'})")
    print("built once from every calibration image instead, our default's error over the converter's: " + ", ".join(
        f"{n} " + "/".join(f"{r:.2f}x" for r in ratios.values()) for n, ratios in whole.items())
          + f"; <= 1 on {sum(max(r.values()) <= 1.0 for r in whole.values())}/{len(whole)} models")
    within = [n for n, (points, ratio) in graph.items() if points <= 1.0 and ratio <= 1.5]
    print(f"eightbit graph (default) against our default .tflite: top-1 within 1 point and every head's error "
          f"<= 1.5x on {len(within)}/{len(graph)} models ({', '.join(within) or 'none'}); " + ", ".join(
              f"{n} {-p:+.2f} pt, {r:.2f}x" for n, (p, r) in graph.items()))


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
