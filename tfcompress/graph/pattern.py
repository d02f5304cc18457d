"""Declarative op-type patterns over a `Graph`.

    OpTypePattern("Relu", name="act",
                  inputs=[OpTypePattern("BiasAdd", inputs=["*", "Const"])])

A pattern matches a node whose op is one of the `|`-separated types (or any op
for "*") and whose data inputs match `inputs` positionally.  A plain string in
`inputs` is shorthand for an unnamed pattern.  `commutative=True` also tries
the two inputs swapped (Mul, AddV2).  Matching returns {name: NodeDef} for
every named sub-pattern, or None.
"""

from typing import Dict, List, Optional, Sequence, Union

from tfcompress.graph.graph import Graph


class OpTypePattern:
    """A node pattern: op types, optional name and input sub-patterns."""

    def __init__(self, op_type: str, name: Optional[str] = None,
                 inputs: Optional[Sequence[Union["OpTypePattern", str]]] = None,
                 commutative: bool = False, single_consumer: bool = False):
        self.op_types = None if op_type == "*" else set(op_type.split("|"))
        self.name = name
        self.inputs = [i if isinstance(i, OpTypePattern) else OpTypePattern(i) for i in (inputs or [])]
        self.has_inputs = inputs is not None
        self.commutative = commutative
        self.single_consumer = single_consumer

    def depth(self) -> int:
        """Nodes on the longest path from the root to a leaf pattern (1 for a single node)."""
        return 1 + max((p.depth() for p in self.inputs), default=0)

    def match(self, graph: Graph, node) -> Optional[Dict[str, object]]:
        found: Dict[str, object] = {}
        return found if self._match(graph, node, found) else None

    def _match(self, graph: Graph, node, found) -> bool:
        if node is None:
            return False
        if self.op_types is not None and node.op not in self.op_types:
            return False
        if self.single_consumer and (len(graph.consumers(node.name)) != 1 or graph.is_output(node.name)):
            return False
        if self.name:
            if self.name in found and found[self.name] is not node:
                return False
            found[self.name] = node
        if not self.has_inputs:
            return True
        data_inputs = [i for i in node.input if not i.startswith("^")]
        if len(data_inputs) != len(self.inputs):
            return False
        orders: List[List[int]] = [list(range(len(data_inputs)))]
        if self.commutative and len(data_inputs) == 2:
            orders.append([1, 0])
        for order in orders:
            trial = dict(found)
            if all(p._match(graph, graph.node(data_inputs[i]), trial) for p, i in zip(self.inputs, order)):
                found.clear()
                found.update(trial)
                return True
        return False


def data_inputs(node) -> List[str]:
    return [i for i in node.input if not i.startswith("^")]
