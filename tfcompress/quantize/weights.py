"""Quantizing constants: the `weights` and `weights_rounded` modes and shared helpers.

Quantized constants are produced by running TF's own QuantizeV2 kernel, so
their encoding is exactly what the quantized kernels and Dequantize expect.
"""

from typing import Tuple

import numpy as np
import tensorflow as tf

from tfcompress.graph.graph import Graph, make_const, make_node


def zero_exact_range(lo: float, hi: float, levels: int = 255) -> Tuple[float, float]:
    """The smallest widening of [lo, hi] (which holds 0) whose `levels` steps put 0.0 exactly on a code.

    TF's quantized kernels subtract the code of 0.0 rounded to an integer (`FloatToQuantizedUnclamped`), so
    with a range whose 0.0 falls between codes every value is read shifted by up to half a step, the same
    way for all: a systematic error that a conv sums over its whole window.  TFLite nudges its ranges the
    same way (Jacob et al., arXiv:1712.05877, Sec. 2.1: "the real value 0 be exactly representable").
    """
    if lo >= 0.0 or hi <= 0.0 or hi - lo <= 0.0:
        return lo, hi
    zero = int(np.clip(np.round(-lo * levels / (hi - lo)), 1, levels - 1))
    step = max(-lo / zero, hi / (levels - zero))
    return -zero * step, (levels - zero) * step


def quantize_affine(value: np.ndarray, dtype=tf.quint8, exact_zero: bool = False
                    ) -> Tuple[np.ndarray, float, float]:
    """Per-tensor affine quantization (range widened to contain 0), MIN_COMBINED mode.

    Args:
      exact_zero: widen the range so 0.0 is a code (`zero_exact_range`).

    Returns:
      (quantized array, actual min, actual max) as TF's QuantizeV2 produced them.
    """
    lo, hi = float(min(value.min(), 0.0)), float(max(value.max(), 0.0))
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    if exact_zero:
        lo, hi = zero_exact_range(lo, hi)
    q = tf.raw_ops.QuantizeV2(input=tf.constant(value, tf.float32), min_range=lo, max_range=hi, T=dtype,
                              mode="MIN_COMBINED")
    return q.output.numpy(), float(q.output_min.numpy()), float(q.output_max.numpy())


def quantize_symmetric_per_channel(value: np.ndarray, axis: int, levels: int = 127
                                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel qint8 (narrow range [-levels, levels]) along `axis`.

    Returns:
      (int8 array, per-channel max |w| as float32), so w ≈ q * max / levels.
    """
    moved = np.moveaxis(value.astype(np.float64), axis, -1)
    amax = np.abs(moved.reshape(-1, moved.shape[-1])).max(axis=0)
    amax = np.where(amax > 0, amax, 1e-8)
    q = np.clip(np.round(moved / amax * levels), -levels, levels).astype(np.int8)
    return np.moveaxis(q, -1, axis), amax.astype(np.float32)


def _channel_axis(graph: Graph, name: str, rank: int) -> int:
    """Output-channel axis of a weight, from how its consumers use it."""
    for consumer in graph.consumers(name):
        if consumer.op == "DepthwiseConv2dNative":
            return 2
        if consumer.op == "MatMul" and consumer.attr["transpose_b"].b and consumer.input[1] == name:
            return 0
    return rank - 1


def quantize_weights(graph: Graph, *, bitdepth: int, min_weight_size: int) -> int:
    """Replaces large float Consts by qint8 Consts + per-channel Dequantize.

    Args:
      graph: modified in place.
      bitdepth: 2..8; values use 2^(bitdepth-1)-1 levels each side of zero.
      min_weight_size: smaller Consts stay float.

    Returns:
      Number of constants quantized.
    """
    levels = 2 ** (bitdepth - 1) - 1
    count = 0
    for node in list(graph.nodes.values()):
        if node.op != "Const" or node.attr["dtype"].type != tf.float32.as_datatype_enum:
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        if value.size < min_weight_size or value.ndim == 0:
            continue
        axis = _channel_axis(graph, node.name, value.ndim)
        q, amax = quantize_symmetric_per_channel(value, axis, levels)
        # Dequantize (SCALED, narrow) maps q to q * max / 127: rescale the range
        # so that `levels` codes span it.
        rng = amax * np.float32(127.0 / levels)
        qname = node.name + "/quantized"
        graph.add(make_const(qname, q, tf.qint8))
        graph.add(make_const(qname + "_min", -rng))
        graph.add(make_const(qname + "_max", rng))
        graph.add(make_node("Dequantize", node.name, [qname, qname + "_min", qname + "_max"], T=tf.qint8,
                            mode="SCALED", narrow_range=True, axis=axis, dtype=tf.float32))
        count += 1
    return count


def round_weights(graph: Graph, *, bitdepth: int, min_weight_size: int) -> int:
    """Snaps large float Consts to 2^bitdepth evenly spaced levels over their range (stay float).

    The graph's size is unchanged, but the constants now hold few distinct
    values and compress well with gzip.
    """
    steps = 2 ** bitdepth - 1
    count = 0
    for node in list(graph.nodes.values()):
        if node.op != "Const" or node.attr["dtype"].type != tf.float32.as_datatype_enum:
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        if value.size < min_weight_size:
            continue
        lo, hi = float(value.min()), float(value.max())
        if hi == lo:
            continue
        step = (hi - lo) / steps
        graph.set_const(node.name, (np.round((value.astype(np.float64) - lo) / step) * step + lo)
                        .astype(np.float32))
        count += 1
    return count
