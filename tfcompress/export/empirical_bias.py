"""Empirical bias correction of an int8 TFLite model, layer by layer, against its float model.

Quantization leaves a systematic error in each layer's output: weight
rounding (ε·E[x]), the upstream layers' errors carried into its input, and
the asymmetry of clipped ranges.  Its mean per output channel is a constant
the layer's int32 bias can absorb.  Going through the convolutions and fully
connected layers in execution order, each layer's mean error is measured on
the calibration images with every earlier layer already corrected, and
subtracted from its bias (rounded to the bias's own scale, s_in·s_w[c]).

For a layer with a fused ReLU (or ReLU6) only the positions where the float
output is active are averaged: there a bias change moves the output one for
one, elsewhere the activation holds it at its bound.  A mean the images do
not resolve is left out (`_shift`), so noise is not written into a bias.

Reference:
  Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", arXiv:1906.04721 (Sec. 4.2: empirical bias correction, which
  compares the quantized and the float model's pre-activations on data).
"""

import dataclasses
from typing import Dict, List, Tuple

import numpy as np

from tfcompress.calibrate.stats import resolved_mean
from tfcompress.export import flatbuffer as fb
from tfcompress.export.litert import tensor_values

LINEAR = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# The fused activations whose active region is known: (lower bound, upper bound) of the float output.
_ACTIVE = {"NONE": (-np.inf, np.inf), "RELU": (0.0, np.inf), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}
# Images the means are estimated from (the calibration set's first ones): a convolution sees H*W values
# per channel per image, and the cost is one model run per image per layer.
MAX_IMAGES = 128


@dataclasses.dataclass(frozen=True)
class Corrected:
    """One corrected layer: its TFLite output tensor and the largest bias change, in output units."""
    tensor: str
    max_shift: float


def _activation(model, op) -> str:
    schema = fb.schema_module()
    names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
    options = op.builtinOptions
    return names.get(getattr(options, "fusedActivationFunction", 0), "OTHER")


def _buffer_readers(model) -> Dict[int, int]:
    """Buffer index -> how many operator inputs read it (a bias shared by two layers is left alone)."""
    tensors = model.subgraphs[0].tensors
    readers: Dict[int, int] = {}
    for op in model.subgraphs[0].operators:
        for t in op.inputs:
            if t >= 0:
                readers[tensors[t].buffer] = readers.get(tensors[t].buffer, 0) + 1
    return readers


def float_layers(quantized, float_model) -> Dict[int, object]:
    """id(quantized conv/dense op) -> the float model's op it was quantized from.

    The quantizer keeps the conv and dense ops in order but renames an output it moves to the model's
    boundary ("Identity" becomes "Identity1"), so the ops pair by position, checked by kind and weight
    shape; {} if the two models do not pair.
    """
    def linear(model):
        return [op for op in model.subgraphs[0].operators if fb.op_name(model, op) in LINEAR and len(op.inputs) > 1]

    qs, fs = linear(quantized), linear(float_model)
    if len(qs) != len(fs):
        return {}
    pairs = {}
    for q, f in zip(qs, fs):
        qw, fw = quantized.subgraphs[0].tensors[q.inputs[1]], float_model.subgraphs[0].tensors[f.inputs[1]]
        if fb.op_name(quantized, q) != fb.op_name(float_model, f) or list(qw.shape) != list(fw.shape):
            return {}
        pairs[id(q)] = f
    return pairs


def _shift(got: np.ndarray, want: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The bias change per channel: the mean error over the active values, where the sample resolves it
    (`calibrate.stats.resolved_mean`).

    Args:
      got, want: quantized and float outputs, [values, channels].
      lo, hi: the float output's active interval (the fused activation's).
    """
    active = (want > lo) & (want < hi)
    err = (got - want) * active
    return resolved_mean(active.sum(axis=0), err.sum(axis=0), (err ** 2).sum(axis=0))


def correct(quantized: bytes, float_model: bytes, images: np.ndarray, *, threads: int = 1
            ) -> Tuple[bytes, List[Corrected]]:
    """Returns (corrected int8 flatbuffer, [Corrected]).

    Args:
      quantized: the int8 (or uint8) flatbuffer.
      float_model: the float flatbuffer it was quantized from (the same tensor names).
      images: float NHWC calibration images (the first MAX_IMAGES are used).
    """
    images = np.asarray(images[:MAX_IMAGES], np.float32)
    model = fb.parse(quantized)
    float_parsed = fb.parse(float_model)
    pairs = float_layers(model, float_parsed)
    subgraph = model.subgraphs[0]
    buffer_readers = _buffer_readers(model)
    layers = []
    for op in subgraph.operators:
        name = fb.op_name(model, op)
        if name not in LINEAR or len(op.inputs) < 3 or op.inputs[2] < 0 or id(op) not in pairs:
            continue
        bias = subgraph.tensors[op.inputs[2]]
        activation = _activation(model, op)
        if (fb.TENSOR_DTYPES.get(bias.type) != np.int32 or activation not in _ACTIVE
                or buffer_readers.get(bias.buffer, 0) != 1 or bias.quantization is None):
            continue
        float_name = fb.text(float_parsed.subgraphs[0].tensors[pairs[id(op)].outputs[0]].name)
        layers.append((fb.text(subgraph.tensors[op.outputs[0]].name), float_name, bias, activation))
    if not layers:
        return quantized, []
    reference = tensor_values(float_model, [f for _, f, _, _ in layers], images, threads=threads)
    done: List[Corrected] = []
    current = quantized
    for name, float_name, bias, activation in layers:
        if float_name not in reference:
            continue
        got = tensor_values(current, [name], images, threads=threads).get(name)
        want = reference[float_name]
        if got is None or got.shape != want.shape:
            continue
        lo, hi = _ACTIVE[activation]
        channels = want.shape[-1]
        shift = _shift(got.reshape(-1, channels), want.reshape(-1, channels), lo, hi)
        scales = np.asarray(bias.quantization.scale, np.float64)
        scales = np.broadcast_to(scales, (channels,)) if scales.size in (1, channels) else None
        if scales is None:
            continue
        buffer = model.buffers[bias.buffer]
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32).astype(np.int64)
        step = np.round(shift / scales).astype(np.int64)
        values = np.clip(values - step, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        current = fb.serialize(model)
        done.append(Corrected(tensor=name, max_shift=float(np.max(np.abs(step * scales)))))
    return current, done
