"""Bias correction: cancel the mean output shift that int8 weight rounding causes.

Rounding a layer's weights W to W_q = W + ε shifts its output by ε·x, whose
expectation E[ε·x] = ε·E[x] is, per output channel, a constant that the
bias can absorb.  E[x] comes from the calibration cache (per-channel means of
every activation), so no image is read.  For a convolution the expected
input is taken as an image filled with the channel means, convolved with ε
under the layer's own padding, so the zeros a padded border sees are
accounted for; the bias correction is the spatial mean of that result.

ε is computed with the weight quantizer TFLite uses: symmetric int8 in
[-127, 127], one scale max|w|/127 per output channel (conv, depthwise,
dense) or per tensor.

References:
  Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", arXiv:1906.04721 (Sec. 4.2, empirical bias correction).
  Banner et al., "Post training 4-bit quantization of convolutional networks
  for rapid-deployment", arXiv:1810.05723 (bias correction of weights).
"""

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import tensor_util

from tfcompress.calibrate.stats import TensorStats
from tfcompress.io.frozen import FrozenModel

LINEAR_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
WEIGHT_LEVELS = 127


def weight_rounding_error(weights: np.ndarray, op: str, per_channel: bool = True) -> np.ndarray:
    """ε = dequantize(quantize(W)) - W for TFLite's symmetric int8 weights (TF layouts: HWIO, HWCM, [in, out])."""
    w = weights.astype(np.float64)
    if op == "DepthwiseConv2dNative":
        flat = w.reshape(w.shape[0], w.shape[1], -1)  # Output channel c*M + m is the last axis.
    else:
        flat = w
    if per_channel:
        amax = np.abs(flat.reshape(-1, flat.shape[-1])).max(axis=0)
    else:
        amax = np.full(flat.shape[-1], np.abs(flat).max())
    # As the converter computes it: float32 scale and quotient, ties rounded away from zero (std::round).  A
    # quotient within float rounding of a tie may still land either way, depending on how the converter's
    # build evaluates it.
    scale = np.where(amax > 0, amax.astype(np.float32) / np.float32(WEIGHT_LEVELS), np.float32(1.0))
    quotient = flat.astype(np.float32) / scale.astype(np.float32)
    codes = np.sign(quotient) * np.floor(np.abs(quotient.astype(np.float64)) + 0.5)
    rounded = np.clip(codes, -WEIGHT_LEVELS, WEIGHT_LEVELS) * scale.astype(np.float64)
    return (rounded - flat).reshape(w.shape)


def _input_shape(node, graph: tf.Graph):
    return graph.get_tensor_by_name(node.input[0] if ":" in node.input[0] else node.input[0] + ":0").shape


def expected_shift(node, error: np.ndarray, mean: np.ndarray, input_shape) -> np.ndarray:
    """E[ε·x] per output channel for one linear op, x having channel means `mean`."""
    if node.op == "MatMul":
        transpose_b = node.attr["transpose_b"].b
        return mean @ (error.T if transpose_b else error)
    _, h, w, _ = [int(d) if d is not None else 1 for d in input_shape]
    image = np.broadcast_to(mean.astype(np.float32), (1, h, w, mean.size))
    strides = list(node.attr["strides"].list.i)
    padding = node.attr["padding"].s.decode()
    dilations = list(node.attr["dilations"].list.i) or [1, 1, 1, 1]
    if padding == "EXPLICIT":
        pads = list(node.attr["explicit_paddings"].list.i)
        image = np.pad(image, [(pads[0], pads[1]), (pads[2], pads[3]), (pads[4], pads[5]), (pads[6], pads[7])])
        padding = "VALID"
    if node.op == "Conv2D":
        out = tf.nn.conv2d(image, error.astype(np.float32), strides=strides, padding=padding, dilations=dilations)
    else:
        out = tf.nn.depthwise_conv2d(image, error.astype(np.float32), strides=strides, padding=padding,
                                     dilations=dilations[1:3])
    return out.numpy().reshape(-1, out.shape[-1]).mean(axis=0)


def correct_biases(model: FrozenModel, stats: Dict[str, TensorStats], per_channel: bool = True
                   ) -> Tuple[FrozenModel, int]:
    """Subtracts each linear op's expected weight-rounding shift from the BiasAdd that follows it.

    Args:
      model: an optimized float model (batch norm folded, so every
        conv/depthwise/matmul with a bias is followed by a BiasAdd of a Const).
      stats: calibration statistics of that model, with channel sums.
      per_channel: as the TFLite conversion will quantize weights.

    Returns:
      (corrected model, number of biases corrected).  Ops without a constant
      weight, bias or input statistics are left alone.
    """
    graph_def = tf.compat.v1.GraphDef()
    graph_def.CopyFrom(model.graph_def)
    nodes = {n.name: n for n in graph_def.node}
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(model.graph_def, name="")

    def const_node(name: str):
        node = nodes.get(name.split(":")[0])
        return node if node is not None and node.op == "Const" else None

    corrected, seen = 0, set()
    for bias_add in [n for n in graph_def.node if n.op == "BiasAdd"]:
        linear = nodes.get(bias_add.input[0].split(":")[0])
        if linear is None or linear.op not in LINEAR_OPS or (linear.op == "MatMul" and linear.attr["transpose_a"].b):
            continue
        if bias_add.input[1] in seen:  # A shared bias would be corrected twice.
            continue
        weights, bias = const_node(linear.input[1]), const_node(bias_add.input[1])
        source = linear.input[0] if ":" in linear.input[0] else linear.input[0] + ":0"
        input_stats = stats.get(source)
        if weights is None or bias is None or input_stats is None or input_stats.channel_sum.size == 0:
            continue
        w = tensor_util.MakeNdarray(weights.attr["value"].tensor)
        error = weight_rounding_error(w, linear.op, per_channel)
        shift = expected_shift(linear, error, input_stats.channel_mean(), _input_shape(linear, graph))
        b = tensor_util.MakeNdarray(bias.attr["value"].tensor).astype(np.float64)
        bias.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto((b - shift).astype(np.float32)))
        seen.add(bias_add.input[1])
        corrected += 1
    return model.replace_graph(graph_def), corrected
