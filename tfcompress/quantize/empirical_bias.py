"""Empirical bias correction of an eightbit graph (reference kernels), layer by layer, against its float graph.

In the reference chain (`quantize.reference`) every conv and matmul hands
its exact float accumulator to the float graph's own BiasAdd, so the bias is
a float constant of the quantized graph, under the float graph's node name.
What int8 leaves systematic in a layer's output (weight rounding, the error
its input carries, the asymmetry of clipped ranges) has a mean per channel
that this bias absorbs.  Going through those BiasAdds in graph order, each
one's mean error against the float graph's same node is measured on the
calibration images, with every earlier bias already corrected, and
subtracted from its bias where the images resolve it
(`calibrate.stats.resolved_mean`, as for TFLite's `export.empirical_bias`).
Where a Relu or Relu6 alone reads the BiasAdd, the mean is over the values
the float graph has inside the activation's open interval, as the TFLite
correction takes it over a fused activation's: an error where the float
value is clipped away reaches nothing downstream.

Reference:
  Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", arXiv:1906.04721 (Sec. 4.2, empirical bias correction).
"""

from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from tfcompress.calibrate.stats import resolved_mean
from tfcompress.graph.graph import Graph, node_name
from tfcompress.graph.runner import GraphRunner
from tfcompress.io.frozen import FrozenModel

# Images run per measurement (the calibration set's first ones): two graph runs per corrected layer.
MAX_IMAGES = 128
BATCH = 32


def correctable(quantized: FrozenModel, float_model: FrozenModel) -> List[Tuple[str, str]]:
    """(BiasAdd node, its bias Const) pairs, in graph order: a BiasAdd after a quantized op's float
    accumulator (a node named N with a node "N/eightbit"), present in the float graph, whose Const bias
    nothing else reads."""
    nodes = {n.name: n for n in quantized.graph_def.node}
    float_ops = {n.name: n.op for n in float_model.graph_def.node}
    graph = Graph(quantized.graph_def)
    pairs = []
    for n in quantized.graph_def.node:
        if n.op != "BiasAdd" or float_ops.get(n.name) != "BiasAdd" or len(n.input) < 2:
            continue
        source, bias = n.input[0].split(":")[0], n.input[1].split(":")[0]
        if source + "/eightbit" in nodes and nodes.get(bias) is not None and nodes[bias].op == "Const" \
                and len(graph.consumers(bias)) == 1:
            pairs.append((n.name, bias))
    return pairs


# What the activation reading a BiasAdd alone lets through: the open interval of float values that count.
_ACTIVE = {"Relu": (0.0, np.inf), "Relu6": (0.0, 6.0)}


def _active_interval(float_graph: Graph, outputs, node: str) -> Tuple[float, float]:
    readers = float_graph.consumers(node)
    if len(readers) == 1 and node not in outputs and readers[0].op in _ACTIVE:
        return _ACTIVE[readers[0].op]
    return (-np.inf, np.inf)


def _channel_moments(runner: GraphRunner, other: GraphRunner, name: str, images: np.ndarray,
                     feeds: Dict[str, np.ndarray], active: Tuple[float, float]):
    """(count, sum, sum of squares) per channel of (quantized - float) at tensor `name`, over the values
    whose float value is inside the open interval `active`."""
    count, total, squares = 0.0, 0.0, 0.0
    q_tensor = runner.graph.get_tensor_by_name(name + ":0")
    f_tensor = other.graph.get_tensor_by_name(name + ":0")
    for start in range(0, len(images), BATCH):
        batch = images[start:start + BATCH]
        feed = {runner.feeds[0]: batch}
        feed.update({runner.graph.get_tensor_by_name(k + ":0"): v for k, v in feeds.items()})
        got = runner.session.run(q_tensor, feed)
        want = other.session.run(f_tensor, {other.feeds[0]: batch})
        want = want.astype(np.float64).reshape(-1, got.shape[-1])
        inside = (want > active[0]) & (want < active[1])
        err = (got.astype(np.float64).reshape(want.shape) - want) * inside
        count = count + inside.sum(axis=0)
        total = total + err.sum(axis=0)
        squares = squares + (err ** 2).sum(axis=0)
    return count, total, squares


def correct(quantized: FrozenModel, float_model: FrozenModel, images: np.ndarray
            ) -> Tuple[FrozenModel, List[str]]:
    """Returns (the graph with corrected biases, the BiasAdd nodes corrected).

    Args:
      quantized: a reference-chain eightbit graph of `float_model`.
      float_model: the float graph (the same node names).
      images: float NHWC calibration images (the first MAX_IMAGES are used).
    """
    pairs = correctable(quantized, float_model)
    if not pairs:
        return quantized, []
    images = np.asarray(images[:MAX_IMAGES], np.float32)
    consts = {n.name: n for n in quantized.graph_def.node if n.op == "Const"}
    values = {bias: tf.make_ndarray(consts[bias].attr["value"].tensor).astype(np.float32) for _, bias in pairs}
    feeds: Dict[str, np.ndarray] = {}
    done = []
    float_graph = Graph(float_model.graph_def)
    outputs = {node_name(o.tensor) for o in float_model.outputs}
    with GraphRunner(quantized.graph_def, [quantized.image_input().tensor], [], inner_fetches=True) as runner, \
            GraphRunner(float_model.graph_def, [float_model.image_input().tensor], [],
                        inner_fetches=True) as reference:
        for node, bias in pairs:
            shift = resolved_mean(*_channel_moments(runner, reference, node, images, feeds,
                                                    _active_interval(float_graph, outputs, node)))
            if not np.any(shift):
                continue
            values[bias] = (values[bias] - shift.reshape(values[bias].shape)).astype(np.float32)
            feeds[bias] = values[bias]
            done.append(node)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.CopyFrom(quantized.graph_def)
    for n in graph_def.node:
        if n.name in feeds:
            n.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(feeds[n.name]))
    return quantized.replace_graph(graph_def), done
