"""Measuring a chain of artifacts side by side: sizes (raw, gzip, packed), accuracy, agreement, latency.

Every artifact is measured as the flatbuffer a user would deploy: a `.keras`
model as its float32 `.tflite` (`convert --quantize=none`), a `.tflite` as
itself, and a `.tfc` as the `.tflite` it unpacks to (its packed size is the
`.tfc` file).  Accuracy and agreement come from LiteRT on the same images;
latency from one interleaved LiteRT run over all of them, so the ratios
share one machine state.
"""

import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np

from tfcompress.data.source import ImageSource
from tfcompress.data.images import Preprocessing
from tfcompress.evaluate.artifacts import TfliteArtifact, interleaved_latency
from tfcompress.evaluate.measure import bytes_size
from tfcompress.evaluate.run import predict_all, top_k_accuracy


@dataclasses.dataclass
class Measured:
    """One artifact's row (sizes in bytes; fractions in [0, 1]; None when not measurable)."""
    path: str
    file_bytes: int
    tflite_bytes: int
    tflite_gzip_bytes: int
    packed_bytes: int
    accuracy: Optional[float]
    agreement: Optional[float]
    latency_ms: Optional[float] = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def deployable_flatbuffer(path: str) -> bytes:
    """The .tflite bytes a model file deploys as (see the module docstring)."""
    from tfcompress.export.tfc import unpack  # pylint: disable=import-outside-toplevel
    from tfcompress.export.tflite import keras_float_flatbuffer  # pylint: disable=import-outside-toplevel
    from tfcompress.io.keras_models import load_keras  # pylint: disable=import-outside-toplevel
    lower = path.lower()
    if lower.endswith((".keras", ".h5")):
        return keras_float_flatbuffer(load_keras(path))
    with open(path, "rb") as f:
        data = f.read()
    return unpack(data, path) if lower.endswith(".tfc") else data


def measure(paths: Sequence[str], images: ImageSource, *, mean: float, std: float, latency_runs: int = 100,
            reference: int = 0) -> List[Measured]:
    """Measures each artifact; agreement is top-1 against `paths[reference]`; latency ratios come from one run.

    Images are read at the first artifact's input size, normalized as (pixel - mean) / std.
    """
    from tfcompress.export.tfc import pack  # pylint: disable=import-outside-toplevel
    flatbuffers = [deployable_flatbuffer(p) for p in paths]
    artifacts = [TfliteArtifact(path, flatbuffer=fb, mean=mean, std=std) for path, fb in zip(paths, flatbuffers)]
    prep = Preprocessing.for_input(artifacts[0].input_shape, mean=mean, std=std)
    outputs = [predict_all(artifact, images, prep) for artifact in artifacts]
    rows = []
    for path, fb, out in zip(paths, flatbuffers, outputs):
        size = bytes_size(fb)
        packed = len(pack(fb).data) if not path.lower().endswith(".tfc") else os.path.getsize(path)
        rows.append(Measured(
            path=path, file_bytes=os.path.getsize(path), tflite_bytes=size.raw, tflite_gzip_bytes=size.gzip,
            packed_bytes=packed,
            accuracy=top_k_accuracy(out, images.labels, 1) if images.labelled else None,
            agreement=float(np.mean(out.argmax(1) == outputs[reference].argmax(1)))))
    if latency_runs:
        sample = next(images.batches(prep, 1))
        for row, seconds in zip(rows, interleaved_latency(flatbuffers, sample, latency_runs)):
            row.latency_ms = seconds * 1e3
    return rows
