"""binarize: Dense/Conv2D layers become binary (BinaryConnect, BWN or XNOR-Net) and are trained.

    python tools/binarize.py --input=net.keras --output=net_bwn.keras --mode=bwn --epochs=10 \
        --train_images=data/train
    python tools/convert.py --input=net_bwn.keras --output=net_bwn.tflite --quantize=int8
    python tools/pack.py --input=net_bwn.tflite --output=net_bwn.tfc

The latent float weights are kept in the .keras (training can go on); the
forward pass uses their sign (times alpha per output channel for bwn and
xnor).  The first and last weight layers stay float unless
--binarize_first_last; --layers names the layers instead (each must be a
Dense or Conv2D).  The table reports the 1-bit storage; `convert
--quantize=int8` writes the binary weights exactly as +-127 with per-channel
scale alpha/127 (bwn, binaryconnect) and runs in stock LiteRT, and `pack`
stores them at one bit each.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_JOB = common.define_training_flags(epochs=10)
_MODE = flags.DEFINE_enum("mode", "bwn", ["binaryconnect", "binaryconnect_stochastic", "bwn", "xnor"],
                          "Binarization: sign (BinaryConnect, deterministic or stochastic), alpha*sign (BWN), or "
                          "BWN weights with binary inputs (XNOR-Net).")
_LAYERS = flags.DEFINE_list("layers", [], "Layers to binarize (default: every Dense/Conv2D but the first and last).")
_FIRST_LAST = flags.DEFINE_boolean("binarize_first_last", False, "Binarize the first and last weight layers too.")


def main() -> None:
    from tfcompress.api.keras_jobs import binarize

    input_path, default_run, kwargs = common.keras_job(_JOB)
    result = binarize(input_path, mode=_MODE.value, layers=_LAYERS.value,
                      binarize_first_last=_FIRST_LAST.value, **kwargs)
    common.print_job("binarize", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
