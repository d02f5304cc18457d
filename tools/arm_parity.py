"""arm_parity: the same .tflite on aarch64 (emulated) and on this machine, output differences in steps.

    bash tools/setup_arm64.sh && python tools/arm_parity.py          # the zoo, float and int8; ~2 min
    python tools/arm_parity.py --input=model.tflite --images=DIR     # your own .tflite files

By default every zoo model (testdata/zoo) is converted twice, float
(--quantize=none) and the default int8 (uint8 I/O), and each .tflite runs on
--count held-out images in this machine's LiteRT and in LiteRT's aarch64
wheel under qemu-aarch64 (`tfcompress.evaluate.emulated`).  One row per
output: its type, and the largest and mean difference in quantization steps
(a float output's step: its span / 255).  Exit 1 if any output differs by
more than one step.
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

_INPUT = flags.DEFINE_list("input", None, ".tflite files to compare (default: the zoo, converted here).")
_IMAGES = flags.DEFINE_string("images", None, "Image folder for --input (normalization from each model's "
                              "metadata).")
_MODELS = flags.DEFINE_list("models", None, "Zoo models (default: all).")
_COUNT = flags.DEFINE_integer("count", 16, "Images per model.", lower_bound=1)


def _rows(label: str, path: str, images, count: int):
    from tfcompress.api.evaluate import normalization
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import as_source
    from tfcompress.evaluate.emulated import compare
    from ai_edge_litert.interpreter import Interpreter
    mean, std, order = normalization(path)
    shape = tuple(int(d) for d in Interpreter(model_path=path).get_input_details()[0]["shape"])
    prep = Preprocessing.for_input(shape, mean=mean, std=std, channel_order=order)
    x = next(iter(as_source(images).batches(prep, count)))
    return [[label, d.name, d.dtype, f"{d.max_steps:.3g}", f"{d.mean_steps:.2g}", f"{100 * d.differing:.1f}%",
             "ok" if d.ok else "DIFFERS"] for d in compare(path, x)]


def main() -> None:
    import tfcompress as tfc
    from tfcompress.api.graph_jobs import CalibrationOptions
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.emulated import find_arm_python
    from tfcompress.evaluate.zoo import ZOO
    find_arm_python()
    rows = []
    if _INPUT.value:
        if not _IMAGES.value:
            raise TfcError("--input needs --images")
        for path in _INPUT.value:
            rows += _rows(os.path.basename(path), path, _IMAGES.value, _COUNT.value)
    else:
        names = _MODELS.value or list(ZOO)
        unknown = [n for n in names if n not in ZOO]
        if unknown:
            raise TfcError(f"unknown zoo model(s) {', '.join(unknown)} (choose from {', '.join(ZOO)})")
        with tempfile.TemporaryDirectory() as work:
            for name in names:
                entry = ZOO[name]
                options = CalibrationOptions(input_mean=entry.mean, input_std=entry.std)
                for mode in ("none", "int8"):
                    out = os.path.join(work, f"{name}_{mode}.tflite")
                    tfc.convert(entry.path, out, quantize=mode, options=options,
                                images=None if mode == "none" else entry.calibration)
                    rows += _rows(f"{name} {'float' if mode == 'none' else 'int8'}", out, entry.heldout,
                                  _COUNT.value)
    common.print_table([["model", "output", "type", "max steps", "mean steps", "values differing",
                         "aarch64 vs x86"]] + rows)
    bad = [r for r in rows if r[-1] != "ok"]
    print(f"{len(rows) - len(bad)}/{len(rows)} outputs within one step; {_COUNT.value} images each; "
          f"aarch64 LiteRT under qemu-aarch64 against this machine's LiteRT")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    common.run_main(main)
