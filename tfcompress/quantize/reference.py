"""Quantizers for TF's portable (reference) quantized kernels, keyed by op type.

These kernels are registered in every TF build, so the graphs they make run in
any TF process.  Two chains use them:

- `QUANTIZERS` (`--kernels=reference`): one 8-bit step per conv or matmul,
  at its input (QuantizeV2 with the calibrated range, shared by every reader
  of the tensor).  The qint32 accumulator is read back to float exactly
  (code * max / (2^31 - 1)), and the bias, activation, pooling and residual
  adds after it run in float on that exact value.  The reference kernels take
  one scalar filter range, so each output channel of the filter is divided
  by its largest |w| before quantizing (all channels then span the same
  codes) and multiplied back on the float accumulator: per-channel weights
  through per-tensor kernels.
- `TF1_QUANTIZERS` (`--kernels=tf1`): TF1's quantize_graph chain.  Weights
  are per-tensor quint8; the accumulator goes back to quint8 through
  Requantize, then QuantizedBiasAdd adds a quint8 bias and requantizes again,
  and Relu, pools, residual adds and concats run on quint8.  Two 8-bit steps
  per conv, each over a min/max range far wider than the values' spread,
  and one filter range for channels of very different size: on the zoo this
  chain agrees with float less often than TFLite's int8 (see README).

Each quantizer has `should_quantize(builder, node)` (it may decline; the
fallback then keeps the op float) and `emit(builder, node)`, which returns an
`Emission`: the nodes it made and the quantized form of its output.  The
builder is only read here; `build_eightbit` commits what is returned.

References:
  Warden, "How to Quantize Neural Networks with TensorFlow" (2016), the
  eightbit scheme of TF1's quantize_graph; Jacob et al., arXiv:1712.05877.
"""

import numpy as np
import tensorflow as tf

from tfcompress.graph.graph import make_node, tensor_name
from tfcompress.quantize.builder import U7, U8, Builder, Emission, QTensor, attr_dtype, data_inputs
from tfcompress.quantize.weights import quantize_affine


# Encodings the quint8 pass-through kernels accept: for both, code 0 is 0.0 or
# the range's min and the kernels only compare or average codes.
UNSIGNED = (U8, U7)


def _float32(node) -> bool:
    return attr_dtype(node) == tf.float32


def _const(builder: Builder, tensor: str):
    return builder.src.const_value(tensor)


def _unit(values) -> bool:
    return all(v == 1 for v in values)


class FloatFallback:
    """Keeps the op float; its quantized inputs are dequantized once."""

    def emit(self, builder: Builder, node) -> Emission:
        return builder.emission().copy_float(node)


# Ops that only move values: quantizing their output loses nothing that quantizing their input would not.
DATA_MOVEMENT = {"Split", "SplitV", "Unpack", "Slice", "StridedSlice", "Transpose", "Squeeze", "ExpandDims",
                 "Reshape", "Pad", "Tile", "Reverse", "ReverseV2", "Gather", "GatherV2", "Identity"}


def _entering(builder: Builder, tensor: str) -> bool:
    """A float32 tensor that is a model input, or only moved from one (a Split of the input): where data
    enters the graph.  A standalone op on it is quantized with its own QuantizeV2, as TF1's eightbit graphs
    did.  A float tensor computed by a float op (a depthwise conv the reference kernels lack) is not: a
    QuantizeV2 there would add a rounding step the float op after it does not need."""
    node = builder.src.node(tensor)
    while node is not None and node.op in DATA_MOVEMENT and node.input:
        node = builder.src.node(node.input[0] if node.op not in ("Split",) else node.input[1])
    return node is not None and node.op in ("Placeholder", "PlaceholderV2") and \
        attr_dtype(node, "dtype") == tf.float32


def _quantizable(builder: Builder, tensor: str) -> bool:
    """Already quantized, or a float tensor where data enters the graph."""
    return builder.carries_quantized(tensor) or _entering(builder, tensor)


# The largest qint32 code: a reference kernel's accumulator range is (-2^31, 2^31 - 1) times one code's value.
INT32_LEVELS = 2147483647.0


def dequantized_accumulator(e: Emission, base: str, name: str, channel_scales=None) -> str:
    """The qint32 accumulator of quantized op `base` as float, exactly, in a node named `name`.

    A reference kernel's accumulator has code 0 at 0.0 and max = (2^31 - 1) codes, so the value is
    code * max / (2^31 - 1).  This is computed with Bitcast, Cast and Mul: TF's oneDNN rewrite replaces a
    SCALED Dequantize by a kernel that has no qint32 form, and MIN_COMBINED's float offset of 2^31 loses
    the accumulator's low bits.  `channel_scales` (per output channel) multiply the result as well.
    """
    e.add(make_node("Bitcast", name + "/int32", [base], T=tf.qint32, type=tf.int32))
    e.add(make_node("Cast", name + "/float", [name + "/int32"], SrcT=tf.int32, DstT=tf.float32, Truncate=False))
    e.const(name + "/levels", INT32_LEVELS, tf.float32)
    scale = e.add(make_node("RealDiv", name + "/scale", [base + ":2", name + "/levels"], T=tf.float32))
    if channel_scales is not None:
        e.const(name + "/channel_scales", np.asarray(channel_scales, np.float32), tf.float32)
        scale = e.add(make_node("Mul", name + "/scales", [scale, name + "/channel_scales"], T=tf.float32))
    return e.add(make_node("Mul", name, [name + "/float", scale], T=tf.float32))


class _WeightedQuantizer:
    """Conv2D / MatMul with a constant weight.

    Args:
      one_step: the `QUANTIZERS` chain (channel-normalized filter, exact float accumulator); False: TF1's.
    """

    op = ""

    def __init__(self, one_step: bool = True):
        self.one_step = one_step

    def should_quantize(self, builder: Builder, node) -> bool:
        ins = data_inputs(node)
        w = _const(builder, ins[1])
        return _float32(node) and w is not None and self._supported(node)

    def _supported(self, node) -> bool:
        return True

    def _output_axis(self, node) -> int:
        return -1

    def _weights(self, e: Emission, node, w):
        """quint8 per-tensor filter (the only filter type every reference kernel takes), and the per-channel
        scales it was divided by (None in TF1's chain)."""
        base = node.name + "/eightbit"
        scales = None
        if self.one_step:
            axis = self._output_axis(node) % w.ndim
            others = tuple(a for a in range(w.ndim) if a != axis)
            scales = np.abs(w).max(axis=others)
            scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
            shape = [1] * w.ndim
            shape[axis] = -1
            w = w / scales.reshape(shape)
        q, lo, hi = quantize_affine(w, exact_zero=self.one_step)
        return (e.const(base + "/weights", q, tf.quint8), e.const(base + "/weights_min", lo, tf.float32),
                e.const(base + "/weights_max", hi, tf.float32)), scales

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        ins = data_inputs(node)
        x = e.quantized_input(ins[0])
        w, scales = self._weights(e, node, _const(builder, ins[1]))
        base = node.name + "/eightbit"
        e.add(self._op(base, node, x, w))
        if self.one_step:
            return e.float_output(node, dequantized_accumulator(e, base, node.name, scales), op_type=self.op)
        acc = (base, base + ":1", base + ":2")
        return e.quantized_output(node, e.requantize(base, acc, node.name + ":0"), self.op)


def conv_attrs(node):
    return {"strides": list(node.attr["strides"].list.i), "padding": node.attr["padding"].s.decode(),
            "dilations": list(node.attr["dilations"].list.i) or [1, 1, 1, 1]}


def conv_supported(node) -> bool:
    fmt = node.attr["data_format"].s.decode() or "NHWC"
    return (fmt == "NHWC" and node.attr["padding"].s in (b"SAME", b"VALID")
            and _unit(node.attr["dilations"].list.i))


class Conv2DQuantizer(_WeightedQuantizer):
    """QuantizedConv2D with quint8 filters: the only filter type with a reference kernel.

    (quint8 x qint8 has only a oneDNN kernel; without oneDNN it returns no output.)
    """
    op = "QuantizedConv2D"

    def _supported(self, node) -> bool:
        return conv_supported(node)

    def _op(self, base, node, x, w):
        return make_node("QuantizedConv2D", base, [x[0], w[0], x[1], x[2], w[1], w[2]], Tinput=tf.quint8,
                         Tfilter=tf.quint8, out_type=tf.qint32, **conv_attrs(node))


class MatMulQuantizer(_WeightedQuantizer):
    """QuantizedMatMul: a constant weight (quint8, per tensor), or a second activation quantized like the first."""
    op = "QuantizedMatMul"

    def should_quantize(self, builder: Builder, node) -> bool:
        ins = data_inputs(node)
        if _const(builder, ins[1]) is None:
            # Two activations: TF1's chain needs both quantized already (or entering the graph); the one-step
            # chain quantizes any float input at its calibrated range.
            return _float32(node) and self._supported(node) and (
                self.one_step or all(_quantizable(builder, i) for i in ins[:2]))
        return super().should_quantize(builder, node)

    def emit(self, builder: Builder, node) -> Emission:
        ins = data_inputs(node)
        if _const(builder, ins[1]) is not None:
            return super().emit(builder, node)
        e = builder.emission()
        x, y = e.quantized_input(ins[0]), e.quantized_input(ins[1])
        base = node.name + "/eightbit"
        e.add(self._op(base, node, x, y))
        if self.one_step:
            return e.float_output(node, dequantized_accumulator(e, base, node.name), op_type=self.op)
        acc = (base, base + ":1", base + ":2")
        return e.quantized_output(node, e.requantize(base, acc, node.name + ":0"), self.op)

    def _supported(self, node) -> bool:
        return not node.attr["transpose_a"].b

    def _output_axis(self, node) -> int:
        return 0 if node.attr["transpose_b"].b else 1

    def _op(self, base, node, x, w):
        return make_node("QuantizedMatMul", base, [x[0], w[0], x[1], x[2], w[1], w[2]], T1=tf.quint8,
                         T2=tf.quint8, Toutput=tf.qint32, transpose_a=False,
                         transpose_b=node.attr["transpose_b"].b, Tactivation=tf.quint8)


class BiasAddQuantizer:
    """QuantizedBiasAdd; the bias is quint8 with its own range, a float input where data enters the graph
    gets a QuantizeV2."""

    def should_quantize(self, builder: Builder, node) -> bool:
        ins = data_inputs(node)
        fmt = node.attr["data_format"].s.decode() or "NHWC"
        return (_float32(node) and fmt == "NHWC" and _quantizable(builder, ins[0])
                and _const(builder, ins[1]) is not None)

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        ins = data_inputs(node)
        x = e.quantized_input(ins[0])
        q, lo, hi = quantize_affine(_const(builder, ins[1]))
        base = node.name + "/eightbit"
        b = (e.const(base + "/bias", q, tf.quint8), e.const(base + "/bias_min", lo, tf.float32),
             e.const(base + "/bias_max", hi, tf.float32))
        e.add(make_node("QuantizedBiasAdd", base, [x[0], b[0], x[1], x[2], b[1], b[2]], T1=tf.quint8,
                        T2=tf.quint8, out_type=tf.qint32))
        acc = (base, base + ":1", base + ":2")
        return e.quantized_output(node, e.requantize(base, acc, node.name + ":0"), "QuantizedBiasAdd")


class _PassRangeQuantizer:
    """Ops whose quantized kernel keeps (or derives) the range: Relu, Relu6, pools, Reshape.

    A quantized input in either unsigned encoding is used as it is; a float
    one where data enters the graph (see `_entering`) gets its own
    QuantizeV2, as TF1's eightbit graphs did (the report lists such ops
    where nothing quantized is around them).

    Args:
      prefer_7bit: quantize a float input with a range >= 0 to U7 (the oneDNN kernels' encoding), so that
        the fused kernels after it take it as it is.
    """
    op = ""

    def __init__(self, prefer_7bit: bool = False):
        self.prefer_7bit = prefer_7bit

    def should_quantize(self, builder: Builder, node) -> bool:
        x = data_inputs(node)[0]
        quantized = builder.carried_encoding(x)
        return (_float32(node) and (quantized in UNSIGNED or (quantized is None and _entering(builder, x)))
                and self._supported(builder, node))

    def _supported(self, builder, node) -> bool:
        return True

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        x = data_inputs(node)[0]
        seven = self.prefer_7bit and not builder.is_quantized(x) and builder.range(x)[0] >= 0.0
        x = e.quantized_input(x, (U7, U8) if seven else UNSIGNED)
        base = node.name + "/eightbit"
        e.add(self._op(e, base, node, x))
        return e.quantized_output(node, QTensor(base, base + ":1", base + ":2", x.encoding), self.op)


class ReluQuantizer(_PassRangeQuantizer):
    op = "QuantizedRelu"

    def _op(self, e: Emission, base, node, x):
        return make_node(self.op, base, list(x.triple), Tinput=tf.quint8, out_type=tf.quint8)


class Relu6Quantizer(ReluQuantizer):
    op = "QuantizedRelu6"


class PoolQuantizer(_PassRangeQuantizer):
    def __init__(self, op, prefer_7bit: bool = False):
        super().__init__(prefer_7bit)
        self.op = op

    def _supported(self, builder, node) -> bool:
        return (node.attr["data_format"].s.decode() or "NHWC") == "NHWC"

    def _op(self, e: Emission, base, node, x):
        return make_node(self.op, base, list(x.triple), T=tf.quint8, ksize=list(node.attr["ksize"].list.i),
                         strides=list(node.attr["strides"].list.i), padding=node.attr["padding"].s.decode())


class ReshapeQuantizer(_PassRangeQuantizer):
    op = "QuantizedReshape"

    def _supported(self, builder, node) -> bool:
        return _const(builder, data_inputs(node)[1]) is not None

    def _op(self, e: Emission, base, node, x):
        shape = e.const(base + "/shape", _const(e.builder, data_inputs(node)[1]))
        return make_node(self.op, base, [x[0], shape, x[1], x[2]], T=tf.quint8, Tshape=attr_dtype(node, "Tshape"))


class ConcatQuantizer:
    """QuantizedConcat (for ConcatV2, axis last, and v1 Concat, axis first), when an input is quantized or
    every input is where data enters the graph; float inputs get a QuantizeV2; the output range is the
    union of the inputs'."""

    def __init__(self, axis_first: bool = False):
        self.axis_first = axis_first

    def _split(self, node):
        ins = data_inputs(node)
        return (ins[0], ins[1:]) if self.axis_first else (ins[-1], ins[:-1])

    def should_quantize(self, builder: Builder, node) -> bool:
        axis, values = self._split(node)
        return (_float32(node) and _const(builder, axis) is not None and builder.rank(node.name) is not None
                and (any(builder.carries_quantized(v) for v in values) or all(_entering(builder, v) for v in values)))

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        axis, values = self._split(node)
        triples = [e.quantized_input(v) for v in values]
        base = node.name + "/eightbit"
        axis = int(_const(builder, axis)) % builder.rank(node.name)  # The kernel wants axis >= 0.
        axis = e.const(base + "/axis", np.int32(axis))
        e.add(make_node("QuantizedConcat", base,
                        [axis] + [t.tensor for t in triples] + [t.min for t in triples] + [t.max for t in triples],
                        N=len(triples), T=tf.quint8))
        return e.quantized_output(node, QTensor(base, base + ":1", base + ":2"), "QuantizedConcat")


class BatchNormQuantizer:
    """BatchNormWithGlobalNormalization (TF1's batch norm) as QuantizedBatchNormWithGlobalNormalization: its
    mean, variance, beta and gamma are quint8 constants with their own ranges."""

    def should_quantize(self, builder: Builder, node) -> bool:
        ins = data_inputs(node)
        return (_float32(node) and _quantizable(builder, ins[0])
                and all(_const(builder, i) is not None for i in ins[1:]))

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        ins = data_inputs(node)
        base = node.name + "/eightbit"
        x = e.quantized_input(ins[0])
        inputs = list(x.triple)
        for part, tensor in zip(("mean", "variance", "beta", "gamma"), ins[1:]):
            q, lo, hi = quantize_affine(_const(builder, tensor))
            inputs += [e.const(f"{base}/{part}", q, tf.quint8), e.const(f"{base}/{part}_min", lo, tf.float32),
                       e.const(f"{base}/{part}_max", hi, tf.float32)]
        e.add(make_node("QuantizedBatchNormWithGlobalNormalization", base, inputs, Tinput=tf.quint8,
                        out_type=tf.qint32, variance_epsilon=node.attr["variance_epsilon"].f,
                        scale_after_normalization=node.attr["scale_after_normalization"].b))
        acc = (base, base + ":1", base + ":2")
        return e.quantized_output(node, e.requantize(base, acc, node.name + ":0"),
                                  "QuantizedBatchNormWithGlobalNormalization")


class FakeQuantQuantizer:
    """FakeQuantWithMinMaxVars/Args after a quantized op: its range was the op's output range (see
    `quantize.convert.fake_quant_ranges`), so the op's quantized output is its value and it adds no node."""

    def should_quantize(self, builder: Builder, node) -> bool:
        return builder.carried_encoding(data_inputs(node)[0]) is U8

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        return e.quantized_output(node, builder.quantized[tensor_name(data_inputs(node)[0])], node.op)


class AddQuantizer:
    """QuantizedAdd for two same-shape activations (residual connections), requantized to calibration."""

    def should_quantize(self, builder: Builder, node) -> bool:
        ins = data_inputs(node)
        if not _float32(node) or len(ins) != 2 or any(_const(builder, i) is not None for i in ins):
            return False
        return any(builder.carries_quantized(i) for i in ins)

    def emit(self, builder: Builder, node) -> Emission:
        e = builder.emission()
        ins = data_inputs(node)
        x, y = e.quantized_input(ins[0]), e.quantized_input(ins[1])
        base = node.name + "/eightbit"
        e.add(make_node("QuantizedAdd", base, [x[0], y[0], x[1], x[2], y[1], y[2]], T1=tf.quint8,
                        T2=tf.quint8, Toutput=tf.qint32))
        acc = (base, base + ":1", base + ":2")
        return e.quantized_output(node, e.requantize(base, acc, node.name + ":0"), "QuantizedAdd")


def _quantizers(one_step: bool):
    return {
        "Conv2D": Conv2DQuantizer(one_step),
        # No "DepthwiseConv2dNative": QuantizedDepthwiseConv2D has only a oneDNN kernel
        # (without oneDNN it returns no output), so depthwise convs stay float here.
        "MatMul": MatMulQuantizer(one_step),
        "BiasAdd": BiasAddQuantizer(),
        "Relu": ReluQuantizer(),
        "Relu6": Relu6Quantizer(),
        "MaxPool": PoolQuantizer("QuantizedMaxPool"),
        "AvgPool": PoolQuantizer("QuantizedAvgPool"),
        "Reshape": ReshapeQuantizer(),
        "ConcatV2": ConcatQuantizer(),
        "Concat": ConcatQuantizer(axis_first=True),
        "BatchNormWithGlobalNormalization": BatchNormQuantizer(),
        "FakeQuantWithMinMaxVars": FakeQuantQuantizer(),
        "FakeQuantWithMinMaxArgs": FakeQuantQuantizer(),
        "AddV2": AddQuantizer(),
        "Add": AddQuantizer(),
    }


# In the one-step chain the element-wise quantizers still take what arrives quantized (a graph input, a
# TF1 eightbit island); after a conv or matmul the value is float and they leave it so.
QUANTIZERS = _quantizers(one_step=True)
TF1_QUANTIZERS = _quantizers(one_step=False)
FALLBACK = FloatFallback()
