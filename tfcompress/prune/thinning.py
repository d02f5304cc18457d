"""Filter pruning with physical removal: a Keras 3 functional model rebuilt with fewer channels.

Channels are pruned by *group*, after DepGraph (Fang et al., "DepGraph:
Towards Any Structural Pruning", CVPR 2023, arXiv:2301.12900): every layer
output whose channels are tied to another's by an identity mapping shares
one channel space with it, and removing channel c of a space removes it
everywhere at once.  The ties followed here are
- per-channel layers (batch norm, activations, PReLU/LeakyReLU, pooling,
  padding, dropout, a depthwise conv with multiplier 1, a Reshape that keeps
  the last axis): input and output are one space;
- elementwise merges (residual Add, Subtract, Multiply, Maximum, Minimum,
  Average) whose operands all have the output's channels: every operand is in
  the result's space.  A squeeze-and-excitation block (global pooling, two
  dense or 1x1 layers, a Multiply) is then one group: the excitation layer
  produces the same channels as the conv it scales.

A space is prunable when every layer that produces it is a conv, separable
conv or dense layer (the group's *producers*: they lose output filters) and
it reaches, directly or through Concatenate slices (shifted by the offset of
that input) and Flatten positions, only conv/dense *consumers* (they lose
input rows; for a separable conv, its depthwise channel c and the pointwise
rows that channel feeds).  A space that a model input or output, or a layer
whose channel mapping is not followed (Permute, Rescaling, a broadcasting
Multiply, ...) belongs to or reaches is left whole; an untracked layer is
named in the report, and the rest of the model is thinned.

`plan` finds the groups; `thin` rebuilds the model from its config with the
kept channels and copies the sliced weights, so the saved model really has
fewer parameters and MACs.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np

from tfcompress.errors import TfcError
from tfcompress.keras.graph import LayerNode, layer_graph

# Layers that act on each channel separately: a channel removed upstream is removed here.
PER_CHANNEL = ("BatchNormalization", "ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "Softmax",
               "MaxPooling2D", "AveragePooling2D", "ZeroPadding2D", "Dropout", "SpatialDropout2D",
               "GaussianNoise", "Identity", "Cropping2D", "UpSampling2D")
# Layers that reduce the spatial axes but keep channels.
CHANNEL_VECTOR = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")
# Elementwise merges: with equal channel axes every operand and the result share one channel space.
MERGE = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average")
# Per-channel layers whose zeros APoZ counts in a group with several producers.
ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU", "PReLU", "ELU")
LINEAR = ("Conv2D", "Dense", "SeparableConv2D")
KNOWN = PER_CHANNEL + CHANNEL_VECTOR + LINEAR + MERGE + ("InputLayer", "DepthwiseConv2D", "Concatenate", "Flatten",
                                                         "Reshape")


def output_kernel(layer):
    """The kernel whose last axis is the layer's output channels (a separable conv's pointwise kernel)."""
    return layer.pointwise_kernel if isinstance(layer, keras.layers.SeparableConv2D) else layer.kernel


def _slice_linear(kind: str, weights, in_keep: np.ndarray, out_keep: np.ndarray):
    """A conv/dense/separable layer's weights with only the kept input and output channels."""
    if kind == "SeparableConv2D":
        depthwise, pointwise = weights[0], weights[1]
        multiplier = depthwise.shape[-1]
        # Pointwise input row c*multiplier + j comes from input channel c.
        rows = (in_keep[:, None] * multiplier + np.arange(multiplier)[None, :]).reshape(-1)
        pointwise = np.take(np.take(pointwise, rows, axis=-2), out_keep, axis=-1)
        return [np.take(depthwise, in_keep, axis=2), pointwise] + [np.take(w, out_keep, axis=-1) for w in weights[2:]]
    kernel = np.take(np.take(weights[0], in_keep, axis=-2), out_keep, axis=-1)
    return [kernel] + [np.take(w, out_keep, axis=-1) for w in weights[1:]]


def _shape(model, node: LayerNode):
    """The layer's output shape, or None for a layer with several outputs."""
    if node.kind == "InputLayer":  # (A sequential model does not list its InputLayer as a layer.)
        specs = {t._keras_history[0].name: t for t in model.inputs}  # pylint: disable=protected-access
        return tuple(specs.get(node.name, model.inputs[0]).shape)
    output = model.get_layer(node.name).output
    return tuple(output.shape) if hasattr(output, "shape") else None


def untracked(model, nodes: Dict[str, LayerNode]) -> Dict[str, str]:
    """Layers whose channel mapping thinning does not follow: layer name -> a description for reports.

    A layer type thinning does not know (Permute, LayerNormalization,
    Rescaling, ...), a depthwise conv with a channel multiplier other than 1,
    a merge whose operands do not all have the result's channels (a
    broadcasting Multiply) and a Reshape that moves the last axis.  Channels
    that reach one are left whole; the rest of the model is thinned.
    """
    found = {}
    for node in nodes.values():
        if node.kind not in KNOWN:
            found[node.name] = node.kind
        elif node.kind == "DepthwiseConv2D" and node.config.get("depth_multiplier", 1) != 1:
            found[node.name] = f"DepthwiseConv2D with depth_multiplier {node.config['depth_multiplier']}"
        elif node.kind in MERGE + ("Reshape",):
            out = _shape(model, node)
            shapes = [_shape(model, nodes[src]) for src in node.inputs]
            same_rank = node.kind == "Reshape" or all(s is not None and len(s) == len(out) for s in shapes)
            if out is None or not same_rank or any(s is None or s[-1] != out[-1] for s in shapes):
                found[node.name] = (f"{node.kind} that moves the channel axis" if node.kind == "Reshape"
                                    else f"{node.kind} broadcasting over channels")
    return found


def _transparent(nodes: Dict[str, LayerNode], opaque: Dict[str, str]) -> set:
    """Layers whose output channels are their inputs' channels, one for one."""
    return {name for name, node in nodes.items() if name not in opaque
            and node.kind in PER_CHANNEL + CHANNEL_VECTOR + MERGE + ("Reshape", "DepthwiseConv2D")}


def _spaces(nodes: Dict[str, LayerNode], transparent: set) -> Dict[str, List[str]]:
    """The channel spaces: representative layer -> the layers whose outputs share its channels (config order).

    A transparent layer joins its inputs' spaces and its own; any other layer's output starts a space.
    """
    parent = {name: name for name in nodes}
    index = {name: i for i, name in enumerate(nodes)}

    def find(name):
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name
    for name in nodes:
        if name in transparent:
            for src in nodes[name].inputs:
                a, b = find(src), find(name)
                if a != b:
                    parent[max(a, b, key=index.get)] = min(a, b, key=index.get)
    spaces: Dict[str, List[str]] = {}
    for name in nodes:
        spaces.setdefault(find(name), []).append(name)
    return spaces


@dataclasses.dataclass
class Prunable:
    """A channel group: conv/dense layers whose output channels are one space, removed together.

    Attributes:
      name: the group, by its first producer.
      channels: the space's channel count.
      producers: the conv/dense layers that lose output filters (several when tied by a residual Add or an SE
        Multiply), in model order.
      consumers: conv/dense layers that take these channels as input (they lose input rows).
      path: the per-channel, depthwise, pooling, merge, concat and flatten layers in between.
      activations: the layers whose output zeros APoZ counts: the last layer of the per-channel chain right
        after a lone producer, or the group's activation layers.
    """
    name: str
    channels: int
    consumers: List[str]
    path: List[str]
    activations: List[str]
    producers: List[str]

    def keep(self, kept) -> Dict[str, np.ndarray]:
        """`thin`'s `keep` for this group: the same channels for every producer."""
        return {name: kept for name in self.producers}


def _chain_end(nodes: Dict[str, LayerNode], name: str, transparent: set) -> str:
    """The last layer of the single per-channel chain right after `name` (the tensor APoZ reads)."""
    while len(nodes[name].consumers) == 1:
        nxt = nodes[name].consumers[0]
        if nxt not in transparent or nodes[nxt].kind not in PER_CHANNEL:
            break
        name = nxt
    return name


def plan(model, untracked_reach: Optional[Dict[str, str]] = None) -> List[Prunable]:
    """The prunable channel groups, in model order: spaces produced only by conv/dense layers that reach only
    conv/dense consumers (no model input or output, no layer thinning does not track).

    Args:
      untracked_reach: if given, filled with layer name -> why it is left whole, for each conv/dense layer
        whose channels reach (or are tied to) an untracked layer (see `untracked`).
    """
    nodes = layer_graph(model)
    opaque = untracked(model, nodes)
    transparent = _transparent(nodes, opaque)
    spaces = _spaces(nodes, transparent)
    space_of = {name: rep for rep, names in spaces.items() for name in names}
    outputs = {t._keras_history[0].name for t in model.outputs}  # pylint: disable=protected-access
    index = {name: i for i, name in enumerate(nodes)}

    def reach(names, consumers, path) -> Optional[str]:
        """Collects the consumers and path of a space's layers; returns why it is blocked ("" untold), or None."""
        path.extend(n for n in names if n in transparent)
        for name in names:
            if name in outputs:
                return ""
            for reader in nodes[name].consumers:
                kind = nodes[reader].kind
                if reader in transparent:
                    continue  # The same space.
                if kind in LINEAR:
                    consumers.append(reader)
                elif reader in opaque:
                    return f"its channels reach {reader} ({opaque[reader]}), which thinning does not track"
                elif kind in ("Concatenate", "Flatten") and reader not in path:
                    derived = spaces[space_of[reader]]
                    if [n for n in derived if n not in transparent] != [reader]:
                        return ""  # Tied by a merge to channels of another origin.
                    path.append(reader)
                    why = reach(derived, consumers, path)
                    if why is not None:
                        return why
                elif kind not in ("Concatenate", "Flatten"):
                    return ""
        return None

    result = []
    for names in spaces.values():
        producers = [n for n in names if n not in transparent]
        linear = [p for p in producers if nodes[p].kind in LINEAR]
        if not linear:
            continue
        others = [p for p in producers if nodes[p].kind not in LINEAR]
        consumers, path = [], []
        if others:
            why = next((f"its channels are tied to {p} ({opaque[p]}), which thinning does not track"
                        for p in others if p in opaque), "")
        else:
            why = reach(names, consumers, path)
        if why:
            if untracked_reach is not None:
                untracked_reach.update({p: why for p in linear})
            continue
        channels = int(output_kernel(model.get_layer(linear[0])).shape[-1])
        if why is not None or not consumers or channels < 2:
            continue
        activations = [n for n in names if n in transparent and nodes[n].kind in ACTIVATIONS]
        if len(linear) == 1 or not activations:
            activations = [_chain_end(nodes, p, transparent) for p in linear]
        result.append(Prunable(linear[0], channels, sorted(set(consumers), key=index.get),
                               sorted(set(path), key=index.get), activations, linear))
    return sorted(result, key=lambda p: index[p.name])


def consumer_rows(model, target: Prunable) -> Dict[str, np.ndarray]:
    """For each consumer of a group: the group channel each of its input rows carries, or -1 for a row of
    another origin (the other inputs of a Concatenate).  After a Flatten, row p*C + c is channel c at
    position p."""
    nodes = layer_graph(model)
    origin = _origins(model, nodes, target)
    return {name: origin[nodes[name].inputs[0]] for name in target.consumers}


def _origins(model, nodes: Dict[str, LayerNode], target: Prunable) -> Dict[str, np.ndarray]:
    """For the group's producers and path layers: the group channel each output channel carries, or -1."""
    origin = {name: np.arange(target.channels) for name in target.producers}
    path = set(target.path)
    for name, node in nodes.items():
        if name not in path:
            continue
        if node.kind == "Concatenate":
            origin[name] = np.concatenate([origin[src] if src in origin
                                           else np.full(int(_shape(model, nodes[src])[-1]), -1)
                                           for src in node.inputs])
        elif node.kind == "Flatten":
            positions = int(np.prod([int(d) for d in _shape(model, nodes[node.inputs[0]])[1:-1]]))
            origin[name] = np.tile(origin[node.inputs[0]], positions)
        else:  # Per-channel layers and merges: every operand carries the group's channels.
            origin[name] = origin[node.inputs[0]]
    return origin


def input_shares(model, target: Prunable) -> Dict[str, float]:
    """For each consumer and depthwise conv of a group: the fraction of its input channels (rows, after a
    Flatten) that are the group's."""
    nodes = layer_graph(model)
    origin = _origins(model, nodes, target)
    names = target.consumers + [n for n in target.path if nodes[n].kind == "DepthwiseConv2D"]
    return {name: float(np.mean(origin[nodes[name].inputs[0]] >= 0)) for name in names}


def _kept_indices(model, nodes, keep: Dict[str, np.ndarray], opaque: Dict[str, str]) -> Dict[str, np.ndarray]:
    """For every layer output, the original channel indices that survive (propagated in topological order);
    `opaque` is `untracked(model, nodes)`.

    Raises:
      TfcError: a merge whose operands would keep different channels (`keep` splits a group).
    """
    kept: Dict[str, np.ndarray] = {}
    for name, node in nodes.items():
        shape = _shape(model, node)
        full = np.arange(int(shape[-1])) if shape is not None else None
        if node.kind == "InputLayer" or name in opaque:  # An untracked layer's input is whole (see plan).
            kept[name] = full
        elif node.kind in LINEAR:
            kept[name] = keep.get(name, full)
        elif node.kind == "Concatenate":
            parts, offset = [], 0
            for src in node.inputs:
                parts.append(kept[src] + offset)
                offset += int(_shape(model, nodes[src])[-1])
            kept[name] = np.concatenate(parts)
        elif node.kind == "Flatten":
            src_shape = _shape(model, nodes[node.inputs[0]])
            c = int(src_shape[-1])
            positions = int(np.prod([int(d) for d in src_shape[1:-1]]))
            kept[name] = (np.arange(positions)[:, None] * c + kept[node.inputs[0]][None, :]).reshape(-1)
        else:  # Per-channel, channel-vector, depthwise, Reshape keeping the last axis, merges.
            kept[name] = kept[node.inputs[0]]
            if any(not np.array_equal(kept[src], kept[name]) for src in node.inputs[1:]):
                raise TfcError(f"thinning must keep the same channels in every operand of {name} (a channel "
                               "group's producers are thinned together)")
    return kept


def thin(model, keep: Dict[str, Sequence[int]], scales: Optional[Dict[str, np.ndarray]] = None):
    """A new model with only the `keep` output channels of the named conv/dense layers.

    Args:
      model: the functional Keras model.
      keep: layer name -> sorted output-channel indices to keep (for a group from `plan`, the same indices for
        each of its producers: `Prunable.keep`).
      scales: consumer layer name -> per-input-channel factors over its *original*
        input channels, applied to its kernel rows (ThiNet's least-squares step).

    Returns:
      The thinned model (uncompiled), with weights copied.

    Raises:
      TfcError: every channel of a layer removed, or a group split.
    """
    nodes = layer_graph(model)
    opaque = untracked(model, nodes)
    keep = {k: np.asarray(sorted(v), np.int64) for k, v in keep.items()}
    for name, idx in keep.items():
        if len(idx) == 0:
            raise TfcError(f"thinning would remove every channel of {name}")
    kept = _kept_indices(model, nodes, keep, opaque)
    config = model.get_config()
    for entry in config["layers"]:
        name = entry["config"]["name"]
        entry.pop("build_config", None)  # Shapes change: let every layer build from its new input.
        if name in keep:
            key = "units" if entry["class_name"] == "Dense" else "filters"
            entry["config"][key] = int(len(keep[name]))
        elif entry["class_name"] == "Reshape" and name not in opaque:
            entry["config"]["target_shape"] = [*entry["config"]["target_shape"][:-1], int(len(kept[name]))]
    thinned = model.__class__.from_config(config)
    for layer in thinned.layers:
        name = layer.name
        node = nodes[name]
        weights = model.get_layer(name).get_weights()
        if not weights:
            continue
        if name in opaque:  # Untouched channels: the weights as they were.
            layer.set_weights(weights)
            continue
        in_keep = kept[node.inputs[0]] if node.inputs else None
        out_keep = kept[name]
        if node.kind in LINEAR:
            if scales and name in scales:  # (ThiNet's consumers are plain convs and dense layers.)
                factor = scales[name].reshape((1,) * (weights[0].ndim - 2) + (-1, 1))
                weights = [weights[0] * factor] + weights[1:]
            new = _slice_linear(node.kind, weights, in_keep, out_keep)
        elif node.kind == "DepthwiseConv2D":
            new = [np.take(weights[0], out_keep, axis=2)] + [np.take(w, out_keep, axis=-1) for w in weights[1:]]
        else:  # Batch norm, PReLU and other per-channel parameters on the last axis.
            new = [np.take(w, out_keep, axis=-1) for w in weights]
        layer.set_weights(new)
    return thinned
