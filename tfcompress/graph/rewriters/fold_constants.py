"""Evaluates every subgraph whose inputs are all constants into one Const.

    Const ─┐                      
           Rsqrt ─ Mul ─┐          Const(folded) ─┐
    Const ─────────────-┘   =>                    Mul(x, ·)
           x ───────────── Mul                  x ┘

Needed before batch-norm folding: Keras 3 exports BatchNormalization as
Rsqrt/Mul/Sub/AddV2 over its (frozen) variables.  Only the frontier of each
constant subgraph is materialised, so intermediate folds cost nothing.
"""

import tensorflow as tf

from tfcompress.graph.graph import Graph, node_name
from tfcompress.graph.runner import run_graph

# Ops that are not functions of their inputs, or must stay symbolic.
NOT_FOLDABLE = {
    "Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "VarHandleOp", "ReadVariableOp",
    "RandomUniform", "RandomStandardNormal", "TruncatedNormal", "RandomUniformInt", "Multinomial",
    "StatelessRandomUniformV2", "Assert", "NoOp", "Enter", "Exit", "Merge", "Switch", "NextIteration",
    "StatefulPartitionedCall", "PartitionedCall", "While", "StatelessWhile", "If", "StatelessIf",
    "Print", "PrintV2", "Const", "Dequantize", "QuantizeV2",
}


def run(graph: Graph) -> int:
    constant = {}
    for node in graph.topo_order():
        if node.op == "Const":
            constant[node.name] = True
            continue
        data = [i for i in node.input if not i.startswith("^")]
        constant[node.name] = (node.op not in NOT_FOLDABLE and bool(data)
                               and all(constant.get(node_name(i), False) for i in node.input))
    # Frontier: constant nodes (not Consts) read by a non-constant node or an output.
    frontier = []
    for name, is_const in constant.items():
        node = graph.nodes[name]
        if not is_const or node.op == "Const":
            continue
        readers = graph.consumers(name)
        if graph.is_output(name) or any(not constant.get(r.name, False) for r in readers):
            frontier.append(node)
    if not frontier:
        return 0
    fetches = [node for node in frontier if _outputs_read(graph, node) == {"0"}]
    if not fetches:
        return 0
    values = run_graph(graph.to_graph_def([n.name for n in fetches]), {},
                       [n.name + ":0" for n in fetches])
    for node, value in zip(fetches, values):
        dtype = tf.as_dtype(node.attr["T"].type) if "T" in node.attr else None
        graph.set_const(node.name, value, dtype=dtype)
    graph.invalidate()
    return len(fetches)


def _outputs_read(graph: Graph, node) -> set:
    """Output ports read downstream ({"0"} for a graph output); only those nodes fold."""
    used = {"0"} if graph.is_output(node.name) else set()
    for reader in graph.consumers(node.name):
        for inp in reader.input:
            if node_name(inp) == node.name and not inp.startswith("^"):
                used.add(inp.split(":")[1] if ":" in inp else "0")
    return used
