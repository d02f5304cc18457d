"""Shared driver for pattern rewrites and weight-layout helpers."""

from typing import Callable, Optional

import numpy as np

from tfcompress.graph.graph import Graph
from tfcompress.graph.pattern import OpTypePattern

LINEAR_OPS = "Conv2D|DepthwiseConv2dNative|MatMul"


def apply_pattern(graph: Graph, pattern: OpTypePattern, rewrite: Callable[[Graph, dict], bool]) -> int:
    """Runs `rewrite` on every match of `pattern`, producers first, until none applies."""
    count = 0
    changed = True
    while changed:
        changed = False
        for node in graph.topo_order():
            if node.name not in graph.nodes:
                continue
            match = pattern.match(graph, node)
            if match is not None and rewrite(graph, match):
                count += 1
                changed = True
                break
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
