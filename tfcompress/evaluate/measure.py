"""Op census, on-disk size (raw and gzip -9) and agreement between two graphs."""

import collections
import dataclasses
import gzip
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source
from tfcompress.errors import TfcError
from tfcompress.graph.runner import GraphRunner
from tfcompress.io.frozen import FrozenModel

LINEAR_FLOAT_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


def is_linear_quantized(op: str) -> bool:
    """A quantized conv/depthwise/matmul kernel, reference or fused."""
    return op.startswith("Quantized") and ("Conv2D" in op or "MatMul" in op)


def quantized_input_encoder(model: FrozenModel, sig):
    """For an input that arrives as quint8 codes over a (min, max) held in its `/quantized_min|max` consts,
    the function float values -> codes; None for any other input."""
    if sig.dtype != "quint8":
        return None
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    wanted = {sig.node + "/quantized_min": None, sig.node + "/quantized_max": None}
    for node in model.graph_def.node:  # Two consts read where they are, not a copy of the whole graph.
        if node.name in wanted:
            wanted[node.name] = float(tf.make_ndarray(node.attr["value"].tensor))
    lo, hi = wanted.values()
    step = (hi - lo) / 255.0
    return lambda x: np.clip(np.round((np.asarray(x, np.float64) - lo) / step), 0, 255).astype(
        tf.quint8.as_numpy_dtype)


def op_census(graph_def) -> Dict[str, int]:
    return dict(sorted(collections.Counter(n.op for n in graph_def.node).items()))


def _linear_kind(op: str) -> Optional[str]:
    """The float op a quantized kernel replaces: DepthwiseConv2dNative, Conv2D or MatMul (None: not linear)."""
    if not is_linear_quantized(op):
        return None
    return "DepthwiseConv2dNative" if "Depthwise" in op else "MatMul" if "MatMul" in op else "Conv2D"


def linear_coverage(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, tuple]:
    """{float op: (quantized, total)} for Conv2D, DepthwiseConv2dNative and MatMul present in `before`."""
    quantized = collections.Counter()
    for op, n in after.items():
        kind = _linear_kind(op)
        if kind is not None:
            quantized[kind] += n
    return {op: (quantized[op], before[op]) for op in LINEAR_FLOAT_OPS if before.get(op, 0)}


def linear_quantized_share(before: Dict[str, int], after: Dict[str, int]) -> float:
    """Fraction of the float graph's conv, depthwise and matmul ops that became quantized kernels."""
    coverage = linear_coverage(before, after)
    total = sum(t for _, t in coverage.values())
    return sum(q for q, _ in coverage.values()) / total if total else 0.0


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


# A reference output row is a probability vector when it is non-negative and sums to 1 within this.
PROBABILITY_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class HeadAgreement:
    """One output of the model.

    Attributes:
      key: the output's signature key.
      is_class: compared as a class vector (top-1).
      top1: fraction of images with the same argmax (None unless is_class).
      mse, mean_abs_error, max_abs_error: candidate against reference, over all values.
      reference_span: max - min of the reference output, the scale for the errors.
    """
    key: str
    is_class: bool
    top1: Optional[float]
    mse: float
    mean_abs_error: float
    max_abs_error: float
    reference_span: float


@dataclasses.dataclass
class Agreement:
    """How closely `candidate` follows `reference` on a set of images, output by output.

    Attributes:
      images: how many images were compared.
      heads: one entry per model output, in signature order.
    """
    images: int
    heads: List[HeadAgreement]

    @property
    def class_heads(self) -> List[HeadAgreement]:
        return [h for h in self.heads if h.is_class]

    @property
    def top1(self) -> Optional[float]:
        """Top-1 agreement of the class output (the first, if several; None if there is none)."""
        return self.class_heads[0].top1 if self.class_heads else None

    @property
    def max_abs_error(self) -> float:
        return max(h.max_abs_error for h in self.heads)

    @property
    def relative_error(self) -> float:
        """Largest max_abs_error as a fraction of its output's span."""
        return max((h.max_abs_error / h.reference_span if h.reference_span else float("inf")) for h in self.heads)


def _is_probability(rows: np.ndarray) -> bool:
    return rows.ndim == 2 and rows.shape[1] > 1 and bool(np.all(rows >= -PROBABILITY_TOLERANCE)) and \
        bool(np.all(np.abs(rows.sum(axis=1) - 1.0) <= PROBABILITY_TOLERANCE))


def class_outputs(model: FrozenModel, chosen: Optional[Sequence[Union[int, str]]]) -> Optional[List[int]]:
    """Indices of the outputs named (by index or signature key) in `chosen`; None when not chosen.

    Raises:
      TfcError: an index out of range or an unknown key.
    """
    if chosen is None or len(chosen) == 0:
        return None
    keys = [o.key for o in model.outputs]
    indices = []
    for item in chosen:
        text = str(item).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(keys):
                raise TfcError(f"--output_index {index} is out of range: the model has {len(keys)} output(s) "
                               f"({', '.join(keys)})")
        elif text in keys:
            index = keys.index(text)
        else:
            raise TfcError(f"--output_index {text!r} names no output (outputs: {', '.join(keys)})")
        indices.append(index)
    return indices


def agreement(reference: FrozenModel, candidate: FrozenModel, images=None, prep: Optional[Preprocessing] = None,
              batch_size: int = 32, classes: Optional[Sequence[Union[int, str]]] = None,
              data=None) -> Agreement:
    """Runs both models on the images (anything `data.source.as_source` takes); compares every output.

    Args:
      classes: the outputs that are class vectors (indices or signature keys).  By default an output is
        one when every reference row is a probability vector (a softmax head), or, for a single-output
        model, when it is a vector of more than one value; nothing assumes the first output.
      data: instead of images, tensor data bound to the reference (`data.tensors.BoundData`); a candidate
        input that arrives quantized (quint8, see `QuantConfig.quantized_input`) is fed its codes.
    """
    chosen = class_outputs(reference, classes)
    if len(candidate.outputs) != len(reference.outputs):
        raise TfcError(f"the models have {len(reference.outputs)} and {len(candidate.outputs)} outputs")
    if data is not None:
        feed_r, feed_c = data.tensors, [s.tensor for s in candidate.inputs]
        batches = data.batches(batch_size)
        encode = [quantized_input_encoder(candidate, s) for s in candidate.inputs]
    else:
        feed_r, feed_c = [reference.image_input().tensor], [candidate.image_input().tensor]
        batches = (([b], len(b)) for b in as_source(images).batches(prep, batch_size))
        encode = [None]
    outs_r, outs_c = [o.tensor for o in reference.outputs], [o.tensor for o in candidate.outputs]
    count = len(outs_r)
    ref_parts, cand_parts = [[] for _ in range(count)], [[] for _ in range(count)]
    with GraphRunner(reference.graph_def, feed_r, outs_r) as rr, \
            GraphRunner(candidate.graph_def, feed_c, outs_c) as rc:
        for feed, rows in batches:
            coded = [f if e is None else e(f) for f, e in zip(feed, encode)]
            for i, (a, b) in enumerate(zip(rr.run(*feed), rc.run(*coded))):
                ref_parts[i].append(np.asarray(a, np.float64).reshape(rows, -1))
                cand_parts[i].append(np.asarray(b, np.float64).reshape(rows, -1))
    total = sum(len(p) for p in ref_parts[0])
    heads = []
    for i, spec in enumerate(reference.outputs):
        ref = np.concatenate(ref_parts[i]) if total else np.zeros((0, 1))
        cand = np.concatenate(cand_parts[i]) if total else np.zeros((0, 1))
        if chosen is not None:
            is_class = i in chosen
        else:
            is_class = total > 0 and ref.shape[1] > 1 and (count == 1 or _is_probability(ref))
        diff = cand - ref
        heads.append(HeadAgreement(
            key=spec.key, is_class=is_class,
            top1=float(np.mean(ref.argmax(1) == cand.argmax(1))) if is_class and total else None,
            mse=float(np.mean(diff ** 2)) if total else 0.0,
            mean_abs_error=float(np.mean(np.abs(diff))) if total else 0.0,
            max_abs_error=float(np.max(np.abs(diff))) if total else 0.0,
            reference_span=float(ref.max() - ref.min()) if total else 0.0))
    return Agreement(images=total, heads=heads)
