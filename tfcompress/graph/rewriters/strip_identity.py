"""Removes Identity, IdentityN, StopGradient, Snapshot and NoOp nodes and stale control edges.

    Conv2D -> Identity -> Relu        Conv2D -> Relu
    ^NoOp (control)            =>      (no control edges)

IdentityN passes each input k through as output k; Keras' swish leaves one
behind its custom gradient (`IdentityN(x * sigmoid(x), x)`), and its output 0
is the activation every later layer reads.

In a frozen inference graph control edges only ordered variable reads, which
are Consts now; dropping them cannot change any value.  Graph outputs are kept
by name.
"""

from tfcompress.graph.graph import Graph

PASS_THROUGH = {"Identity", "StopGradient", "Snapshot", "PreventGradient", "CheckNumerics"}


def run(graph: Graph) -> int:
    count = 0
    for node in graph.nodes.values():
        controls = [i for i in node.input if i.startswith("^")]
        if controls:
            graph.set_inputs(node, [i for i in node.input if not i.startswith("^")])
            count += 1
    for node in list(graph.nodes.values()):
        if node.op == "NoOp" and not graph.is_output(node.name):
            graph.remove(node.name)
            count += 1
        elif node.op in PASS_THROUGH and not graph.is_output(node.name) and len(node.input) == 1:
            graph.rewire(node.name, node.input[0])
            graph.remove(node.name)
            count += 1
        elif node.op == "IdentityN" and not graph.is_output(node.name) and \
                not any(i.startswith("^") for i in node.input):
            for k, source in enumerate(node.input):
                graph.rewire(f"{node.name}:{k}", source)
            graph.remove(node.name)
            count += 1
    return count
