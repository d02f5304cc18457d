"""report: evaluate several artifacts and write an HTML report with plots and a Markdown table.

    python tools/report.py --models=net.keras,net_q8/,net_int8.tflite,net_f16.tflite \
        --images=data/val --output=report/

Writes report/index.html, report/quality_vs_size.png,
report/quality_vs_latency.png and report/report.md.  Agreement is measured
against --reference (default: the first model).  Every model is evaluated as
`tfcompress eval` does.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_MODELS = flags.DEFINE_list("models", None, "Comma-separated artifacts (any format eval takes).")
flags.DEFINE_alias("input", "models")
_REFERENCE = flags.DEFINE_string("reference", None, "Float reference for agreement (default: the first model).")
_IMAGES = flags.DEFINE_string("images", None, "Evaluation folder (required; labelled DIR/<label>/* for accuracy).")
_LABELS = flags.DEFINE_string("labels", None, "Labels file, one name per line in output order (default: the "
                              "first .tflite's metadata labels, else the class folders in sorted order).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (a new one, or with --overwrite one that report "
                              "wrote earlier, replaced as a whole).")
_OVERWRITE = common.define_overwrite_flag()
_NORM = common.define_normalization_flags()
_RUN = common.define_runtime_flags()
_RUNS = flags.DEFINE_integer("runs", 50, "Timed runs for each latency median.", lower_bound=50)


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.data.source import FolderSource
    from tfcompress.evaluate.report import markdown, write_report
    from tfcompress.evaluate.run import evaluate

    if not _MODELS.value:
        raise TfcError("--models is required (comma-separated artifacts)")
    from tfcompress.io.atomic import check_output
    check_output(_OUTPUT.value, [*_MODELS.value, _REFERENCE.value, _IMAGES.value, _LABELS.value],
                 overwrite=_OVERWRITE.value, directory=True)
    for path in _MODELS.value:
        if not os.path.exists(path):
            raise TfcError(f"model {path} does not exist")
    if not _IMAGES.value:
        raise TfcError("--images is required: every artifact is measured on them (a labelled folder "
                       "DIR/<label>/* gives accuracy too)")
    from tfcompress.api.evaluate import metadata_of
    labels = _LABELS.value or next((m.labels for m in map(metadata_of, _MODELS.value)
                                    if m is not None and m.labels is not None), None)
    images = FolderSource(_IMAGES.value, labels)
    reference = common.open_artifact_from_flags(_REFERENCE.value or _MODELS.value[0], _NORM, _RUN)[0]
    results = []
    for path in _MODELS.value:
        artifact, prep = common.open_artifact_from_flags(path, _NORM, _RUN)
        results.append(evaluate(artifact, images, prep, reference=reference, runs=_RUNS.value,
                                threads=_RUN["threads"].value))
        artifact.close()
    write_report(results, _OUTPUT.value, overwrite=_OVERWRITE.value)
    print(markdown(results), end="")
    print(f"report: {os.path.join(_OUTPUT.value, 'index.html')}")


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
