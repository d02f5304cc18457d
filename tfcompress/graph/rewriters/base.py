"""Shared driver for pattern rewrites and weight-layout helpers."""

import heapq
from typing import Callable, Optional

import numpy as np

from tfcompress.graph.graph import Graph
from tfcompress.graph.pattern import OpTypePattern

LINEAR_OPS = "Conv2D|DepthwiseConv2dNative|MatMul"


# Pattern.match calls made by apply_pattern, for tests and benchmarks that check passes stay linear.
MATCH_CALLS = {"count": 0}


def apply_pattern(graph: Graph, pattern: OpTypePattern, rewrite: Callable[[Graph, dict], bool]) -> int:
    """Runs `rewrite` on every match of `pattern`, producers first, until none applies.

    One walk with a worklist: every node is tried once in topological order,
    and after a rewrite only what it could have changed is tried again — the
    nodes it touched (added, replaced, rewired, removed, and their producers,
    whose consumer counts changed) and their consumers up to the pattern's
    depth, since a match rooted there may now differ.  Revisits keep the
    topological position of what they replace (new nodes take the rewritten
    root's), so producers still come first.  The cost is O(nodes + rewrites x
    pattern neighbourhood), not a restart per rewrite.
    """
    order = graph.topo_order()
    position = {n.name: i for i, n in enumerate(order)}
    heap = [(i, n.name) for i, n in enumerate(order)]
    queued = set(position)
    depth = pattern.depth()
    count = 0
    graph.track_changes()
    try:
        while heap:
            at, name = heapq.heappop(heap)
            queued.discard(name)
            node = graph.nodes.get(name)
            if node is None:
                continue
            MATCH_CALLS["count"] += 1
            match = pattern.match(graph, node)
            if match is None or not rewrite(graph, match):
                graph.take_touched()  # a declined rewrite must not have changed anything
                continue
            count += 1
            frontier = {t for t in graph.take_touched() if t in graph.nodes}
            revisit = set(frontier)
            for _ in range(depth - 1):
                frontier = {c.name for f in frontier for c in graph.consumers(f)} - revisit
                revisit |= frontier
            for name in revisit:
                if name not in queued and name in graph.nodes:
                    queued.add(name)
                    heapq.heappush(heap, (position.setdefault(name, at), name))
    finally:
        graph.stop_tracking()
    return count


def channel_vector(value: Optional[np.ndarray], channels: int) -> Optional[np.ndarray]:
    """A per-output-channel vector from a constant broadcast along the last axis, else None."""
    if value is None or value.dtype.kind != "f":
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=value.dtype)
    if value.shape[-1] == channels and value.size == channels:
        return value.reshape(channels)
    return None


def output_channels(op: str, weights: np.ndarray, attrs) -> int:
    if op == "Conv2D":
        return weights.shape[3]
    if op == "DepthwiseConv2dNative":
        return weights.shape[2] * weights.shape[3]
    return weights.shape[0] if attrs["transpose_b"].b else weights.shape[1]


def scale_output_channels(op: str, weights: np.ndarray, scale: np.ndarray, attrs) -> np.ndarray:
    """Multiplies each output channel of a Conv2D / depthwise / MatMul weight by `scale`."""
    if op == "Conv2D":
        return weights * scale.reshape(1, 1, 1, -1)
    if op == "DepthwiseConv2dNative":
        kh, kw, cin, mult = weights.shape
        return weights * scale.reshape(1, 1, cin, mult)
    if attrs["transpose_b"].b:
        return weights * scale.reshape(-1, 1)
    return weights * scale.reshape(1, -1)
