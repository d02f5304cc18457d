"""Selective float fallback: a per-layer quantization error report, and keeping the worst layers float.

The report runs the float and the int8 flatbuffer of the same model on the
same images with every operator output exposed, and compares each quantized
operator output (dequantized) with the float tensor of the same name.  As
TFLite's QuantizationDebugger does, it gives the RMSE in units of the
tensor's quantization step; it also gives the error relative to the float
tensor's spread, and how much of that a layer *adds* over its inputs, which
is what ranks layers (a late layer inherits all earlier errors, so ranking by
cumulative error would always blame the last layers).

`search_min_agreement` then re-runs only the quantizer (the calibrated
flatbuffer is reused) with the worst layers denylisted, one more at a time,
until the top-1 agreement with float reaches the target.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.export import flatbuffer as fb
from tfcompress.export.flatbuffer import layer_label
from tfcompress.export.litert import LiteRTRunner
from tfcompress.export.tflite import quantize_calibrated

# Boundary conversions, not layers: never reported or kept float.
_SKIP_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclasses.dataclass
class LayerError:
    """Quantization error of one operator output.

    Attributes:
      layer: short name (the Keras layer scope), accepted by --float_layers.
      tensor: the TFLite tensor name.
      op: TFLite operator.
      rmse: root mean square error against the float tensor.
      steps: rmse / scale (the QuantizationDebugger's "rmse/scale").
      relative: rmse / standard deviation of the float tensor.
      added: relative minus the largest relative error of its inputs.
    """
    layer: str
    tensor: str
    op: str
    rmse: float
    steps: float
    relative: float
    added: float


def _all_outputs(flatbuffer: bytes, images: np.ndarray) -> Dict[str, np.ndarray]:
    return LiteRTRunner(fb.expose_all_tensors(flatbuffer), xnnpack=False).outputs_by_name(images)


def layer_errors(float_flatbuffer: bytes, quantized_flatbuffer: bytes, images: np.ndarray) -> List[LayerError]:
    """Per-operator errors of the quantized model, worst (largest `added`) first."""
    reference = _all_outputs(float_flatbuffer, images)
    quantized = _all_outputs(quantized_flatbuffer, images)
    model = fb.parse(quantized_flatbuffer)
    infos = fb.tensors(model)
    relative: Dict[str, float] = {}
    rows = []
    for op in fb.operators(model):
        if op.name in _SKIP_OPS or not op.outputs:
            continue
        out = infos[op.outputs[0]]
        if out.name not in reference or out.name not in quantized or not out.scales:
            continue
        ref, got = reference[out.name].astype(np.float64), quantized[out.name].astype(np.float64)
        if ref.shape != got.shape:
            continue
        rmse = float(np.sqrt(np.mean((ref - got) ** 2)))
        rel = rmse / (float(np.std(ref)) or 1.0)
        relative[out.name] = rel
        inherited = max([relative.get(infos[i].name, 0.0) for i in op.inputs if i >= 0 and not infos[i].constant],
                        default=0.0)
        rows.append(LayerError(layer=layer_label(out.name), tensor=out.name, op=op.name, rmse=rmse,
                               steps=rmse / out.scales[0], relative=rel, added=rel - inherited))
    if not rows:
        raise TfcError("no quantized operator output matched the float model; cannot rank layers")
    return sorted(rows, key=lambda r: (-r.added, r.tensor))


def resolve_float_layers(requested: Sequence[str], quantized_flatbuffer: bytes) -> List[str]:
    """TFLite tensor names for --float_layers entries (a layer label, a TF op name or a full tensor name).

    Raises:
      TfcError: an entry matches no operator output.
    """
    model = fb.parse(quantized_flatbuffer)
    infos = fb.tensors(model)
    outputs = [infos[op.outputs[0]].name for op in fb.operators(model) if op.outputs and op.name not in _SKIP_OPS]
    chosen = []
    for want in requested:
        hits = [name for name in outputs
                if name == want or layer_label(name) == want or want in name.split(";")
                or any(want in part.split("/") for part in name.split(";"))]
        if not hits:
            raise TfcError(f"--float_layers: no layer named {want!r} (see the per-layer report for names)")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def float_outputs(flatbuffer: bytes) -> List[str]:
    """Names of operator outputs that are float in a quantized model (the layers that fell back)."""
    model = fb.parse(flatbuffer)
    infos = fb.tensors(model)
    return [infos[op.outputs[0]].name for op in fb.operators(model)
            if op.outputs and op.name not in _SKIP_OPS and infos[op.outputs[0]].dtype == np.float32]


def top1_agreement(flatbuffer: bytes, images: np.ndarray, reference: np.ndarray) -> float:
    got = LiteRTRunner(flatbuffer).predict(images)
    return float(np.mean(np.argmax(got.reshape(len(images), -1), 1) == np.argmax(reference, 1)))


@dataclasses.dataclass
class FallbackResult:
    flatbuffer: bytes
    float_layers: List[str]  # tensors kept float, in the order they were added
    agreement: float
    reached: bool
    steps: List[Tuple[int, float, int]]  # (layers kept float, agreement, size in bytes) per trial


def search_min_agreement(calibrated: bytes, mode: str, per_channel: bool, ranking: Sequence[LayerError],
                         images: np.ndarray, reference: np.ndarray, target: float,
                         start: Sequence[str] = ()) -> FallbackResult:
    """Keeps the worst-ranked layers float, one more at a time, until top-1 agreement >= target."""
    kept = list(start)
    flatbuffer = quantize_calibrated(calibrated, mode, per_channel, kept)
    agreement = top1_agreement(flatbuffer, images, reference)
    steps = [(len(kept), agreement, len(flatbuffer))]
    for row in ranking:
        if agreement >= target:
            break
        if row.tensor in kept:
            continue
        kept.append(row.tensor)
        flatbuffer = quantize_calibrated(calibrated, mode, per_channel, kept)
        agreement = top1_agreement(flatbuffer, images, reference)
        steps.append((len(kept), agreement, len(flatbuffer)))
    return FallbackResult(flatbuffer=flatbuffer, float_layers=kept, agreement=agreement,
                          reached=agreement >= target, steps=steps)
