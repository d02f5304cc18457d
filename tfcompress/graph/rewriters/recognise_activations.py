"""Recognises activations spelled as elementwise ops, so they can be quantized.

    Maximum(x, 0)                          => Relu(x)
    Minimum(Relu(x), 6), ClipByValue(x,0,6) => Relu6(x)
    Minimum(Maximum(x, 0), 6)              => Relu6(x)
    Maximum(x, Mul(a, x)), 0 < a < 1       => LeakyRelu(x, alpha=a)
"""

import numpy as np

from tfcompress.graph.graph import Graph, make_node
from tfcompress.graph.pattern import OpTypePattern
from tfcompress.graph.rewriters.base import apply_pattern

MAX_ZERO = OpTypePattern("Maximum", name="act", inputs=["*", OpTypePattern("Const", name="c")], commutative=True)
MIN_SIX = OpTypePattern("Minimum", name="act",
                        inputs=[OpTypePattern("Relu", name="relu", single_consumer=True),
                                OpTypePattern("Const", name="c")], commutative=True)
CLIP = OpTypePattern("ClipByValue", name="act",
                     inputs=["*", OpTypePattern("Const", name="lo"), OpTypePattern("Const", name="hi")])
MAX_MIN = OpTypePattern("Maximum", name="act",
                        inputs=[OpTypePattern("Minimum", name="min", single_consumer=True,
                                              inputs=["*", OpTypePattern("Const", name="hi")], commutative=True),
                                OpTypePattern("Const", name="lo")], commutative=True)
LEAKY = OpTypePattern("Maximum", name="act",
                      inputs=["*", OpTypePattern("Mul", name="mul", single_consumer=True,
                                                 inputs=["*", OpTypePattern("Const", name="alpha")],
                                                 commutative=True)], commutative=True)


def _scalar(graph, node, target) -> bool:
    v = graph.const_value(node.name)
    return v is not None and v.size == 1 and float(v.reshape(())) == target


def _data(node, exclude):
    return [i for i in node.input if not i.startswith("^") and i.split(":")[0] not in exclude][0]


def _replace(graph, act, op, source, **attrs):
    graph.add(make_node(op, act.name, [source], T=_dtype(graph, act), **attrs))
    return True


def _dtype(graph, node):
    import tensorflow as tf
    return tf.as_dtype(node.attr["T"].type)


def _max_zero(graph, m):
    if not _scalar(graph, m["c"], 0.0):
        return False
    return _replace(graph, m["act"], "Relu", _data(m["act"], {m["c"].name}))


def _min_six(graph, m):
    if not _scalar(graph, m["c"], 6.0):
        return False
    return _replace(graph, m["act"], "Relu6", m["relu"].input[0])


def _clip(graph, m):
    if not (_scalar(graph, m["lo"], 0.0) and _scalar(graph, m["hi"], 6.0)):
        return False
    return _replace(graph, m["act"], "Relu6", m["act"].input[0])


def _max_min(graph, m):
    if not (_scalar(graph, m["lo"], 0.0) and _scalar(graph, m["hi"], 6.0)):
        return False
    return _replace(graph, m["act"], "Relu6", _data(m["min"], {m["hi"].name}))


def _leaky(graph, m):
    alpha = graph.const_value(m["alpha"].name)
    x = _data(m["act"], {m["mul"].name})
    if alpha.size != 1 or not 0.0 < float(alpha.reshape(())) < 1.0 or _data(m["mul"], {m["alpha"].name}) != x:
        return False
    return _replace(graph, m["act"], "LeakyRelu", x, alpha=float(np.float32(alpha.reshape(()))))


def run(graph: Graph) -> int:
    return (apply_pattern(graph, MIN_SIX, _min_six) + apply_pattern(graph, CLIP, _clip)
            + apply_pattern(graph, MAX_MIN, _max_min) + apply_pattern(graph, LEAKY, _leaky)
            + apply_pattern(graph, MAX_ZERO, _max_zero))
