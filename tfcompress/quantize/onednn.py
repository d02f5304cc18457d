"""Quantizers for TF's fused oneDNN kernels (`--kernels=onednn`), keyed by op type.

Each conv, depthwise conv or matmul is fused with what follows it into one
kernel that also requantizes to the calibrated output range:

    Conv2D → BiasAdd → Relu|Relu6      QuantizedConv2DWithBiasAndReluAndRequantize
    Conv2D → BiasAdd → Add(x) → Relu   QuantizedConv2DWith[Signed]SumAndReluAndRequantize
    Conv2D → BiasAdd                   QuantizedConv2DWithBiasAndRequantize (qint8 out), or, when
                                       only float ops read it, QuantizedConv2DWithBias (qint32 out)
                                       dequantized by one multiply
    DepthwiseConv2dNative → BiasAdd → Relu|Relu6   (input >= 0)
                                       QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize
    DepthwiseConv2dNative [→ BiasAdd]  QuantizedDepthwiseConv2D (qint32 out), read back to float
                                       exactly; a signed input is shifted to >= 0 first and the
                                       shift's exact contribution is added back (a separable
                                       conv's depthwise half, or one fed by a residual Add)
    MatMul → BiasAdd → Relu|Relu6      QuantizedMatMulWithBiasAndReluAndRequantize
    MatMul → BiasAdd                   QuantizedMatMulWithBiasAndDequantize (float out), or
                                       QuantizedMatMulWithBiasAndRequantize (7-bit out) when the
                                       output is >= 0 and a pool or Reshape reads it

Relu6 is the fused Relu followed by QuantizedRelu6, which clamps the codes.

Weights are symmetric qint8, per output channel for convs (the fused matmul
takes one range only).  Activations are SCALED: quint8 over [0, max] with the
calibrated max at code 127 (7-bit, so the u8 x s8 pair sums of oneDNN's
kernels on CPUs without VNNI fit int16), or qint8 over [-a, a] where the
calibrated range is signed (conv inputs and linear conv outputs).

What these kernels accept was established by running them on TF 2.21:
depthwise and matmul inputs must be quint8, a Relu-fused output must be
quint8, and the fused matmul takes a scalar weight range.  A signed matmul
or depthwise input x in [lo, hi] is therefore quantized as x - lo, and lo's
exact share of the result is added back (for a matmul, lo times the decoded
weights' column sums, folded into the bias).  A chain outside these rules is
left to the float fallback.

The kernels run only where TF's oneDNN ops are on; elsewhere they fail at run
time with an error (never silently), so `convert` refuses this kernel set in
a process without them.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", arXiv:1712.05877 (requantized fused
  conv+bias+relu); Krishnamoorthi, "Quantizing deep convolutional networks for
  efficient inference: A whitepaper", arXiv:1806.08342 (per-channel weights).
"""

from typing import List, Optional

import numpy as np
import tensorflow as tf

from tfcompress.graph.graph import make_node, node_name
# Whether this process runs oneDNN's kernels: the fused quantized ops need them.
from tfcompress.keras.kernels import onednn_enabled as mkl_enabled  # noqa: F401
from tfcompress.quantize import reference
from tfcompress.quantize.builder import S8, U7, Builder, Emission, QTensor, attr_dtype, data_inputs, encoded_range
from tfcompress.quantize.weights import quantize_symmetric_per_channel

ACTIVATIONS = ("Relu", "Relu6")


def _sole_consumer(builder: Builder, name: str):
    consumers = builder.src.consumers(name)
    if len(consumers) != 1 or builder.src.is_output(name):
        return None
    return consumers[0]


class FusedQuantizer:
    """Plans and emits one fused chain headed by a Conv2D, DepthwiseConv2dNative or MatMul."""

    def __init__(self, kind: str):
        self.kind = kind  # "conv", "depthwise" or "matmul"

    def should_quantize(self, builder: Builder, node) -> bool:
        return False  # Reached only for heads whose chain `plan` declined.

    # -- planning ---------------------------------------------------------
    def plan(self, builder: Builder, head, taken: frozenset = frozenset()) -> Optional[List[str]]:
        """The chain's node names, head first, or None if it stays float.

        Args:
          taken: nodes already in another chain, which this one may not absorb.
        """
        if not self._head_ok(builder, head):
            return None
        pad = self._absorbable_pad(builder, head)
        members = [head]
        nxt = _sole_consumer(builder, head.name)
        if (nxt is not None and nxt.op == "BiasAdd" and node_name(data_inputs(nxt)[0]) == head.name
                and builder.src.const_value(data_inputs(nxt)[1]) is not None):
            members.append(nxt)
            nxt = _sole_consumer(builder, nxt.name)
        if nxt is not None and nxt.name in taken:
            nxt = None
        if nxt is not None and nxt.op in ACTIVATIONS and attr_dtype(nxt) == tf.float32:
            members.append(nxt)
        elif (self.kind == "conv" and nxt is not None and nxt.op in ("AddV2", "Add")
              and len(data_inputs(nxt)) == 2 and builder.rank(nxt.name) == 4):
            summand = [i for i in data_inputs(nxt) if node_name(i) != members[-1].name]
            relu = _sole_consumer(builder, nxt.name)
            conv_input = data_inputs(pad)[0] if pad is not None else data_inputs(head)[0]
            # A summand that is also the conv's input crashes the kernel (it sums
            # in place into the summand's buffer): TF 2.21 segfaults.
            if (len(summand) == 1 and builder.src.const_value(summand[0]) is None
                    and node_name(summand[0]) != node_name(conv_input)
                    and builder.rank(summand[0]) == 4 and relu is not None and relu.op == "Relu"):
                members += [nxt, relu]
        if self.kind == "depthwise" and (members[-1].op not in ACTIVATIONS
                                         or builder.range(data_inputs(head)[0])[0] < 0.0):
            # The fused depthwise kernel always applies Relu and takes quint8 only: the accumulator form
            # takes the conv and its bias, and what follows stays float.
            return [m.name for m in members if m.op not in ACTIVATIONS]
        return ([pad.name] if pad is not None else []) + [m.name for m in members]

    def _absorbable_pad(self, builder: Builder, head):
        """A zero Pad of H and W only, feeding this VALID conv alone: the kernel's padding_list does it."""
        if self.kind == "matmul" or head.attr["padding"].s != b"VALID":
            return None
        pad = builder.src.node(data_inputs(head)[0])
        if pad is None or pad.op != "Pad" or _sole_consumer(builder, pad.name) is not head:
            return None
        paddings = builder.src.const_value(data_inputs(pad)[1])
        if paddings is None or paddings.shape != (4, 2) or paddings[0].any() or paddings[3].any():
            return None
        lo, _ = builder.range(data_inputs(pad)[0])
        return pad if lo >= 0.0 or self.kind == "conv" else None

    def _head_ok(self, builder: Builder, node) -> bool:
        ins = data_inputs(node)
        if attr_dtype(node) != tf.float32 or builder.src.const_value(ins[1]) is None:
            return False
        lo, _ = builder.range(ins[0])
        if self.kind == "matmul":
            return not node.attr["transpose_a"].b  # A signed input is shifted to >= 0 (emit_chain).
        if not reference.conv_supported(node):
            return False
        if self.kind == "depthwise":
            shape = builder.shape(ins[0])
            # A signed input's shift is undone with a constant map over the static height and width.
            static = shape is not None and shape.rank == 4 and None not in shape.as_list()[1:]
            return builder.src.const_value(ins[1]).shape[3] == 1 and (lo >= 0.0 or static)
        return True

    # -- emission ---------------------------------------------------------
    def emit_chain(self, builder: Builder, nodes) -> Emission:
        e = builder.emission()
        pad = nodes[0] if nodes[0].op == "Pad" else None
        nodes = nodes[1:] if pad is not None else nodes
        head, last = nodes[0], nodes[-1]
        if self.kind == "depthwise" and last.op not in ACTIVATIONS:
            return self._emit_depthwise_accumulator(builder, e, head, last)
        ins = data_inputs(head)
        if pad is not None:
            ins = [data_inputs(pad)[0]] + ins[1:]
        base = head.name + "/eightbit"
        bias_node = next((n for n in nodes if n.op == "BiasAdd"), None)
        add_node = next((n for n in nodes if n.op in ("AddV2", "Add")), None)
        act = last.op if last.op in ACTIVATIONS else None

        lo, _ = builder.range(ins[0])
        x = (None if self.kind == "matmul" and lo < 0.0
             else e.quantized_input(ins[0], (U7,) if lo >= 0.0 or self.kind != "conv" else (S8,)))
        w = builder.src.const_value(ins[1])
        filt, wmin, wmax, w_amax, decoded = self._weights(e, base, w)
        x_max = None if x is None else encoded_range(x.encoding, *builder.range(ins[0]))[1]
        transposed = self.kind == "matmul" and head.attr["transpose_b"].b
        channels = w.shape[2] if self.kind == "depthwise" else w.shape[0] if transposed else w.shape[-1]
        bias = (builder.src.const_value(data_inputs(bias_node)[1]).astype(np.float64) if bias_node is not None
                else np.zeros([channels], np.float64))
        if self.kind == "matmul" and lo < 0.0:
            # x W = (x - lo) W + lo * (W's column sums): the shift's share joins the bias.
            x, x_max = _shifted_input(e, base, ins[0], *builder.range(ins[0]))
            bias = bias + lo * decoded.sum(axis=1 if transposed else 0)
        bias = e.const(base + "/bias", bias.astype(np.float32), tf.float32)

        out_enc = U7 if act else S8
        out_lo, out_hi = encoded_range(out_enc, *builder.range(last.name + ":0"))
        omin = e.const(base + "/output_min", out_lo, tf.float32)
        omax = e.const(base + "/output_max", out_hi, tf.float32)

        if self.kind == "matmul":
            attrs = dict(T1=tf.quint8, T2=tf.qint8, Tbias=tf.float32, transpose_a=False,
                         transpose_b=head.attr["transpose_b"].b, input_quant_mode="SCALED")
            inputs = [x.tensor, filt, bias, x.min, x.max, wmin, wmax, omin, omax]
            if act is None and _stays_quantized(builder, last):
                # A linear output >= 0 read by a quantized op (MatMul -> Reshape -> MatMul): 7-bit codes,
                # so no Dequantize/QuantizeV2 round trip.
                omin = e.const(base + "/output_min_u7", 0.0, tf.float32)
                omax = e.const(base + "/output_max_u7", encoded_range(U7, *builder.range(last.name + ":0"))[1],
                               tf.float32)
                op = "QuantizedMatMulWithBiasAndRequantize"
                e.add(make_node(op, base, inputs[:7] + [omin, omax], Toutput=tf.quint8, **attrs))
                return e.quantized_output(last, QTensor(base, base + ":1", base + ":2", U7), op, reported_as=head)
            if act is None:
                # Float output under the last node's name: float consumers read it unchanged.
                e.add(make_node("QuantizedMatMulWithBiasAndDequantize", last.name, inputs,
                                Toutput=tf.float32, **attrs))
                return e.float_output(last, last.name, reported_as=head,
                                      op_type="QuantizedMatMulWithBiasAndDequantize")
            op = "QuantizedMatMulWithBiasAndReluAndRequantize"
            e.add(make_node(op, base, inputs, Toutput=tf.quint8, **attrs))
        else:
            attrs = dict(Tinput=x.encoding.dtype, Tfilter=tf.qint8, Tbias=tf.float32,
                         out_type=out_enc.dtype, **reference.conv_attrs(head))
            if pad is not None:
                attrs["padding_list"] = [int(v) for v in builder.src.const_value(data_inputs(pad)[1]).reshape(-1)]
            inputs = [x.tensor, filt, bias, x.min, x.max, wmin, wmax, omin, omax]
            if self.kind == "depthwise":
                op = "QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize"
            elif add_node is not None:
                summand_t = next(i for i in data_inputs(add_node) if node_name(i) != nodes[-3].name)
                s = e.quantized_input(summand_t, (U7, S8))
                signed = s.encoding is S8
                op = ("QuantizedConv2DWithBiasSignedSumAndReluAndRequantize" if signed
                      else "QuantizedConv2DWithBiasSumAndReluAndRequantize")
                inputs += [s.tensor, s.min, s.max]
                attrs["Tsummand"] = s.encoding.dtype
            elif act:
                op = "QuantizedConv2DWithBiasAndReluAndRequantize"
            elif _goes_to_float(builder, last):
                # Dequantized straight from the int32 accumulator: no 8-bit output step (a signed 8-bit
                # output would cost half a step of 2 * max|y| / 254).
                op = "QuantizedConv2DWithBias"
                attrs["out_type"] = tf.qint32
                e.add(make_node(op, base, inputs[:7], **attrs))
                _accumulator_as_float(e, base, x, x_max, w_amax, last.name)
                return e.float_output(last, last.name, reported_as=head, op_type=op)
            else:
                op = "QuantizedConv2DWithBiasAndRequantize"
            e.add(make_node(op, base, inputs, **attrs))
        out = QTensor(base, base + ":1", base + ":2", out_enc)
        if act == "Relu6":
            clamp = base + "/relu6"
            e.add(make_node("QuantizedRelu6", clamp, list(out.triple), Tinput=tf.quint8, out_type=tf.quint8))
            out = QTensor(clamp, clamp + ":1", clamp + ":2", U7)
        return e.quantized_output(last, out, op, reported_as=head)

    def _emit_depthwise_accumulator(self, builder: Builder, e: Emission, head, last) -> Emission:
        """A depthwise conv (and its BiasAdd) as QuantizedDepthwiseConv2D, read back to float exactly.

        The kernel takes quint8 input only.  A signed input x in [lo, hi] is
        shifted to x - lo >= 0 before quantizing, and the shift's share of
        the output, lo times the filter summed over the taps that fall inside
        the zero-padded image (a constant map over height and width, from the
        decoded filter), is added back with the bias.
        """
        x_t, w_t = data_inputs(head)[:2]
        base = head.name + "/eightbit"
        lo, hi = builder.range(x_t)
        w = builder.src.const_value(w_t)
        filt, wmin, wmax, w_amax, decoded = self._weights(e, base, w)
        offset = (builder.src.const_value(data_inputs(last)[1]).astype(np.float64) if last.op == "BiasAdd"
                  else np.zeros([w.shape[2]], np.float64))
        if lo >= 0.0:
            x = e.quantized_input(x_t, (U7,))
            x_max = encoded_range(U7, lo, hi)[1]
        else:
            x, x_max = _shifted_input(e, base, x_t, lo, hi)
            offset = offset + lo * taps_inside(decoded[..., 0], builder.shape(x_t).as_list()[1:3],
                                                reference.conv_attrs(head))
        attrs = dict(Tinput=tf.quint8, Tfilter=tf.qint8, out_type=tf.qint32, **reference.conv_attrs(head))
        op = "QuantizedDepthwiseConv2D"
        e.add(make_node(op, base, [x.tensor, filt, x.min, x.max, wmin, wmax], **attrs))
        _accumulator_as_float(e, base, x, x_max, w_amax, base + "/scaled")
        offset_name = e.const(base + "/offset", offset.astype(np.float32), tf.float32)
        if offset.ndim == 1:
            e.add(make_node("BiasAdd", last.name, [base + "/scaled", offset_name], T=tf.float32,
                            data_format="NHWC"))
        else:
            e.add(make_node("AddV2", last.name, [base + "/scaled", offset_name], T=tf.float32))
        return e.float_output(last, last.name, reported_as=head, op_type=op)

    def _weights(self, e: Emission, base: str, w: np.ndarray):
        """(filter, its min and max consts, the max as values, the decoded filter q * max / 127)."""
        if self.kind == "matmul":
            amax = float(max(np.abs(w).max(), 1e-8))
            q = np.clip(np.round(w.astype(np.float64) / amax * 127), -127, 127).astype(np.int8)
            lo, hi = np.float32(-amax), np.float32(amax)
            decoded = q * (float(hi) / 127.0)
        else:
            axis = 3 if self.kind == "conv" else 2
            q, amax = quantize_symmetric_per_channel(w, axis=axis)
            lo, hi = -amax, amax
            decoded = q * np.expand_dims(amax.astype(np.float64) / 127.0, tuple(a for a in range(4) if a != axis))
        return (e.const(base + "/weights", q, tf.qint8), e.const(base + "/weights_min", lo, tf.float32),
                e.const(base + "/weights_max", hi, tf.float32), hi, decoded)


def _accumulator_as_float(e: Emission, base: str, x: QTensor, x_max: float, w_amax, name: str) -> str:
    """The qint32 accumulator of fused op `base` as float, in node `name` (Bitcast, Cast, Mul).

    TF 2.21's kernels return it on one scale, the largest channel's, whatever their min/max_output claim
    per channel (measured; tests/quantize/test_onednn.py checks the values).
    """
    in_scale = x_max / (255.0 if x.encoding.dtype == tf.quint8 else 127.0)
    scale = np.float32(float(np.max(w_amax)) * in_scale / 127.0)
    e.add(make_node("Bitcast", base + "/int32", [base], T=tf.qint32, type=tf.int32))
    e.add(make_node("Cast", base + "/float", [base + "/int32"], SrcT=tf.int32, DstT=tf.float32, Truncate=False))
    e.const(base + "/scale", scale, tf.float32)
    return e.add(make_node("Mul", name, [base + "/float", base + "/scale"], T=tf.float32))


def _shifted_input(e: Emission, base: str, tensor: str, lo: float, hi: float):
    """(x - lo in 7-bit quint8 codes over [0, hi - lo], its max for the kernels): a signed input made >= 0
    for kernels that take quint8 only."""
    shifted = e.add(make_node("Sub", base + "/shifted", [e.float_input(tensor), e.const(
        base + "/shift", np.float32(lo), tf.float32)], T=tf.float32))
    x_min, x_max = encoded_range(U7, 0.0, hi - lo)
    quantize = e.add(make_node("QuantizeV2", base + "/quantize", [
        shifted, e.const(base + "/quantize/min", np.float32(x_min), tf.float32),
        e.const(base + "/quantize/max", np.float32(x_max), tf.float32)], T=tf.quint8, mode=U7.mode))
    return QTensor(quantize, quantize + ":1", quantize + ":2", U7), x_max


def taps_inside(filt: np.ndarray, size, attrs) -> np.ndarray:
    """[H_out, W_out, C]: per output position and channel, the sum of the filter's taps (filt [kh, kw, C])
    that read inside the image, not its zero padding: a depthwise conv of an all-ones image."""
    sums = []
    for axis, n in enumerate(size):
        k, stride, dilation = filt.shape[axis], attrs["strides"][axis + 1], attrs["dilations"][axis + 1]
        reach = (k - 1) * dilation + 1
        if attrs["padding"] == "SAME":
            out = -(-n // stride)
            before = max((out - 1) * stride + reach - n, 0) // 2
        else:
            out, before = (n - reach) // stride + 1, 0
        rows = np.arange(out)[:, None] * stride - before + np.arange(k)[None, :] * dilation
        sums.append(((rows >= 0) & (rows < n)).astype(np.float64))
    return np.einsum("ik,jl,klc->ijc", sums[0], sums[1], filt)


def _consumers(builder: Builder, node):
    return [] if builder.src.is_output(node.name) else builder.src.consumers(node.name)


def _goes_to_float(builder: Builder, node) -> bool:
    """Whether every reader of `node` is a float op (an Add may become a fused conv's summand: not float)."""
    readers = _consumers(builder, node)
    return builder.src.is_output(node.name) or (
        bool(readers) and all(r.op not in QUANTIZERS and r.op not in ("Add", "AddV2") for r in readers))


def _stays_quantized(builder: Builder, node) -> bool:
    """A linear output that is >= 0 and read only by pass-through quantized ops that take 7-bit codes."""
    readers = _consumers(builder, node)
    return (bool(readers) and builder.range(node.name + ":0")[0] >= 0.0
            and all(r.op in ("MaxPool", "AvgPool", "Reshape") for r in readers))


QUANTIZERS = {
    "Conv2D": FusedQuantizer("conv"),
    "DepthwiseConv2dNative": FusedQuantizer("depthwise"),
    "MatMul": FusedQuantizer("matmul"),
    # Pass-through kernels keep the 7-bit codes they are given.
    "MaxPool": reference.PoolQuantizer("QuantizedMaxPool", prefer_7bit=True),
    "AvgPool": reference.PoolQuantizer("QuantizedAvgPool", prefer_7bit=True),
    "Reshape": reference.ReshapeQuantizer(prefer_7bit=True),
}
FALLBACK = reference.FALLBACK
