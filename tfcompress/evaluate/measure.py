"""Op census, on-disk size (raw and gzip -9) and agreement between two graphs."""

import collections
import dataclasses
import gzip
import os
from typing import Dict

import numpy as np

from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source
from tfcompress.graph.runner import GraphRunner
from tfcompress.io.frozen import FrozenModel

LINEAR_FLOAT_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


def is_linear_quantized(op: str) -> bool:
    """A quantized conv/depthwise/matmul kernel, reference or fused."""
    return op.startswith("Quantized") and ("Conv2D" in op or "MatMul" in op)


def op_census(graph_def) -> Dict[str, int]:
    return dict(sorted(collections.Counter(n.op for n in graph_def.node).items()))


def linear_quantized_share(before: Dict[str, int], after: Dict[str, int]) -> float:
    """Fraction of the float graph's conv/matmul ops that became quantized kernels."""
    total = sum(before.get(op, 0) for op in LINEAR_FLOAT_OPS)
    quantized = sum(n for op, n in after.items() if is_linear_quantized(op))
    return quantized / total if total else 0.0


@dataclasses.dataclass
class Size:
    raw: int
    gzip: int


def bytes_size(data: bytes) -> Size:
    """Raw length and gzip -9 length (no timestamp, so the same bytes always give the same size)."""
    return Size(raw=len(data), gzip=len(gzip.compress(data, compresslevel=9, mtime=0)))


def path_size(path: str) -> Size:
    """Bytes of a file, or of all files under a directory (sorted), raw and gzip -9 of the concatenation."""
    if os.path.isdir(path):
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)
    else:
        files = [path]
    return bytes_size(b"".join(open(f, "rb").read() for f in files))


def graph_size(graph_def) -> Size:
    return bytes_size(graph_def.SerializeToString(deterministic=True))


@dataclasses.dataclass
class Agreement:
    """How closely `candidate` follows `reference` on a set of images.

    Attributes:
      images: how many images were compared.
      top1: fraction with the same argmax (None if the output is not a class vector).
      max_abs_error: largest |reference - candidate| over all outputs.
      reference_span: max - min of the reference outputs, the scale for max_abs_error.
    """
    images: int
    top1: float
    max_abs_error: float
    reference_span: float = 0.0

    @property
    def relative_error(self) -> float:
        """max_abs_error as a fraction of the reference outputs' span."""
        return self.max_abs_error / self.reference_span if self.reference_span else float("inf")


def agreement(reference: FrozenModel, candidate: FrozenModel, images, prep: Preprocessing,
              batch_size: int = 32) -> Agreement:
    """Runs both models on the images (anything `data.source.as_source` takes); compares their first outputs."""
    feed_r, feed_c = reference.image_input().tensor, candidate.image_input().tensor
    out_r, out_c = reference.outputs[0].tensor, candidate.outputs[0].tensor
    same = total = 0
    max_err = 0.0
    lo, hi = np.inf, -np.inf
    classes = True
    with GraphRunner(reference.graph_def, [feed_r], [out_r]) as rr, \
            GraphRunner(candidate.graph_def, [feed_c], [out_c]) as rc:
        for batch in as_source(images).batches(prep, batch_size):
            a, b = rr.run(batch)[0], rc.run(batch)[0]
            max_err = max(max_err, float(np.max(np.abs(a.astype(np.float64) - b))))
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            if a.ndim == 2 and a.shape[1] > 1:
                same += int(np.sum(np.argmax(a, 1) == np.argmax(b, 1)))
            else:
                classes = False
            total += len(batch)
    return Agreement(images=total, top1=same / total if classes and total else None, max_abs_error=max_err,
                     reference_span=hi - lo if total else 0.0)
