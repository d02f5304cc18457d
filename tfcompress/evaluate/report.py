"""A comparison report of several artifacts: index.html, two PNG plots and a Markdown table.

The plotted quality is top-1 accuracy on a labelled folder, or top-1
agreement with the reference on an unlabelled one.  Plots put size (KiB)
and latency (median ms) on a log x axis; every artifact has its own colour
and marker, named in the legend.  Each plot draws its Pareto front (the
artifacts no other beats on both axes: smaller or faster and at least as
good), labels the points on it by name, and the table says which artifacts
are on the size and the latency front.
"""

import html
import os
from typing import Dict, List, Sequence

from tfcompress.evaluate.run import EvalResult
from tfcompress.io.atomic import atomic_dir

MARKDOWN = "report.md"
HTML = "index.html"
SIZE_PLOT = "quality_vs_size.png"
LATENCY_PLOT = "quality_vs_latency.png"


def quality(result: EvalResult) -> float:
    return result.top1 if result.top1 is not None else result.agreement_top1


def quality_name(results: Sequence[EvalResult]) -> str:
    return "top-1 accuracy" if all(r.top1 is not None for r in results) else "top-1 agreement with reference"


def pareto_front(costs: Sequence[float], qualities: Sequence[float]) -> List[int]:
    """Indices of the points no other point dominates (cost <= and quality >=, one of them strictly), by cost.

    Of points equal in both, the first is kept.
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -qualities[i], i))
    front, best = [], float("-inf")
    for i in order:
        if qualities[i] > best:
            front.append(i)
            best = qualities[i]
    return front


def _size_kib(r: EvalResult) -> float:
    return r.size_bytes / 1024.0


def _latency(r: EvalResult) -> float:
    return r.latency_ms


def fronts(results: Sequence[EvalResult]) -> Dict[str, List[int]]:
    """The size and the latency Pareto fronts, taken over the numbers as the table prints them.

    So a reader can check them against the table: two artifacts whose latencies differ only past
    the third decimal are equal here, and the first of them is on the front.
    """
    ys = [round(100 * quality(r), 2) for r in results]
    return {"size": pareto_front([r.size_bytes for r in results], ys),
            "latency": pareto_front([round(r.latency_ms, 3) for r in results], ys)}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def table_rows(results: Sequence[EvalResult]) -> List[List[str]]:
    header = ["model", "runtime", "top-1", "top-5", "agreement", "max abs err", "latency ms", "threads",
              "raw bytes", "gzip -9 bytes", "params", "MACs", "Pareto front"]
    on = fronts(results)
    rows = [[os.path.basename(r.model.rstrip("/")) or r.model, r.runtime, _pct(r.top1), _pct(r.top5),
             _pct(r.agreement_top1), "-" if r.max_abs_error is None else f"{r.max_abs_error:.4g}",
             f"{r.latency_ms:.3f}", str(r.threads), str(r.size_bytes), str(r.size_gzip_bytes), str(r.params),
             str(r.macs), ", ".join(name for name in ("size", "latency") if i in on[name]) or "-"]
            for i, r in enumerate(results)]
    return [header] + rows


def markdown(results: Sequence[EvalResult]) -> str:
    rows = table_rows(results)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _plot(results: Sequence[EvalResult], x_of, front: List[int], x_label: str, path: str) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt, ticker  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    ys = [100 * quality(r) for r in results]
    for i, (r, y) in enumerate(zip(results, ys)):
        # One colour and marker per artifact, named in the legend: labels next to points overlap
        # as soon as two artifacts land close together (float32 TFLite and ONNX usually do).
        ax.scatter([x_of(r)], [y], s=90 if i < 10 else 60, marker=_MARKERS[i % len(_MARKERS)], zorder=3,
                   alpha=0.85, label=f"{os.path.basename(r.model.rstrip('/'))} ({r.runtime})")
    # A staircase through the front, on to the largest x: everything below and right of it is beaten.
    xs = [x_of(results[i]) for i in front] + [max(x_of(r) for r in results)]
    ax.step(xs, [ys[i] for i in front] + [ys[front[-1]]], where="post", color="0.4", linewidth=1.2, zorder=2,
            label="Pareto front")
    for i in front:
        ax.annotate(os.path.basename(results[i].model.rstrip("/")), (x_of(results[i]), ys[i]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8, color="0.25")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    lo, hi = min(ys), max(ys)
    pad = max(0.5, (hi - lo) * 0.25)
    ax.set_ylim(lo - pad, min(100.0 + pad / 4, hi + pad))
    ax.set_xlabel(x_label)
    ax.set_ylabel(quality_name(results) + " (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{quality_name(results)} vs {x_label.split(' (')[0]}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_report(results: Sequence[EvalResult], output_dir: str, title: str = "tfcompress report", *,
                 overwrite: bool = False) -> None:
    """Writes index.html, the two PNG plots and report.md into `output_dir` (atomically, as a whole).

    An existing `output_dir` is replaced only with `overwrite`, and only if tfcompress wrote it.
    """
    with atomic_dir(output_dir, overwrite=overwrite) as staging:
        on = fronts(results)
        _plot(results, _size_kib, on["size"], "size (KiB, log scale)", os.path.join(staging, SIZE_PLOT))
        _plot(results, _latency, on["latency"], "latency (median ms, batch 1, log scale)",
              os.path.join(staging, LATENCY_PLOT))
        md = markdown(results)
        with open(os.path.join(staging, MARKDOWN), "w", encoding="utf-8") as f:
            f.write(f"# {title}\n\n{md}")
        rows = table_rows(results)
        cells = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>"
                                         for c in row) + "</tr>\n" for i, row in enumerate(rows))
        page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>\n"
                "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head>\n"
                f"<body><h1>{html.escape(title)}</h1>\n"
                f"<p>{results[0].images} images; quality is "
                f"{html.escape(quality_name(results))}; latency is the median of "
                f"{results[0].latency_runs} runs, batch 1, {results[0].threads} thread(s).</p>\n"
                f"<table>\n{cells}</table>\n"
                f"<h2>Quality vs size</h2><img src=\"{SIZE_PLOT}\" alt=\"quality vs size\">\n"
                f"<h2>Quality vs latency</h2><img src=\"{LATENCY_PLOT}\" alt=\"quality vs latency\">\n"
                "</body></html>\n")
        with open(os.path.join(staging, HTML), "w", encoding="utf-8") as f:
            f.write(page)
