"""Which TF kernels a training process runs: TF's own, not oneDNN's.

TF 2.21's oneDNN kernels corrupt the heap in training.  Measured on an Intel Xeon (AVX-512 VNNI, AMX),
where TF turns oneDNN on by default:

- the gradient of a stride-2 1x1 convolution with 3 or 8 input channels on a 60x60 to 64x64 map (the
  projection shortcut of a mini-Xception or a ResNet at 64x64 input) dies of SIGSEGV or a glibc malloc
  assertion within a few steps, in Keras `fit` as in a bare `tf.GradientTape`;
- capping oneDNN at AVX2 (`ONEDNN_MAX_CPU_ISA=AVX2`) moves the fault, it does not remove it: a sweep of
  448 stride-2 convolution gradients (1x1 and 3x3 kernels, 1 to 24 input channels, 16 to 112 pixels,
  SAME and VALID) aborted with "double free or corruption";
- with oneDNN off (`TF_ENABLE_ONEDNN_OPTS=0`) the same sweep and the same training run to the end.

So the commands that train start TensorFlow with oneDNN off, unless asked otherwise (`--onednn_training`).
It costs time: 3 epochs of Keras `fit` on the zoo and the shipped model took 1.3-2.3x as long as with
oneDNN's AVX-512 kernels.
TF reads the setting once, when it is imported; in Python, `tfcompress`'s training jobs make the same
choice if TensorFlow is not imported yet, and otherwise warn once when they train with oneDNN on.
"""

import os
import sys
from typing import MutableMapping, Optional

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def onednn_enabled() -> bool:
    """Whether this TF process runs oneDNN's kernels."""
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel
    return bool(_pywrap_util_port.IsMklEnabled())


def set_training_kernels(onednn: bool, environ: Optional[MutableMapping[str, str]] = None) -> None:
    """For a command that trains, before TensorFlow is imported: oneDNN on only if `onednn`."""
    environ = os.environ if environ is None else environ
    environ[VARIABLE] = "1" if onednn else "0"


def prefer_tf_kernels(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """For the Python API: oneDNN off if TensorFlow is not imported yet and the user has not chosen
    (`TF_ENABLE_ONEDNN_OPTS` unset).  Whether it was set."""
    environ = os.environ if environ is None else environ
    if "tensorflow" in sys.modules or VARIABLE in environ:
        return False
    environ[VARIABLE] = "0"
    return True


_warned = []


def warn_if_onednn_training(out=None) -> Optional[str]:
    """Before training: a one-time warning on stderr when oneDNN is on in this process and nobody asked for
    it (`TF_ENABLE_ONEDNN_OPTS` is not 1: TF's own default turned it on); the warning, or None."""
    if _warned or os.environ.get(VARIABLE) == "1" or not onednn_enabled():
        return None
    message = ("warning: TensorFlow's oneDNN kernels are on in this process, and they can crash training "
               "(SIGSEGV) on some CPUs; set TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow is imported")
    print(message, file=out or sys.stderr)
    _warned.append(message)
    return message
