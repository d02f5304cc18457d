"""Turns per-channel constant adds after a linear op into BiasAdd, and merges chains.

    Conv2D ─ AddV2(·, Const[C])        Conv2D ─ BiasAdd(·, Const[C])
    X ─ BiasAdd(b1) ─ BiasAdd(b2)  =>  X ─ BiasAdd(b1 + b2)

The quantizers fuse Conv2D/MatMul with a following BiasAdd, so every bias must
take that form.
"""

import numpy as np
import tensorflow as tf

from tfcompress.graph.graph import Graph, make_const, make_node
from tfcompress.graph.pattern import OpTypePattern
from tfcompress.graph.rewriters.base import (LINEAR_OPS, apply_pattern, channel_vector, output_channels)

ADD_AFTER_LINEAR = OpTypePattern(
    "AddV2|Add", name="add",
    inputs=[OpTypePattern(LINEAR_OPS, name="linear", inputs=["*", OpTypePattern("Const", name="weights")]),
            OpTypePattern("Const", name="bias")],
    commutative=True)

BIAS_CHAIN = OpTypePattern(
    "BiasAdd|AddV2|Add", name="outer",
    inputs=[OpTypePattern("BiasAdd", name="inner", inputs=["*", OpTypePattern("Const", name="b1")],
                          single_consumer=True),
            OpTypePattern("Const", name="b2")],
    commutative=True)


def _to_bias_add(graph: Graph, match) -> bool:
    linear, add = match["linear"], match["add"]
    weights = graph.const_value(match["weights"].name)
    bias = channel_vector(graph.const_value(match["bias"].name), output_channels(linear.op, weights, linear.attr))
    if bias is None:
        return False
    b_name = graph.unique_name(add.name + "/bias")
    graph.add(make_const(b_name, bias))
    fmt = {} if linear.op == "MatMul" else {"data_format": linear.attr["data_format"].s.decode() or "NHWC"}
    graph.add(make_node("BiasAdd", add.name, [linear.name, b_name], T=tf.as_dtype(bias.dtype), **fmt))
    return True


def _merge(graph: Graph, match) -> bool:
    inner, outer = match["inner"], match["outer"]
    b1 = graph.const_value(match["b1"].name)
    b2 = channel_vector(graph.const_value(match["b2"].name), b1.size)
    if b2 is None:
        return False
    b_name = graph.unique_name(outer.name + "/bias")
    graph.add(make_const(b_name, (b1.astype(np.float64) + b2).astype(b1.dtype)))
    graph.add(make_node("BiasAdd", outer.name, [inner.input[0], b_name], T=tf.as_dtype(b1.dtype),
                        data_format=inner.attr["data_format"].s.decode() or "NHWC"))
    graph.remove(inner.name)
    return True


def run(graph: Graph) -> int:
    return apply_pattern(graph, ADD_AFTER_LINEAR, _to_bias_add) + apply_pattern(graph, BIAS_CHAIN, _merge)
