"""Parity: the float reference, LiteRT with XNNPACK and LiteRT's builtin kernels, tensor by tensor.

Every operator output of the flatbuffer is exposed as a subgraph output, so
XNNPACK has to write it too, and both interpreters run the same images.  The
float reference is the optimized TF graph the flatbuffer was converted from:
a TFLite tensor named "conv;bias;relu" holds the value of the TF op that comes
last of those in the graph, which is fetched from TF.

Differences are measured in quantization steps of the TFLite tensor (its
scale); a float tensor's step is its reference span / 255, the step an int8
tensor with the same range would have.  Two kernel sets *diverge* at the first
tensor whose maximum difference exceeds one step (they implement the same
integer arithmetic, so anything larger is a kernel difference, not rounding).
Against float, where every layer adds rounding, a tensor diverges when its
*mean* absolute error exceeds one step.
"""

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from tfcompress.export import flatbuffer as fb
from tfcompress.export.flatbuffer import layer_label
from tfcompress.export.litert import LiteRTRunner
from tfcompress.export.tflite import graph_order, tf_op_for_tensor
from tfcompress.graph.runner import GraphRunner, run_model
from tfcompress.io.frozen import FrozenModel

# A difference of exactly one step, computed in float, may land a hair above 1.
_ONE_STEP = 1.0 + 1e-4
# Operators that only convert at the boundary; they are not compared.
_BOUNDARY = ("QUANTIZE", "DEQUANTIZE")


@dataclasses.dataclass
class TensorParity:
    """One operator output.  Differences are in steps; None where the float value was unavailable."""
    index: int
    op: str
    tensor: str
    step: float
    kernels_max: float          # max |XNNPACK - builtin| / step
    xnnpack_float_max: Optional[float]
    xnnpack_float_mean: Optional[float]
    builtin_float_mean: Optional[float]


@dataclasses.dataclass
class ParityReport:
    images: int
    tensors: List[TensorParity]
    first_kernel_divergence: Optional[TensorParity]
    first_xnnpack_float_divergence: Optional[TensorParity]
    first_builtin_float_divergence: Optional[TensorParity]
    output_top1_xnnpack_vs_float: Optional[float]
    output_top1_builtin_vs_float: Optional[float]


def _float_values(model: FrozenModel, names: List[str], images: np.ndarray) -> Dict[str, np.ndarray]:
    """TF values for TFLite tensor names whose last-in-graph-order op exists in `model`."""
    order = graph_order(model)
    wanted = {}
    for name in names:
        op = tf_op_for_tensor(name, order)
        if op is not None:
            wanted[name] = op + ":0"
    fetches = sorted(set(wanted.values()))
    if not fetches:
        return {}
    with GraphRunner(model.graph_def, [model.image_input().tensor], fetches) as runner:
        values = dict(zip(fetches, runner.run(images)))
    return {name: values[t] for name, t in wanted.items()}


def _steps(a: np.ndarray, b: np.ndarray, step: float):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)) / step
    return float(d.max()), float(d.mean())


def check_parity(flatbuffer: bytes, reference: Optional[FrozenModel], images: np.ndarray) -> ParityReport:
    """Runs the three paths on `images` (float NHWC) and compares every operator output."""
    exposed = fb.expose_all_tensors(flatbuffer)
    xnn = LiteRTRunner(exposed, source="xnnpack", xnnpack=True).outputs_by_name(images)
    ref = LiteRTRunner(exposed, source="builtin", xnnpack=False).outputs_by_name(images)
    model = fb.parse(flatbuffer)
    infos = fb.tensors(model)
    ops = [op for op in fb.operators(model) if op.outputs and op.name not in _BOUNDARY]
    names = [infos[op.outputs[0]].name for op in ops]
    floats = _float_values(reference, names, images) if reference is not None else {}
    rows = []
    for op, name in zip(ops, names):
        if name not in xnn or name not in ref:
            continue
        a, b = xnn[name], ref[name]
        f = floats.get(name)
        if f is not None:
            f = f.reshape(a.shape) if f.size == a.size else None
        info = infos[op.outputs[0]]
        basis = f if f is not None else b
        step = info.scales[0] if info.scales else (float(basis.max() - basis.min()) / 255.0 or 1.0)
        kernels_max, _ = _steps(a, b, step)
        xf = _steps(a, f, step) if f is not None else (None, None)
        bf = _steps(b, f, step) if f is not None else (None, None)
        rows.append(TensorParity(index=op.index, op=op.name, tensor=name, step=step, kernels_max=kernels_max,
                                 xnnpack_float_max=xf[0], xnnpack_float_mean=xf[1], builtin_float_mean=bf[1]))
    first = lambda pred: next((r for r in rows if pred(r)), None)  # noqa: E731
    out_name = infos[model.subgraphs[0].outputs[0]].name
    top_x = top_b = None
    if reference is not None:
        f_out = run_model(reference, images)
        top_x = float(np.mean(np.argmax(xnn[out_name].reshape(len(images), -1), 1) == np.argmax(f_out, 1)))
        top_b = float(np.mean(np.argmax(ref[out_name].reshape(len(images), -1), 1) == np.argmax(f_out, 1)))
    return ParityReport(
        images=len(images), tensors=rows,
        first_kernel_divergence=first(lambda r: r.kernels_max > _ONE_STEP),
        first_xnnpack_float_divergence=first(lambda r: r.xnnpack_float_mean is not None
                                             and r.xnnpack_float_mean > _ONE_STEP),
        first_builtin_float_divergence=first(lambda r: r.builtin_float_mean is not None
                                             and r.builtin_float_mean > _ONE_STEP),
        output_top1_xnnpack_vs_float=top_x, output_top1_builtin_vs_float=top_b)


def describe(row: Optional[TensorParity]) -> str:
    if row is None:
        return "none"
    return f"operator {row.index} {row.op} -> {layer_label(row.tensor)} ({row.tensor[:80]})"
