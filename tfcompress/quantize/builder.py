"""The eightbit graph builder: walks the float graph and asks op quantizers for nodes.

The reference kernels' default chain (`reference.QUANTIZERS`, `one_step`):

    … ─ QuantizeV2 ─ QuantizedConv2D ─ Bitcast ─ Cast ─ Mul (exact float accumulator)
        ─ BiasAdd ─ Relu ─ MaxPool ─ QuantizeV2 ─ QuantizedConv2D ─ …

TF1's chain (`reference.TF1_QUANTIZERS`):

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
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from tfcompress.errors import TfcError
from tfcompress.graph.graph import Graph, make_const, make_node, node_name, tensor_name
from tfcompress.quantize.weights import zero_exact_range


class Encoding(NamedTuple):
    """How a quantized activation maps to float.

    Attributes:
      dtype: quint8 or qint8.
      mode: the QuantizeV2/Dequantize mode.
      levels: the largest code a value inside the calibrated range takes.
    """
    dtype: tf.DType
    mode: str
    levels: int


# The reference kernels' encoding: quint8 over [min, max].  MIN_COMBINED, not
# TF1's MIN_FIRST: where TF's oneDNN graph rewrite is on (the default on CPUs
# with AVX-512 VNNI), QuantizeV2 and Dequantize run oneDNN kernels whose
# MIN_FIRST rounding differs from the reference kernels by one step, while
# MIN_COMBINED is bit-identical either way (tests/quantize/test_eightbit.py
# checks this).
U8 = Encoding(tf.quint8, "MIN_COMBINED", 255)
# oneDNN's unsigned encoding with 7-bit activations: quint8 over [0, max], the
# calibrated max at code 127.  u8 x s8 products summed in pairs then fit int16
# (2 * 127 * 127 < 32767), the case where oneDNN's kernels on CPUs without
# VNNI would otherwise saturate.
U7 = Encoding(tf.quint8, "SCALED", 127)
# oneDNN's signed encoding: qint8 over [-a, a], symmetric.
S8 = Encoding(tf.qint8, "SCALED", 127)

# The range consts of tensors nothing calibrated (--quantized_fallback_min/max), one pair per graph.
FALLBACK_MIN = "fallback_quantization_min_value"
FALLBACK_MAX = "fallback_quantization_max_value"


class QTensor(NamedTuple):
    """A quantized activation: the tensor, its range tensors, and its encoding."""
    tensor: str
    min: str
    max: str
    encoding: Encoding = U8

    @property
    def triple(self) -> Tuple[str, str, str]:
        return (self.tensor, self.min, self.max)


def encoded_range(encoding: Encoding, lo: float, hi: float) -> Tuple[float, float]:
    """The (min, max) to hand QuantizeV2/kernels so that [lo, hi] lands on the encoding's codes."""
    if encoding is U8:
        return lo, hi
    if encoding is U7:
        return 0.0, max(hi, 1e-6) * 255.0 / 127.0
    a = max(abs(lo), abs(hi), 1e-6)
    return -a, a


@dataclasses.dataclass
class QuantReport:
    """What the builder did."""
    quantized: Dict[str, str] = dataclasses.field(default_factory=dict)   # float node -> quantized op type
    kept_float: Dict[str, str] = dataclasses.field(default_factory=dict)  # float node -> op type
    # Quantized ops entered by a QuantizeV2 and left by a Dequantize only: float may be faster there.
    alone: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)            # what the user should know


class Builder:
    """State of one eightbit conversion, read by quantizers and changed only by `commit`.

    Quantizers never add to it: each returns an `Emission` holding the nodes
    it made and the quantized or float forms those give its tensors, and the
    walk in `build_eightbit` commits it.

    Args:
      graph: the optimized float graph (read only).
      ranges: calibrated (min, max) per float tensor name.
      fallback_range: the range of a tensor nothing calibrated (None: such a tensor is an error).
      one_step: the reference kernels' default chain (`build_eightbit`).
    """

    def __init__(self, graph: Graph, ranges: Dict[str, Tuple[float, float]],
                 fallback_range: Optional[Tuple[float, float]] = None, one_step: bool = False):
        self.src = graph
        self.ranges = ranges
        self.fallback_range = fallback_range
        self.one_step = one_step
        self.nodes: Dict[str, tf.compat.v1.NodeDef] = {}
        self.quantized: Dict[str, QTensor] = {}      # float tensor -> its first quantized form
        self.converted: Dict[Tuple[str, Encoding], QTensor] = {}
        self.float_names: Dict[str, str] = {}
        self.report = QuantReport()
        self._shapes = None

    def shape(self, tensor: str) -> Optional[tf.TensorShape]:
        """Static shape of a float-graph tensor (dimensions may be None), None if the tensor is unknown."""
        if self._shapes is None:
            g = tf.Graph()
            with g.as_default():
                tf.graph_util.import_graph_def(self.src.to_graph_def(), name="")
            self._shapes = {t.name: t.shape for op in g.get_operations() for t in op.outputs}
        return self._shapes.get(tensor_name(tensor))

    def rank(self, tensor: str) -> Optional[int]:
        """Static rank of a float-graph tensor, None if unknown."""
        shape = self.shape(tensor)
        return None if shape is None else shape.rank

    def range(self, tensor: str) -> Tuple[float, float]:
        t = tensor_name(tensor)
        if t not in self.ranges:
            if self.fallback_range is not None:
                return self.fallback_range
            raise TfcError(f"no calibration range for tensor {t}; the calibration cache does not match this "
                           "graph (pass --recalibrate)")
        return self.ranges[t]

    def uses_fallback(self, tensor: str) -> bool:
        return tensor_name(tensor) not in self.ranges and self.fallback_range is not None

    def has_node(self, name: str) -> bool:
        return name in self.nodes

    def is_quantized(self, tensor: str) -> bool:
        return tensor_name(tensor) in self.quantized

    def encoding_of(self, tensor: str) -> Optional[Encoding]:
        q = self.quantized.get(tensor_name(tensor))
        return q.encoding if q else None

    def carries_quantized(self, tensor: str) -> bool:
        """Quantized, and (in the one-step chain) by the op that made it or as it entered the graph, not by
        a QuantizeV2 made for a conv that reads it: an element-wise op there stays float, on the exact value."""
        q = self.quantized.get(tensor_name(tensor))
        return q is not None and not (self.one_step and "/eightbit/quantize" in q.tensor)

    def carried_encoding(self, tensor: str) -> Optional[Encoding]:
        return self.encoding_of(tensor) if self.carries_quantized(tensor) else None

    def emission(self) -> "Emission":
        """An empty emission for one quantizer call."""
        return Emission(self)

    def commit(self, emission: "Emission") -> None:
        """Adds an emission's nodes and records the forms and report entries it made."""
        for node in emission.nodes:
            if node.name in self.nodes:
                raise AssertionError(f"duplicate node {node.name}")
            self.nodes[node.name] = node
        self.quantized.update(emission.quantized)
        self.converted.update(emission.converted)
        self.float_names.update(emission.float_names)
        self.report.quantized.update(emission.report_quantized)
        self.report.kept_float.update(emission.report_kept)

    def graph_def(self, versions, outputs: List[str]):
        g = Graph(tf.compat.v1.GraphDef(), outputs=outputs)
        g.versions = versions
        for node in self.nodes.values():
            g.add(node)
        return g.to_graph_def()


class Emission:
    """What one quantizer makes: its nodes, and the quantized or float forms they give tensors.

    Helpers look tensors up in the emission first, then in the committed
    builder, so a form made earlier in the same call is reused.  Nothing
    reaches the builder until `Builder.commit`.
    """

    def __init__(self, builder: Builder):
        self.builder = builder
        self.nodes: List[tf.compat.v1.NodeDef] = []
        self.quantized: Dict[str, QTensor] = {}
        self.converted: Dict[Tuple[str, Encoding], QTensor] = {}
        self.float_names: Dict[str, str] = {}
        self.report_quantized: Dict[str, str] = {}
        self.report_kept: Dict[str, str] = {}

    @property
    def output(self) -> Optional[QTensor]:
        """The quantized form this emission gave its node's output, if any."""
        return next(reversed(self.quantized.values()), None)

    def add(self, node) -> str:
        self.nodes.append(node)
        return node.name

    def const(self, name: str, value, dtype=None) -> str:
        return self.add(make_const(name, value, dtype))

    def _quantized(self, t: str) -> Optional[QTensor]:
        return self.quantized.get(t) or self.builder.quantized.get(t)

    def _converted(self, key) -> Optional[QTensor]:
        return self.converted.get(key) or self.builder.converted.get(key)

    def quantized_input(self, tensor: str, encodings: Sequence[Encoding] = (U8,)) -> QTensor:
        """A quantized form of `tensor` in one of `encodings` (first choice first).

        An existing form in an accepted encoding is reused; otherwise a
        QuantizeV2 with the calibrated range makes one in `encodings[0]`.
        """
        t = tensor_name(tensor)
        first = self._quantized(t)
        if first is not None and first.encoding in encodings:
            return first
        for enc in encodings:
            if self._converted((t, enc)) is not None:
                return self._converted((t, enc))
        enc = encodings[0]
        suffix = "" if enc is U8 else "_" + enc.dtype.name + "_" + enc.mode.lower()
        base = node_name(t) + ("" if t.endswith(":0") else "_" + t.split(":")[1]) + "/eightbit/quantize" + suffix
        lo_name, hi_name = self.range_consts(base + "/min", base + "/max", t, enc)
        self.add(make_node("QuantizeV2", base, [self.float_input(t), lo_name, hi_name],
                           T=enc.dtype, mode=enc.mode))
        q = QTensor(base, base + ":1", base + ":2", enc)
        if first is not None:
            self.converted[(t, enc)] = q
        else:
            self.quantized[t] = q
        return q

    def range_consts(self, min_name: str, max_name: str, tensor: str, encoding: Encoding = U8) -> Tuple[str, str]:
        """Consts holding the range of `tensor` in `encoding`: new ones under the given names, or, for a
        tensor nothing calibrated, the graph's one pair of fallback consts (TF1's names)."""
        lo, hi = encoded_range(encoding, *self.builder.range(tensor))
        if self.builder.one_step and encoding is U8:
            lo, hi = zero_exact_range(min(lo, 0.0), max(hi, 0.0))
        if self.builder.uses_fallback(tensor) and encoding is U8:
            min_name, max_name = FALLBACK_MIN, FALLBACK_MAX
            if self.builder.has_node(min_name) or any(n.name == min_name for n in self.nodes):
                return min_name, max_name
        self.const(min_name, lo, tf.float32)
        self.const(max_name, hi, tf.float32)
        return min_name, max_name

    def float_input(self, tensor: str) -> str:
        """The float form of a tensor, adding a Dequantize (named as the original node) if needed."""
        t = tensor_name(tensor)
        name = self.float_names.get(t) or self.builder.float_names.get(t)
        if name is not None:
            return name
        q = self._quantized(t)
        if q is None:
            first = node_name(t) + ":0"
            if (self.float_names.get(first) or self.builder.float_names.get(first)) == node_name(t):
                return t  # Output k > 0 of a float node copied under its own name.
            raise AssertionError(f"tensor {t} has neither a float nor a quantized form")
        name = node_name(t) if t.endswith(":0") else node_name(t) + "_" + t.split(":")[1]
        if self.builder.has_node(name) or any(n.name == name for n in self.nodes):
            name += "/dequantize"  # A quantized input keeps its Placeholder's name.
        if q.encoding is S8:
            # q * max / 127 in three cheap element-wise ops: TF's oneDNN rewrite
            # turns a SCALED Dequantize into a kernel that costs ~25x more per
            # call on small tensors (measured on TF 2.21, 24x24x32 qint8).
            self.add(make_node("Bitcast", name + "/int8", [q.tensor], T=tf.qint8, type=tf.int8))
            self.add(make_node("Cast", name + "/float", [name + "/int8"], SrcT=tf.int8, DstT=tf.float32,
                               Truncate=False))
            self.const(name + "/levels", float(S8.levels), tf.float32)
            self.add(make_node("RealDiv", name + "/scale", [q.max, name + "/levels"], T=tf.float32))
            self.add(make_node("Mul", name, [name + "/float", name + "/scale"], T=tf.float32))
        else:
            # U7 is MIN_COMBINED-exact too (min 0), and that kernel is the fast one.
            self.add(make_node("Dequantize", name, list(q.triple), T=tf.quint8, mode="MIN_COMBINED",
                               dtype=tf.float32))
        self.float_names[t] = name
        return name

    def requantize(self, base: str, acc: Tuple[str, str, str], tensor: str) -> QTensor:
        """qint32 accumulator -> quint8 in the calibrated range of `tensor` (no RequantizationRange)."""
        lo_name, hi_name = self.range_consts(base + "/requant_min", base + "/requant_max", tensor)
        self.add(make_node("Requantize", base + "/requantize", [acc[0], acc[1], acc[2], lo_name, hi_name],
                           Tinput=tf.qint32, out_type=tf.quint8))
        r = base + "/requantize"
        return QTensor(r, r + ":1", r + ":2", U8)

    def copy_float(self, node) -> "Emission":
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
            self.report_kept[node.name] = node.op
        return self

    def _float_ref(self, inp: str) -> str:
        t = tensor_name(inp)
        if (t in self.float_names or t in self.builder.float_names or self._quantized(t) is not None):
            return self.float_input(t)
        return inp  # Output k > 0 of a float node copied under its own name.

    def quantized_output(self, node, q: QTensor, op_type: str, reported_as=None) -> "Emission":
        """Records `q` as the quantized form of `node:0`, reported under `reported_as` (default: node)."""
        self.quantized[node.name + ":0"] = q
        self.report_quantized[(reported_as or node).name] = op_type
        return self

    def float_output(self, node, name: str, reported_as=None, op_type: Optional[str] = None) -> "Emission":
        """Records that float tensor `node:0` is computed, in float, by node `name` (a fused quantized op)."""
        self.float_names[node.name + ":0"] = name
        if op_type:
            self.report_quantized[(reported_as or node).name] = op_type
        return self


def build_eightbit(graph: Graph, ranges, quantizers, fallback, *,
                   quantized_inputs: Optional[Dict[str, Tuple[float, float]]] = None,
                   fallback_range: Optional[Tuple[float, float]] = None,
                   one_step: bool = False) -> Tuple[tf.compat.v1.GraphDef, QuantReport]:
    """Converts the float `graph` with `quantizers` (op type -> quantizer); `fallback` keeps the rest float.

    `quantized_inputs` names Placeholders that arrive as quint8 codes over a given (min, max) (TF1's
    --quantized_input): they keep their names, with dtype quint8, and need no QuantizeV2.
    `fallback_range` is the range of any tensor the calibration did not reach.
    `one_step` is the reference kernels' default chain (see `reference`): every quint8 activation range is
    widened so that 0.0 is a code (`weights.zero_exact_range`), and element-wise quantizers take only values
    that arrive quantized (`Builder.carries_quantized`).

    Each quantizer's `emit(builder, node)` returns an `Emission` (the nodes it
    made and the forms they give its tensors), which the walk commits.
    A quantizer may fuse a chain of nodes (conv → bias → activation): its
    `plan(builder, node)` returns the chain's node names, and the chain is
    emitted, by `emit_chain`, when the walk reaches its last node, by which
    time every input of every member (a residual summand included) exists.
    """
    builder = Builder(graph, ranges, fallback_range, one_step)
    quantized_inputs = quantized_inputs or {}
    order = graph.topo_order()
    chains, absorbed = {}, set()
    for node in order:
        quantizer = quantizers.get(node.op)
        plan = getattr(quantizer, "plan", None)
        # Two chains may not share a node: both convs of a projection-shortcut block would end in the same
        # Add -> Relu; the first keeps it, the second stops before it and becomes the summand.
        members = plan(builder, node, frozenset(absorbed) | frozenset(chains)) \
            if plan and node.name not in absorbed else None
        if members and not any(m in absorbed or m in chains for m in members):
            chains[members[-1]] = (quantizer, members)
            absorbed.update(members[:-1])
    for node in order:
        if node.name + ":0" in quantized_inputs:
            builder.commit(_quantized_placeholder(builder, node, quantized_inputs[node.name + ":0"]))
            continue
        if node.name in chains:
            quantizer, members = chains[node.name]
            builder.commit(quantizer.emit_chain(builder, [graph.node(m) for m in members]))
            continue
        if node.name in absorbed:
            continue
        quantizer = quantizers.get(node.op)
        if quantizer is None or not quantizer.should_quantize(builder, node):
            builder.commit(fallback.emit(builder, node))
        else:
            builder.commit(quantizer.emit(builder, node))
    # Graph outputs keep their float names.
    for out in graph.outputs:
        emission = builder.emission()
        emission.float_input(out + ":0")
        builder.commit(emission)
    return builder.graph_def(graph.versions, graph.outputs), builder.report


def _quantized_placeholder(builder: Builder, node, value_range: Tuple[float, float]) -> Emission:
    e = builder.emission()
    placeholder = tf.compat.v1.NodeDef()
    placeholder.CopyFrom(node)
    placeholder.attr["dtype"].type = tf.quint8.as_datatype_enum
    e.add(placeholder)
    lo = e.const(node.name + "/quantized_min", value_range[0], tf.float32)
    hi = e.const(node.name + "/quantized_max", value_range[1], tf.float32)
    return e.quantized_output(node, QTensor(node.name, lo, hi, U8), "quantized input")


def data_inputs(node) -> List[str]:
    return [i for i in node.input if not i.startswith("^")]


def attr_dtype(node, key: str = "T") -> Optional[tf.DType]:
    return tf.as_dtype(node.attr[key].type) if key in node.attr else None
