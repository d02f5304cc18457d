"""ONNX export through tf2onnx, checked against the float graph in onnxruntime.

The optimized float graph (batch norm folded, identities stripped) is
converted, so the ONNX model computes what every other artifact of the same
model computes.  The input keeps TF's NHWC layout; tf2onnx inserts the
transposes ONNX's NCHW convolutions need.
"""

import dataclasses
import hashlib
import re
from typing import Dict, Sequence

import numpy as np

from tfcompress.errors import TfcError
from tfcompress.graph.runner import GraphRunner
from tfcompress.io.frozen import FrozenModel

# Lowest and highest opset accepted (tf2onnx 1.17 targets up to 18).
MIN_OPSET, MAX_OPSET = 13, 18


def export_onnx(model: FrozenModel, opset: int = 17) -> bytes:
    """The serialized ONNX model.

    Raises:
      TfcError: opset out of range, or tf2onnx cannot convert an op.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise TfcError(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    import tf2onnx  # pylint: disable=import-outside-toplevel
    try:
        proto, _ = tf2onnx.convert.from_graph_def(
            model.graph_def, input_names=[s.tensor for s in model.inputs],
            output_names=[s.tensor for s in model.outputs], opset=opset)
    except Exception as e:  # tf2onnx raises a variety of types for unsupported ops.
        raise TfcError(f"tf2onnx failed: {str(e).strip().splitlines()[0][:300]}") from e
    proto.producer_version = tf2onnx.__version__
    return canonicalize(proto).SerializeToString(deterministic=True)


def _strip_counter(name: str) -> str:
    return re.sub(r"__\d+", "", name)


def canonicalize(proto):
    """The same ONNX graph with a deterministic node order and names.

    tf2onnx's optimizers visit nodes in an order that changes from run to run,
    which shows in the node order and in the counters (`__44`) of the names it
    makes up.  Nodes are re-ordered by (depth, structural hash), which is a
    topological order that depends only on the graph, and generated names lose
    their counters (a clash gets the node's canonical position instead);
    initializers are named after their first consumer.
    """
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    inits = {t.name: hashlib.sha256(t.SerializeToString(deterministic=True).replace(
        t.name.encode(), b"")).hexdigest() for t in graph.initializer}
    memo: Dict[int, tuple] = {}

    def signature(node) -> tuple:
        key = id(node)
        if key not in memo:
            parts, depth = [node.op_type, node.domain], 0
            for a in sorted(node.attribute, key=lambda a: a.name):
                parts.append(a.SerializeToString(deterministic=True).hex())
            for name in node.input:
                if name in producer:
                    d, h = signature(producer[name])
                    depth = max(depth, d + 1)
                    parts.append(h + str(list(producer[name].output).index(name)))
                else:
                    parts.append(inits.get(name, "input:" + name))
            memo[key] = (depth, hashlib.sha256("|".join(parts).encode()).hexdigest())
        return memo[key]

    nodes = sorted(graph.node, key=lambda n: signature(n) + (_strip_counter(n.name),))
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    renames: Dict[str, str] = {}
    used = set(keep)

    def rename(name: str, position: int) -> str:
        if not name or name in keep:
            return name
        if name not in renames:
            new = _strip_counter(name)
            if new in used:
                new = f"{new}_c{position}"
            used.add(new)
            renames[name] = new
        return renames[name]

    node_names = set()
    for k, node in enumerate(nodes):
        new_name = _strip_counter(node.name)
        node.name = new_name if new_name not in node_names else f"{new_name}_c{k}"
        node_names.add(node.name)
        for i, name in enumerate(node.input):
            # tf2onnx shares equal constants under whichever name it met first: name them by first use.
            if name in inits and name not in renames:
                renames[name] = f"{node.name}/input{i}"
        for i, name in enumerate(node.output):
            node.output[i] = rename(name, k)
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
    ordered = list(nodes)
    del graph.node[:]
    graph.node.extend(ordered)
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)
    initializers = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    for vi in graph.value_info:
        vi.name = renames.get(vi.name, vi.name)
    values = sorted(graph.value_info, key=lambda v: v.name)
    del graph.value_info[:]
    graph.value_info.extend(values)
    return proto


@dataclasses.dataclass
class OnnxParity:
    images: int
    max_abs_diff: float
    top1_agreement: float


def check_parity(model: FrozenModel, onnx_bytes: bytes, batches: Sequence[np.ndarray]) -> OnnxParity:
    """Runs the float graph (TF) and the ONNX model (onnxruntime, CPU) on the same batches."""
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    diff, same, total = 0.0, 0, 0
    with GraphRunner(model.graph_def, [model.image_input().tensor], [model.outputs[0].tensor]) as runner:
        for batch in batches:
            a = runner.run(batch)[0].reshape(len(batch), -1)
            b = session.run([out_name], {in_name: batch})[0].reshape(len(batch), -1)
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b))))
            same += int(np.sum(np.argmax(a, 1) == np.argmax(b, 1)))
            total += len(batch)
    return OnnxParity(images=total, max_abs_diff=diff, top1_agreement=same / total if total else 0.0)
