"""The evaluate job: accuracy, agreement with a reference, latency, size and cost of any artifact."""

import dataclasses
import os
from typing import Optional, Sequence, Tuple, Union

from tfcompress.errors import TfcError

Norm = Union[float, Sequence[float], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How a finished model is run.

    Attributes:
      input_mean, input_std: normalization; None: the .tflite metadata's, else 0 and 255.
      channel_order: "rgb" or "bgr"; None: the .tflite metadata's, else "rgb".
      threads: threads for LiteRT, TF (intra-op) and onnxruntime.
      quantized_io: int8/uint8 inputs: "quantize" the float input with the model's scale, or feed "pixels".
      xnnpack: LiteRT with XNNPACK (False: builtin kernels only).
      allow_unsafe_ops: accept graphs with ops outside the allowlist of pure ops (file, exec, debug, dataset or unknown ops).
    """
    input_mean: Norm = None
    input_std: Norm = None
    channel_order: Optional[str] = None
    threads: int = 1
    quantized_io: str = "quantize"
    xnnpack: bool = True
    allow_unsafe_ops: bool = False


def _one_or_all(values):
    """A metadata list as a user gives it: one float when every channel shares it, else a tuple."""
    return float(values[0]) if len(set(values)) == 1 else tuple(float(v) for v in values)


def metadata_of(path: str):
    """The TFLite Metadata (`export.metadata.ModelInfo`) of a .tflite file, or None (no metadata, other format)."""
    if not (path.lower().endswith(".tflite") and os.path.isfile(path)):
        return None
    from tfcompress.export.metadata import read  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as f:
        return read(f.read(), path)


def normalization(path: str, mean: Norm = None, std: Norm = None, channel_order: Optional[str] = None) -> Tuple:
    """(mean, std, channel order): those given, else the .tflite metadata's, else (0, 255, "rgb")."""
    if (path.lower().endswith(".tflite") and (mean is None or std is None or channel_order is None)
            and os.path.isfile(path)):
        meta = metadata_of(path)
        if meta is not None:
            mean = _one_or_all(meta.mean) if mean is None else mean
            std = _one_or_all(meta.std) if std is None else std
            channel_order = meta.channel_order if channel_order is None else channel_order
    return ((0.0 if mean is None else mean), (255.0 if std is None else std),
            "rgb" if channel_order is None else channel_order)


def open_model(path: str, options: RuntimeOptions = RuntimeOptions()):
    """(artifact, preprocessing) for a finished model in any format eval takes.

    Raises:
      TfcError: a missing, corrupt or unsafe model.
    """
    from tfcompress.data.images import Preprocessing  # pylint: disable=import-outside-toplevel
    from tfcompress.evaluate.artifacts import QuantizedIO, open_artifact  # pylint: disable=import-outside-toplevel
    if not isinstance(path, (str, os.PathLike)):
        raise TfcError(f"artifact must be a path, not {type(path).__name__}")
    path = os.fspath(path)
    mean, std, order = normalization(path, options.input_mean, options.input_std, options.channel_order)
    artifact = open_artifact(path, threads=options.threads, quantized_io=QuantizedIO(options.quantized_io),
                             xnnpack=options.xnnpack, allow_unsafe_ops=options.allow_unsafe_ops, mean=mean, std=std)
    return artifact, Preprocessing.for_input(artifact.input_shape, mean=mean, std=std, channel_order=order)


def evaluate(artifact: str, images, *, reference: Optional[str] = None, labels: Optional[str] = None,
             runs: int = 50, warmup: int = 5, options: RuntimeOptions = RuntimeOptions()):
    """Accuracy (when labelled), top-1 agreement with `reference`, latency, size and cost of `artifact`.

    Args:
      artifact: a SavedModel (also eightbit), .keras, .h5, frozen .pb, .tflite or .onnx path.
      images: a labelled folder DIR/<label>/*, a flat folder, a pixel array (with labels through
        `data.source.ArraySource`), or a tf.data.Dataset.
      reference: a float model to measure agreement against.
      labels: for a folder: a labels file naming the classes in output order (default: a .tflite's
        metadata labels, else the class folders in sorted order).
      runs, warmup: timed and untimed runs for the latency median (batch 1).
      options: normalization and runtime.

    Returns:
      An `evaluate.run.EvalResult` (`as_dict()` gives the --json object).

    Raises:
      TfcError: a bad model or images, labels that do not match the outputs, non-finite outputs.
    """
    from tfcompress.data.source import as_source  # pylint: disable=import-outside-toplevel
    from tfcompress.evaluate.run import evaluate as run_evaluation  # pylint: disable=import-outside-toplevel
    meta = metadata_of(artifact) if labels is None and isinstance(images, (str, os.PathLike)) else None
    source = as_source(images, labels_file=labels if meta is None or meta.labels is None else meta.labels)
    model, prep = open_model(artifact, options)
    ref = open_model(reference, options)[0] if reference is not None else None
    try:
        return run_evaluation(model, source, prep, reference=ref, runs=runs, warmup=warmup, threads=options.threads)
    finally:
        model.close()
        if ref is not None:
            ref.close()
