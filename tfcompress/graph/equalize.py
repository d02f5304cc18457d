"""Cross-layer equalization: per-channel weight ranges evened out between consecutive layers.

For y = W2 · relu(W1 · x + b1), scaling output channel i of the first layer
by 1/s_i and input channel i of the second by s_i leaves y unchanged
(relu(z / s) = relu(z) / s for s > 0).  With r1_i the range of W1's output
channel i and r2_i that of W2's input channel i, s_i = sqrt(r1_i / r2_i)
makes both sqrt(r1_i · r2_i): a layer whose channels span very different
ranges (a depthwise conv after batch-norm folding is the usual case) no
longer spends a per-tensor int8 grid on its largest channel.  Pairs are
equalized in turn, repeatedly, until the scales settle.

A pair is conv/depthwise -> (BiasAdd) -> (Relu | zero Pad | MaxPool)* ->
conv/depthwise, each link read by the next only: ReLU and zero padding commute
with a positive per-channel scale, max pooling too.  ReLU6 does not (its
clip at 6 would move), so a pair through it is left alone, as is any other
op between.  PReLU, LeakyReLU and dense layers (dense -> ReLU -> dense, a
flatten into a dense layer) commute with the scale too, but equalizing
through them raised the int8 error of the zoo's box net and VGG net (README,
cross-layer equalization), so they are not followed.  The per-tensor
weights of the eightbit reference kernels gain most; with TFLite's
per-channel weights what changes is the activations' ranges (see the
README's fidelity benchmark).

Reference:
  Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
  Correction", arXiv:1906.04721 (Sec. 4.1).
"""

from typing import List, Optional, Tuple

import numpy as np

from tfcompress.graph.graph import Graph, node_name
from tfcompress.io.frozen import FrozenModel

FIRST = ("Conv2D", "DepthwiseConv2dNative")
SECOND = ("Conv2D", "DepthwiseConv2dNative")
# Ops between the pair that commute with a positive per-channel scale.
BETWEEN = ("Relu", "MaxPool")
ROUNDS = 20
# Scales closer to 1 than this in a round end the iteration.
CONVERGED = 1e-3
# A channel whose weights are all (near) zero keeps scale 1.
EPS = 1e-12


def _sole_consumer(graph: Graph, name: str):
    users = graph.consumers(name)
    if len(users) != 1 or graph.is_output(name):
        return None
    return users[0]


def _weights(graph: Graph, node) -> Optional[np.ndarray]:
    ins = [i for i in node.input if not i.startswith("^")]
    if len(ins) < 2 or len(graph.consumers(node_name(ins[1]))) != 1:
        return None
    return graph.const_value(ins[1])


def _is_zero_pad(graph: Graph, node) -> bool:
    if node.op not in ("Pad", "PadV2"):
        return False
    if node.op == "PadV2":
        value = graph.const_value(node.input[2])
        if value is None or float(np.max(np.abs(value))) != 0.0:
            return False
    paddings = graph.const_value(node.input[1])
    return paddings is not None and paddings.shape == (4, 2) and not paddings[3].any()


def find_pairs(graph: Graph) -> List[Tuple[str, Optional[str], str]]:
    """(first layer, its BiasAdd or None, second layer) node names for every pair that can be equalized."""
    pairs = []
    for node in graph.topo_order():
        if node.op not in FIRST or _weights(graph, node) is None:
            continue
        if node.op == "DepthwiseConv2dNative" and _weights(graph, node).shape[3] != 1:
            continue  # A channel multiplier > 1 maps input channel i to several outputs.
        bias, nxt = None, _sole_consumer(graph, node.name)
        if nxt is not None and nxt.op == "BiasAdd" and graph.const_value(nxt.input[1]) is not None \
                and len(graph.consumers(node_name(nxt.input[1]))) == 1:
            bias, nxt = nxt.name, _sole_consumer(graph, nxt.name)
        while nxt is not None and (nxt.op in BETWEEN or _is_zero_pad(graph, nxt)):
            nxt = _sole_consumer(graph, nxt.name)
        if nxt is None or nxt.op not in SECOND or _weights(graph, nxt) is None:
            continue
        if nxt.op == "DepthwiseConv2dNative" and _weights(graph, nxt).shape[3] != 1:
            continue
        pairs.append((node.name, bias, nxt.name))
    return pairs


def _channels_last(w: np.ndarray, op: str, output: bool) -> np.ndarray:
    """|w| as [values, channels]: output channels (output=True) or input channels of an HWIO or HWC1 kernel."""
    if op == "DepthwiseConv2dNative":  # HWC1: input channel c is output channel c.
        return np.abs(w[..., 0]).reshape(-1, w.shape[2])
    if output:
        return np.abs(w).reshape(-1, w.shape[3])
    return np.abs(w).transpose(0, 1, 3, 2).reshape(-1, w.shape[2])


def _scaled(w: np.ndarray, op: str, s: np.ndarray, output: bool) -> np.ndarray:
    """w with output channel c divided by s_c (output=True) or input channel c multiplied by s_c."""
    shape = [1, 1, -1, 1] if (op == "DepthwiseConv2dNative" or not output) else [1, 1, 1, -1]
    return (w / s.reshape(shape) if output else w * s.reshape(shape)).astype(w.dtype)


def equalize(model: FrozenModel) -> Tuple[FrozenModel, int]:
    """Returns (the equalized model, how many layer pairs were equalized)."""
    graph = Graph(model.graph_def, outputs=[s.tensor for s in model.outputs])
    pairs = find_pairs(graph)
    if not pairs:
        return model, 0
    for _ in range(ROUNDS):
        largest = 0.0
        for first, bias, second in pairs:
            n1, n2 = graph.node(first), graph.node(second)
            w1, w2 = _weights(graph, n1), _weights(graph, n2)
            r1 = _channels_last(w1, n1.op, output=True).max(axis=0)
            r2 = _channels_last(w2, n2.op, output=False).max(axis=0)
            s = np.where((r1 > EPS) & (r2 > EPS), np.sqrt(r1 / np.maximum(r2, EPS)), 1.0)
            graph.set_const(node_name(n1.input[1]), _scaled(w1, n1.op, s, output=True))
            graph.set_const(node_name(n2.input[1]), _scaled(w2, n2.op, s, output=False))
            if bias is not None:
                b_name = node_name(graph.node(bias).input[1])
                b = graph.const_value(b_name)
                graph.set_const(b_name, (b / s).astype(b.dtype))
            largest = max(largest, float(np.max(np.abs(np.log(s)))))
        if largest < CONVERGED:
            break
    return model.replace_graph(graph.to_graph_def()), len(pairs)
