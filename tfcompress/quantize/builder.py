"""The eightbit graph builder: walks the float graph and asks op quantizers for nodes.

    Placeholder ─ QuantizeV2 ─ QuantizedConv2D ─ Requantize ─ QuantizedBiasAdd ─ Requantize
        ─ QuantizedRelu ─ QuantizedMaxPool ─ … ─ Dequantize ─ (float ops) ─ output

Every float tensor is quantized at most once (QuantizeV2 with calibrated,
constant ranges) and dequantized at most once (a Dequantize that takes the
original node's name, so float consumers and graph outputs are unchanged).
Quantized ops pass (tensor, min, max) triples to each other directly, so no
Dequantize→QuantizeV2 pair is ever emitted, and every requantization range is
a constant from calibration: no RequantizationRange is left to run.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from tfcompress.errors import TfcError
from tfcompress.graph.graph import Graph, make_const, make_node, node_name, tensor_name

Triple = Tuple[str, str, str]

# QuantizeV2/Dequantize mode for activations.  MIN_COMBINED, not TF1's
# MIN_FIRST: where TF's oneDNN graph rewrite is on (the default on CPUs with
# AVX-512 VNNI), QuantizeV2 and Dequantize run oneDNN kernels whose MIN_FIRST
# rounding differs from the reference kernels by one step, while MIN_COMBINED
# is bit-identical either way (tests/quantize/test_portability.py checks this).
MODE = "MIN_COMBINED"


@dataclasses.dataclass
class QuantReport:
    """What the builder did."""
    quantized: Dict[str, str] = dataclasses.field(default_factory=dict)   # float node -> quantized op type
    kept_float: Dict[str, str] = dataclasses.field(default_factory=dict)  # float node -> op type


class Builder:
    """State of one eightbit conversion.  Quantizers call its helpers and return the nodes they create.

    Args:
      graph: the optimized float graph (read only).
      ranges: calibrated (min, max) per float tensor name.
    """

    def __init__(self, graph: Graph, ranges: Dict[str, Tuple[float, float]]):
        self.src = graph
        self.ranges = ranges
        self.nodes: Dict[str, tf.compat.v1.NodeDef] = {}
        self.quantized: Dict[str, Triple] = {}
        self.float_names: Dict[str, str] = {}
        self.report = QuantReport()
        self._shapes = None

    def rank(self, tensor: str) -> Optional[int]:
        """Static rank of a float-graph tensor, None if unknown."""
        if self._shapes is None:
            g = tf.Graph()
            with g.as_default():
                tf.graph_util.import_graph_def(self.src.to_graph_def(), name="")
            self._shapes = {t.name: t.shape.rank for op in g.get_operations() for t in op.outputs}
        return self._shapes.get(tensor_name(tensor))

    # -- tensors ----------------------------------------------------------
    def range(self, tensor: str) -> Tuple[float, float]:
        t = tensor_name(tensor)
        if t not in self.ranges:
            raise TfcError(f"no calibration range for tensor {t}; the calibration cache does not match this "
                           "graph (pass --recalibrate)")
        return self.ranges[t]

    def is_quantized(self, tensor: str) -> bool:
        return tensor_name(tensor) in self.quantized

    def add(self, node) -> str:
        if node.name in self.nodes:
            raise AssertionError(f"duplicate node {node.name}")
        self.nodes[node.name] = node
        return node.name

    def const(self, name: str, value, dtype=None) -> str:
        return self.add(make_const(name, value, dtype))

    def quantized_input(self, tensor: str) -> Triple:
        """The quint8 triple for a float tensor, adding a QuantizeV2 with calibrated range if needed."""
        t = tensor_name(tensor)
        if t in self.quantized:
            return self.quantized[t]
        lo, hi = self.range(t)
        base = node_name(t) + ("" if t.endswith(":0") else "_" + t.split(":")[1]) + "/eightbit/quantize"
        self.const(base + "/min", lo, tf.float32)
        self.const(base + "/max", hi, tf.float32)
        self.add(make_node("QuantizeV2", base, [self.float_input(t), base + "/min", base + "/max"],
                           T=tf.quint8, mode=MODE))
        triple = (base, base + ":1", base + ":2")
        self.quantized[t] = triple
        return triple

    def float_input(self, tensor: str) -> str:
        """The float form of a tensor, adding a Dequantize (named as the original node) if needed."""
        t = tensor_name(tensor)
        if t in self.float_names:
            return self.float_names[t]
        if t not in self.quantized:
            raise AssertionError(f"tensor {t} has neither a float nor a quantized form")
        q, lo, hi = self.quantized[t]
        name = node_name(t) if t.endswith(":0") else node_name(t) + "_" + t.split(":")[1]
        self.add(make_node("Dequantize", name, [q, lo, hi], T=tf.quint8, mode=MODE, dtype=tf.float32))
        self.float_names[t] = name
        return name

    def set_quantized_output(self, node, triple: Triple, op_type: str) -> None:
        self.quantized[node.name + ":0"] = triple
        self.report.quantized[node.name] = op_type

    def requantize(self, base: str, acc: Triple, tensor: str) -> Triple:
        """qint32 accumulator -> quint8 in the calibrated range of `tensor` (no RequantizationRange)."""
        lo, hi = self.range(tensor)
        self.const(base + "/requant_min", lo, tf.float32)
        self.const(base + "/requant_max", hi, tf.float32)
        self.add(make_node("Requantize", base + "/requantize",
                           [acc[0], acc[1], acc[2], base + "/requant_min", base + "/requant_max"],
                           Tinput=tf.qint32, out_type=tf.quint8))
        r = base + "/requantize"
        return (r, r + ":1", r + ":2")

    def copy_float(self, node) -> None:
        """Emits a float op unchanged except that its inputs are float forms."""
        copy = tf.compat.v1.NodeDef()
        copy.CopyFrom(node)
        del copy.input[:]
        for inp in node.input:
            if inp.startswith("^"):
                copy.input.append(inp)
            else:
                copy.input.append(self._float_ref(inp))
        self.add(copy)
        self.float_names[node.name + ":0"] = node.name
        if node.op not in ("Placeholder", "Const", "Identity", "NoOp"):
            self.report.kept_float[node.name] = node.op

    def _float_ref(self, inp: str) -> str:
        t = tensor_name(inp)
        if t in self.float_names or t in self.quantized:
            return self.float_input(t)
        return inp  # Output k > 0 of a float node copied under its own name.

    def graph_def(self, versions, outputs: List[str]):
        g = Graph(tf.compat.v1.GraphDef(), outputs=outputs)
        g.versions = versions
        for node in self.nodes.values():
            g.add(node)
        return g.to_graph_def()


def build_eightbit(graph: Graph, ranges, quantizers, fallback) -> Tuple[tf.compat.v1.GraphDef, QuantReport]:
    """Converts the float `graph` with `quantizers` (op type -> quantizer); `fallback` keeps the rest float."""
    builder = Builder(graph, ranges)
    for node in graph.topo_order():
        quantizer = quantizers.get(node.op)
        if quantizer is None or not quantizer.should_quantize(builder, node):
            fallback.emit(builder, node)
        else:
            quantizer.emit(builder, node)
    # Graph outputs keep their float names.
    for out in graph.outputs:
        builder.float_input(out + ":0")
    return builder.graph_def(graph.versions, graph.outputs), builder.report


def data_inputs(node) -> List[str]:
    return [i for i in node.input if not i.startswith("^")]


def attr_dtype(node, key: str = "T") -> Optional[tf.DType]:
    return tf.as_dtype(node.attr[key].type) if key in node.attr else None
