"""Replaces shape computations on statically known shapes by constants.

    x[?, 4, 4, 8] ─ Shape ─ StridedSlice ─ Pack(·, 128) ─┐         x ─ Reshape(·, Const[-1, 128])
    x ───────────────────────────────────────────── Reshape   =>

Keras' Flatten spells its target shape dynamically; with the batch dimension
left at -1 and the others known, the Reshape's shape is a constant, which
QuantizedReshape needs.  A Shape whose input is fully known becomes a Const.
"""

import numpy as np
import tensorflow as tf

from tfcompress.graph.graph import Graph, make_const
from tfcompress.graph.pattern import OpTypePattern
from tfcompress.graph.rewriters.base import apply_pattern

FLATTEN = OpTypePattern("Reshape", name="reshape", inputs=[
    "*", OpTypePattern("Pack", name="pack", inputs=[
        OpTypePattern("StridedSlice", inputs=[OpTypePattern("Shape", name="shape"), "Const", "Const", "Const"]),
        OpTypePattern("Const", name="rest")])])


def _static_shapes(graph: Graph) -> dict:
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(graph.to_graph_def(), name="")
    return {t.name: t.shape for op in g.get_operations() for t in op.outputs}


def run(graph: Graph) -> int:
    shapes = _static_shapes(graph)

    def flatten(g: Graph, m) -> bool:
        x = m["reshape"].input[0]
        src = m["shape"].input[0]
        src_t = src if ":" in src else src + ":0"
        x_t = x if ":" in x else x + ":0"
        rest = g.const_value(m["rest"].name)
        shape = shapes.get(x_t)
        if src_t != x_t or shape is None or shape.rank is None or rest is None or rest.size != 1 \
                or any(d is None for d in shape.as_list()[1:]):
            return False
        size = int(np.prod(shape.as_list()[1:]))
        if int(rest.reshape(())) not in (-1, size):
            return False
        name = g.unique_name(m["reshape"].name + "/static_shape")
        g.add(make_const(name, np.array([-1, size], np.int32)))
        g.set_inputs(m["reshape"], [m["reshape"].input[0], name, *m["reshape"].input[2:]])
        return True

    count = apply_pattern(graph, FLATTEN, flatten)
    for node in list(graph.nodes.values()):
        if node.op == "Shape":
            shape = shapes.get(node.input[0] if ":" in node.input[0] else node.input[0] + ":0")
            if shape is not None and shape.is_fully_defined():
                out_type = tf.as_dtype(node.attr["out_type"].type)
                graph.add(make_const(node.name, np.array(shape.as_list(), out_type.as_numpy_dtype)))
                count += 1
    return count
