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
    with GraphRunner(model.graph_def, [model.image_input().tensor], fetches, inner_fetches=True) as runner:
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


@dataclasses.dataclass
class GraphTensorError:
    """One float tensor of the float graph, as the eightbit graph computes it (errors in steps: span / 255).

    Attributes:
      own: the relative RMS error this op adds, its output's minus the largest of its compared inputs'.
    """
    index: int
    op: str
    tensor: str
    step: float
    max_steps: float
    mean_steps: float
    relative_rms: float
    own: float


@dataclasses.dataclass
class GraphParityReport:
    """The eightbit graph against the float graph it was built from, tensor by tensor, in graph order.

    Attributes:
      first_divergence: the first tensor whose mean error exceeds one step (the .tflite parity's criterion).
      largest_jump: the op that adds the most relative RMS error (`GraphTensorError.own`).
      outputs: per model output, (top-1 agreement, mean absolute error).
    """
    images: int
    tensors: List[GraphTensorError]
    first_divergence: Optional[GraphTensorError]
    largest_jump: Optional[GraphTensorError]
    outputs: Dict[str, tuple]


# Ops whose outputs are not compared: constants and the graph's inputs.
_UNCOMPARED = ("Const", "Placeholder", "PlaceholderWithDefault", "Identity", "NoOp")


def check_graph_parity(quantized: FrozenModel, reference: FrozenModel, images: np.ndarray,
                       batch_size: int = 8) -> GraphParityReport:
    """Compares every float tensor the eightbit graph keeps under the float graph's node name.

    The eightbit builder gives each float value it computes (a Dequantize, an
    accumulator read back, a float op) the name of the float node it stands
    for, so the two graphs are matched by name.  Statistics are summed over
    batches, so memory stays at one batch of every tensor.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tfcompress.graph.graph import Graph, node_name  # pylint: disable=import-outside-toplevel
    from tfcompress.graph.runner import imported_graph  # pylint: disable=import-outside-toplevel
    ordered = Graph(reference.graph_def).to_graph_def().node
    ref_graph, q_graph = imported_graph(reference.graph_def), imported_graph(quantized.graph_def)
    q_names = {op.name for op in q_graph.get_operations()}
    nodes = [n for n in ordered if n.op not in _UNCOMPARED and n.name in q_names
             and ref_graph.get_tensor_by_name(n.name + ":0").dtype == tf.float32
             and q_graph.get_tensor_by_name(n.name + ":0").dtype == tf.float32]
    names = [n.name + ":0" for n in nodes]
    outputs = [o.tensor for o in reference.outputs]
    sums = {t: np.zeros(5) for t in names}  # sum |d|, max |d|, sum d^2, sum ref^2, count
    spans = {t: [np.inf, -np.inf] for t in names}
    agree = {t: [0.0, 0.0] for t in outputs}  # top-1 matches, sum |d|
    with GraphRunner(reference.graph_def, [reference.image_input().tensor], names + outputs,
                     inner_fetches=True) as ref_run, \
            GraphRunner(quantized.graph_def, [quantized.image_input().tensor], names + outputs,
                        inner_fetches=True) as q_run:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            ref_values, q_values = ref_run.run(batch), q_run.run(batch)
            for t, r, q in zip(names, ref_values, q_values):
                r, d = r.astype(np.float64), q.astype(np.float64) - r.astype(np.float64)
                s = sums[t]
                s += [np.abs(d).sum(), 0.0, (d * d).sum(), (r * r).sum(), d.size]
                s[1] = max(s[1], float(np.abs(d).max(initial=0.0)))
                spans[t] = [min(spans[t][0], float(r.min(initial=np.inf))),
                            max(spans[t][1], float(r.max(initial=-np.inf)))]
            for t, r, q in zip(outputs, ref_values[len(names):], q_values[len(names):]):
                r, q = r.reshape(len(batch), -1), q.reshape(len(batch), -1)
                agree[t][0] += float(np.sum(r.argmax(1) == q.argmax(1)))
                agree[t][1] += float(np.abs(r.astype(np.float64) - q).mean(1).sum())
    rows, relative = [], {}
    for index, (node, t) in enumerate(zip(nodes, names)):
        total_abs, max_abs, sq, ref_sq, count = sums[t]
        step = (spans[t][1] - spans[t][0]) / 255.0 or 1.0
        relative[node.name] = float(np.sqrt(sq / ref_sq)) if ref_sq > 0 else 0.0
        inputs = [relative[node_name(i)] for i in node.input if node_name(i) in relative]
        rows.append(GraphTensorError(index=index, op=node.op, tensor=t, step=step, max_steps=max_abs / step,
                                     mean_steps=total_abs / max(count, 1) / step, relative_rms=relative[node.name],
                                     own=relative[node.name] - max(inputs, default=0.0)))
    return GraphParityReport(
        images=len(images), tensors=rows,
        first_divergence=next((r for r in rows if r.mean_steps > _ONE_STEP), None),
        largest_jump=max(rows, key=lambda r: r.own, default=None),
        outputs={t: (a / len(images), e / len(images)) for t, (a, e) in agree.items()})


def describe_graph(row: Optional[GraphTensorError]) -> str:
    if row is None:
        return "none"
    return f"{row.op} {row.tensor[:-2]} (relative RMS error {row.relative_rms:.2%}, {row.own:+.2%} from this op)"
