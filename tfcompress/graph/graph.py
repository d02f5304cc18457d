"""A mutable view of a GraphDef with name lookup and consumer maps.

The consumer map is kept up to date by every mutation made through the
`Graph` methods (add, remove, set_inputs, rewire), at a cost proportional to
the inputs touched, so a pass that rewrites k places costs O(k), not O(k·n).
Code that edits a NodeDef's inputs directly must call `invalidate()`, and
the map is rebuilt on the next lookup.
"""

from typing import Dict, Iterable, List, Optional, Set

import numpy as np
import tensorflow as tf


def node_name(tensor: str) -> str:
    """"a/b:1" or "^a/b" -> "a/b"."""
    return tensor.lstrip("^").split(":")[0]


def tensor_name(tensor: str) -> str:
    """Canonical tensor name: "a" -> "a:0", "a:1" -> "a:1"."""
    return tensor if ":" in tensor else tensor + ":0"


def make_const(name: str, value, dtype=None) -> "tf.compat.v1.NodeDef":
    """A Const NodeDef holding `value` (dtype inferred unless given)."""
    node = tf.compat.v1.NodeDef(name=name, op="Const")
    proto = tf.make_tensor_proto(value, dtype=dtype)
    node.attr["dtype"].type = proto.dtype
    node.attr["value"].tensor.CopyFrom(proto)
    return node


def make_node(op: str, name: str, inputs: Iterable[str], **attrs) -> "tf.compat.v1.NodeDef":
    """A NodeDef; attrs are DTypes, ints, floats, bools, strings or lists of ints/strings/dtypes."""
    node = tf.compat.v1.NodeDef(name=name, op=op)
    node.input.extend(list(inputs))
    for key, value in attrs.items():
        a = node.attr[key]
        if isinstance(value, tf.DType):
            a.type = value.as_datatype_enum
        elif isinstance(value, bool):
            a.b = value
        elif isinstance(value, int):
            a.i = value
        elif isinstance(value, float):
            a.f = value
        elif isinstance(value, (str, bytes)):
            a.s = value.encode() if isinstance(value, str) else value
        elif isinstance(value, (list, tuple)):
            if all(isinstance(v, tf.DType) for v in value) and value:
                a.list.type.extend([v.as_datatype_enum for v in value])
            elif all(isinstance(v, int) for v in value):
                a.list.i.extend(value)
            else:
                a.list.s.extend([v.encode() if isinstance(v, str) else v for v in value])
        else:
            a.CopyFrom(value)
    return node


class Graph:
    """Nodes by name, in insertion order, with helpers for rewriting.

    The wrapper owns copies of the nodes; `to_graph_def()` emits them in
    topological order with unreachable nodes removed.
    """

    def __init__(self, graph_def, outputs: Iterable[str] = ()):
        self.nodes: Dict[str, tf.compat.v1.NodeDef] = {}
        for node in graph_def.node:
            copy = tf.compat.v1.NodeDef()
            copy.CopyFrom(node)
            self.nodes[node.name] = copy
        self.library = tf.compat.v1.GraphDef().library
        self.library.CopyFrom(graph_def.library)
        self.versions = graph_def.versions
        self.outputs = [node_name(o) for o in outputs]
        # producer name -> {consumer name: how many of its inputs read the producer}
        self._consumers: Optional[Dict[str, Dict[str, int]]] = None
        self._touched: Optional[Set[str]] = None

    # -- lookup -----------------------------------------------------------
    def node(self, name: str):
        return self.nodes.get(node_name(name))

    def consumers(self, name: str) -> List:
        """Nodes that take any output (or a control edge) of node `name` (once per input that reads it)."""
        if self._consumers is None:
            self._consumers = {}
            for n in self.nodes.values():
                self._index(n, +1)
        readers = self._consumers.get(node_name(name), {})
        return [self.nodes[c] for c, k in readers.items() if c in self.nodes for _ in range(k)]

    def _index(self, node, sign: int) -> None:
        """Adds (+1) or removes (-1) the consumer-map entries of `node`'s inputs."""
        if self._consumers is None:
            return
        for inp in node.input:
            readers = self._consumers.setdefault(node_name(inp), {})
            readers[node.name] = readers.get(node.name, 0) + sign
            if readers[node.name] <= 0:
                del readers[node.name]

    def _touch(self, node) -> None:
        """Records a node whose inputs changed, and its producers (whose consumers changed)."""
        if self._touched is not None:
            self._touched.add(node.name)
            self._touched.update(node_name(i) for i in node.input)

    def track_changes(self) -> None:
        """Starts recording the nodes that mutations touch (see `take_touched`)."""
        self._touched = set()

    def take_touched(self) -> Set[str]:
        """Names touched since `track_changes` or the last call; recording goes on until `stop_tracking`."""
        touched, self._touched = self._touched or set(), set()
        return touched

    def stop_tracking(self) -> None:
        self._touched = None

    def is_output(self, name: str) -> bool:
        return node_name(name) in self.outputs

    def const_value(self, name: str) -> Optional[np.ndarray]:
        node = self.node(name)
        if node is None or node.op != "Const":
            return None
        return tf.make_ndarray(node.attr["value"].tensor)

    def unique_name(self, base: str) -> str:
        name, i = base, 0
        while name in self.nodes:
            i += 1
            name = f"{base}_{i}"
        return name

    # -- mutation ---------------------------------------------------------
    def add(self, node) -> None:
        old = self.nodes.get(node.name)
        if old is not None:
            self._index(old, -1)
            self._touch(old)
        self.nodes[node.name] = node
        self._index(node, +1)
        self._touch(node)

    def remove(self, name: str) -> None:
        old = self.nodes.pop(name, None)
        if old is not None:
            self._index(old, -1)
            self._touch(old)

    def set_inputs(self, node, inputs: Iterable[str]) -> None:
        """Replaces the inputs of `node` (a node of this graph)."""
        self._index(node, -1)
        self._touch(node)
        del node.input[:]
        node.input.extend(list(inputs))
        self._index(node, +1)
        self._touch(node)

    def set_const(self, name: str, value, dtype=None) -> None:
        """Replaces node `name` by a Const holding `value` (same name)."""
        self.add(make_const(name, value, dtype))

    def rewire(self, old: str, new: str) -> None:
        """Makes every consumer of tensor `old` read tensor `new` instead."""
        old_t = tensor_name(old)
        new_ref = new[:-2] if new.endswith(":0") else new
        for n in {c.name: c for c in self.consumers(old)}.values():
            inputs = [new_ref if not inp.startswith("^") and tensor_name(inp) == old_t else inp for inp in n.input]
            if inputs != list(n.input):
                self.set_inputs(n, inputs)

    def invalidate(self) -> None:
        """After NodeDef inputs were edited directly: the consumer map is rebuilt on next use."""
        self._consumers = None

    # -- output -----------------------------------------------------------
    def topo_order(self, roots: Optional[Iterable[str]] = None) -> List:
        """Nodes reachable from `roots` (default: the graph outputs), producers first."""
        roots = list(roots) if roots is not None else list(self.outputs)
        if not roots:
            roots = list(self.nodes)
        order, state = [], {}
        for root in roots:
            stack = [(node_name(root), False)]
            while stack:
                name, done = stack.pop()
                if done:
                    if state.get(name) != 2:
                        state[name] = 2
                        order.append(self.nodes[name])
                    continue
                if state.get(name):
                    continue
                if name not in self.nodes:
                    raise KeyError(f"graph references missing node {name!r}")
                state[name] = 1
                stack.append((name, True))
                for inp in reversed(self.nodes[name].input):
                    if state.get(node_name(inp)) is None:
                        stack.append((node_name(inp), False))
        return order

    def to_graph_def(self, roots: Optional[Iterable[str]] = None):
        """A GraphDef of the nodes reachable from `roots` (default: the outputs), producers first."""
        graph_def = tf.compat.v1.GraphDef()
        graph_def.versions.CopyFrom(self.versions)
        graph_def.library.CopyFrom(self.library)
        for node in self.topo_order(roots):
            graph_def.node.add().CopyFrom(node)
        return graph_def
