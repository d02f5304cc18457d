"""qat: quantization-aware training of a Keras 3 model; `convert --quantize=int8` then reads its ranges.

    python tools/qat.py --input=net.keras --output=net_qat.keras --epochs=5 --train_images=data/train
    python tools/convert.py --input=net_qat.keras --output=net_qat_int8.tflite --quantize=int8

Batch norm is folded into the layer before it, weights are fake-quantized
per output channel (symmetric, [-127, 127]) and activations per tensor
(EMA ranges), as tfcompress/qat/qat.py describes.  The ranges start from one
pass over the training images, then train with the weights (labels and/or
distillation from the original, as every training command).  `convert`
recognizes the fake-quantization ops: no calibration images are read, and
the int8 model's outputs stay within one quantization step of the QAT
model's.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

_JOB = common.define_training_flags(epochs=5)


def main() -> None:
    from tfcompress.api.keras_jobs import qat

    input_path, default_run, kwargs = common.keras_job(_JOB)
    result = qat(input_path, **kwargs)
    common.print_job("qat", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
