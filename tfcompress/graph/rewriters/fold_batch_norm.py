"""Folds inference batch norm into the preceding Conv2D / depthwise / MatMul.

Two forms are recognised:

  FusedBatchNorm{,V2,V3}(is_training=False):
    y = gamma * (x - mean) / sqrt(var + eps) + beta

  Keras 3's decomposition, once constants are folded:
    y = x * s + t          (Mul by a per-channel Const, then AddV2/Add/BiasAdd)

Either way, with conv output x = W*in [+ b]:

    in ─ Conv2D(W) ─ [BiasAdd(b)] ─ BN        in ─ Conv2D(W·s) ─ BiasAdd(b·s + t)

References:
  Ioffe & Szegedy, "Batch Normalization", arXiv:1502.03167 (the affine form);
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", arXiv:1712.05877, section 3.2 (folding).
"""

import numpy as np
import tensorflow as tf

from tfcompress.graph.graph import Graph, make_const, make_node
from tfcompress.graph.pattern import OpTypePattern
from tfcompress.graph.rewriters.base import (LINEAR_OPS, apply_pattern, channel_vector, output_channels,
                                             scale_output_channels)

_LINEAR = OpTypePattern(LINEAR_OPS, name="linear", inputs=["*", OpTypePattern("Const", name="weights")],
                        single_consumer=True)
_LINEAR_BIAS = OpTypePattern("BiasAdd", name="bias_add",
                             inputs=[_LINEAR, OpTypePattern("Const", name="bias")], single_consumer=True)

FUSED = [OpTypePattern("FusedBatchNorm|FusedBatchNormV2|FusedBatchNormV3", name="bn",
                       inputs=[base, OpTypePattern("Const", name="gamma"), OpTypePattern("Const", name="beta"),
                               OpTypePattern("Const", name="mean"), OpTypePattern("Const", name="var")])
         for base in (_LINEAR_BIAS, _LINEAR)]


def _mul(base):
    return OpTypePattern("Mul", name="mul", inputs=[base, OpTypePattern("Const", name="scale")],
                         commutative=True, single_consumer=True)


DECOMPOSED = [OpTypePattern("AddV2|Add|BiasAdd", name="add",
                            inputs=[_mul(base), OpTypePattern("Const", name="shift")], commutative=True)
              for base in (_LINEAR_BIAS, _LINEAR)]
# A lone per-channel Mul (BN without center, or a scale layer).
SCALE_ONLY = [_mul(base) for base in (_LINEAR_BIAS, _LINEAR)]


def _fold(graph: Graph, match, scale: np.ndarray, shift: np.ndarray, last) -> bool:
    linear = match["linear"]
    weights = graph.const_value(match["weights"].name)
    dtype = weights.dtype
    bias = graph.const_value(match["bias"].name) if "bias" in match else np.zeros_like(scale)
    new_w = scale_output_channels(linear.op, weights.astype(np.float64), scale, linear.attr).astype(dtype)
    new_b = (bias.reshape(-1).astype(np.float64) * scale + shift).astype(dtype)
    w_name = graph.unique_name(linear.name + "/folded_weights")
    graph.add(make_const(w_name, new_w))
    graph.set_inputs(linear, [linear.input[0], w_name, *linear.input[2:]])
    b_name = graph.unique_name(last.name + "/folded_bias")
    graph.add(make_const(b_name, new_b))
    fmt = {}
    if linear.op != "MatMul":
        fmt["data_format"] = linear.attr["data_format"].s.decode() or "NHWC"
    bias_add = make_node("BiasAdd", last.name, [linear.name, b_name], T=tf.as_dtype(dtype), **fmt)
    graph.add(bias_add)  # Same name as the node it replaces: consumers are unchanged.
    if "bias_add" in match and match["bias_add"].name != last.name:
        graph.remove(match["bias_add"].name)
    if "mul" in match and match["mul"].name != last.name:
        graph.remove(match["mul"].name)
    return True


def _channels(graph, match):
    weights = graph.const_value(match["weights"].name)
    return output_channels(match["linear"].op, weights, match["linear"].attr)


def _fold_fused(graph: Graph, match) -> bool:
    bn = match["bn"]
    if bn.attr["is_training"].b:
        return False
    if any(graph.consumers(f"{bn.name}")) and any(
            i.startswith(bn.name + ":") and not i.endswith(":0")
            for c in graph.consumers(bn.name) for i in c.input):
        return False  # Batch statistics are read: not an inference BN.
    c = _channels(graph, match)
    vals = [channel_vector(graph.const_value(match[k].name), c) for k in ("gamma", "beta", "mean", "var")]
    if any(v is None for v in vals):
        return False
    gamma, beta, mean, var = [v.astype(np.float64) for v in vals]
    eps = bn.attr["epsilon"].f
    scale = gamma / np.sqrt(var + eps)
    return _fold(graph, match, scale, beta - mean * scale, bn)


def _fold_decomposed(graph: Graph, match) -> bool:
    c = _channels(graph, match)
    scale = channel_vector(graph.const_value(match["scale"].name), c)
    shift = channel_vector(graph.const_value(match["shift"].name), c)
    if scale is None or shift is None:
        return False
    return _fold(graph, match, scale.astype(np.float64), shift.astype(np.float64), match["add"])


def _fold_scale(graph: Graph, match) -> bool:
    scale = channel_vector(graph.const_value(match["scale"].name), _channels(graph, match))
    if scale is None:
        return False
    return _fold(graph, match, scale.astype(np.float64), np.zeros_like(scale, dtype=np.float64), match["mul"])


def run(graph: Graph) -> int:
    count = 0
    for pattern in FUSED:
        count += apply_pattern(graph, pattern, _fold_fused)
    for pattern in DECOMPOSED:
        count += apply_pattern(graph, pattern, _fold_decomposed)
    for pattern in SCALE_ONLY:
        count += apply_pattern(graph, pattern, _fold_scale)
    return count
