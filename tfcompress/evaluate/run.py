"""Evaluating one artifact: accuracy, agreement with a reference, latency, size and cost."""

import dataclasses
from typing import Optional

import numpy as np

from tfcompress.data.folders import check_output_size
from tfcompress.data.images import Preprocessing
from tfcompress.data.source import ImageSource, as_source
from tfcompress.errors import TfcError
from tfcompress.evaluate.artifacts import Artifact, median_ms


@dataclasses.dataclass
class EvalResult:
    """What `tfcompress eval` reports (field names are the --json keys).

    Accuracies and agreement are fractions in [0, 1]; None when not measurable
    (no labels, no reference).
    """
    model: str
    runtime: str
    images: int
    top1: Optional[float]
    top5: Optional[float]
    agreement_top1: Optional[float]
    max_abs_error: Optional[float]
    latency_ms: float
    latency_runs: int
    threads: int
    size_bytes: int
    size_gzip_bytes: int
    params: int
    macs: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def predict_all(artifact: Artifact, images, prep: Preprocessing, batch_size: int = 32) -> np.ndarray:
    """Float outputs for every image (anything `data.source.as_source` takes), in order, flattened to [N, K]."""
    source = as_source(images)
    outputs = [artifact.predict(b) for b in source.batches(prep, batch_size)]
    result = np.concatenate(outputs).reshape(len(source), -1)
    if not np.all(np.isfinite(result)):
        raise TfcError(f"{artifact.path} produced NaN or Inf outputs")
    return result


def top_k_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k largest outputs (ties broken by lower index)."""
    k = min(k, outputs.shape[1])
    order = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(order == labels[:, None], axis=1)))


def evaluate(artifact: Artifact, images: ImageSource, prep: Preprocessing, *,
             reference: Optional[Artifact] = None, runs: int = 50, warmup: int = 5, threads: int = 1) -> EvalResult:
    """Runs `artifact` (and `reference`) on the images (an ImageSource, with labels or not) and times it.

    Raises:
      TfcError: the image size does not match the model's input, labels do not
        match the output size, or the outputs are not finite.
    """
    if runs < 50:
        raise TfcError(f"latency needs at least 50 timed runs (got {runs})")
    _, h, w, c = artifact.input_shape
    if (h, w, c) != (prep.height, prep.width, prep.channels):
        raise TfcError(f"{artifact.path} takes {h}x{w}x{c} inputs but the preprocessing gives "
                       f"{prep.height}x{prep.width}x{prep.channels}")
    outputs = predict_all(artifact, images, prep)
    check_output_size(images, outputs.shape[1])
    top1 = top5 = agree = max_err = None
    if images.labelled:
        top1 = top_k_accuracy(outputs, images.labels, 1)
        top5 = top_k_accuracy(outputs, images.labels, 5)
    if reference is not None:
        ref = predict_all(reference, images, prep)
        if ref.shape != outputs.shape:
            raise TfcError(f"reference {reference.path} outputs {ref.shape[1]} values, {artifact.path} "
                           f"{outputs.shape[1]}")
        agree = float(np.mean(np.argmax(ref, 1) == np.argmax(outputs, 1)))
        max_err = float(np.max(np.abs(ref.astype(np.float64) - outputs)))
    sample = next(images.batches(prep, 1))
    times = artifact.latency(sample, runs=runs, warmup=warmup)
    size = artifact.size()
    cost = artifact.cost()
    return EvalResult(model=artifact.path, runtime=artifact.kind, images=len(images), top1=top1, top5=top5,
                      agreement_top1=agree, max_abs_error=max_err, latency_ms=median_ms(times), latency_runs=runs,
                      threads=threads, size_bytes=size.raw, size_gzip_bytes=size.gzip, params=cost.params,
                      macs=cost.macs)
