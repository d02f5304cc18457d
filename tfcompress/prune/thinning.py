"""Filter pruning with physical removal: a Keras 3 functional model rebuilt with fewer channels.

Removing output channel c of a conv (or unit c of a dense layer) removes,
along every path its output takes,
- channel c of each per-channel layer (batch norm, depthwise conv with
  multiplier 1, activations, pooling, padding, dropout);
- the matching slice of a Concatenate's output (shifted by the offset of that
  input);
- input channel c of each conv, separable conv or dense layer that consumes
  it (for a separable conv: its depthwise channel c and the pointwise rows
  that channel feeds), and after a Flatten every flattened position of
  channel c.

Channel groups tied by a residual Add are left whole: a conv whose channels
reach an Add (or a model output) is not pruned.  So is a conv whose channels
reach a layer thinning does not track (Reshape, Permute, Rescaling, ...):
that layer is named in the report, and the rest of the model is thinned.  ThiNet prunes only inside
residual blocks for the same reason, and so does every criterion here.

`plan` finds the prunable convs and dense layers; `thin` rebuilds the model
from its config with the kept channels and copies the sliced weights, so the
saved model really has fewer parameters and MACs.
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
LINEAR = ("Conv2D", "Dense", "SeparableConv2D")
KNOWN = PER_CHANNEL + CHANNEL_VECTOR + LINEAR + ("InputLayer", "DepthwiseConv2D", "Add", "Concatenate", "Flatten")


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


def untracked(nodes: Dict[str, LayerNode]) -> Dict[str, str]:
    """Layers whose channel mapping thinning does not follow: layer name -> a description for reports.

    A layer type thinning does not know (Reshape, Permute, LayerNormalization,
    Rescaling, ...) or a depthwise conv with a channel multiplier other than 1.
    Channels that reach one are left whole; the rest of the model is thinned.
    """
    found = {}
    for node in nodes.values():
        if node.kind not in KNOWN:
            found[node.name] = node.kind
        elif node.kind == "DepthwiseConv2D" and node.config.get("depth_multiplier", 1) != 1:
            found[node.name] = f"DepthwiseConv2D with depth_multiplier {node.config['depth_multiplier']}"
    return found


@dataclasses.dataclass
class Prunable:
    """A conv or dense layer whose output channels can be removed.

    Attributes:
      name: the layer.
      channels: its output channel count.
      consumers: conv/dense layers that take these channels as input.
      path: the per-channel, depthwise, pooling and concat layers in between.
      activation: the last layer of the per-channel chain right after it (for APoZ).
    """
    name: str
    channels: int
    consumers: List[str]
    path: List[str]
    activation: str


def plan(model, untracked_reach: Optional[Dict[str, str]] = None) -> List[Prunable]:
    """The conv and dense layers whose channels reach only conv/dense consumers (no Add, no output, no layer
    thinning does not track).

    Args:
      untracked_reach: if given, filled with layer name -> why it is left whole, for each conv/dense layer
        whose channels reach an untracked layer (see `untracked`).
    """
    nodes = layer_graph(model)
    opaque = untracked(nodes)
    outputs = {t._keras_history[0].name for t in model.outputs}  # pylint: disable=protected-access
    result = []
    for node in nodes.values():
        if node.kind not in LINEAR or node.name in outputs:
            continue
        layer = model.get_layer(node.name)
        channels = int(output_kernel(layer).shape[-1])
        frontier, seen, consumers, path, ok = list(node.consumers), set(), [], [], True
        activation = node.name
        chain_open = True  # Still in the single chain right after the layer (for the APoZ tensor).
        while frontier and ok:
            name = frontier.pop(0)
            if name in seen:
                continue
            seen.add(name)
            kind = nodes[name].kind
            if kind in LINEAR:  # Its input rows go; its own outputs stay, even if they are the model's.
                consumers.append(name)
                chain_open = False
            elif name in outputs or kind == "Add":
                ok = False
            elif name in opaque:
                ok = False
                if untracked_reach is not None:
                    untracked_reach[node.name] = (f"its channels reach {name} ({opaque[name]}), which thinning "
                                                  "does not track")
            elif kind in PER_CHANNEL + CHANNEL_VECTOR + ("DepthwiseConv2D", "Concatenate", "Flatten"):
                path.append(name)
                if chain_open and kind in PER_CHANNEL and len(nodes[name].consumers) <= 1:
                    activation = name
                else:
                    chain_open = False
                frontier.extend(nodes[name].consumers)
            else:
                ok = False
        if ok and consumers and channels > 1:
            result.append(Prunable(node.name, channels, consumers, path, activation))
    return result


def _kept_indices(model, nodes, keep: Dict[str, np.ndarray], opaque: Dict[str, str]) -> Dict[str, np.ndarray]:
    """For every layer output, the original channel indices that survive (propagated in topological order);
    `opaque` is `untracked(nodes)`."""
    kept: Dict[str, np.ndarray] = {}
    order = [entry["config"]["name"] for entry in model.get_config()["layers"]]
    for name in order:
        node = nodes[name]
        if node.kind == "InputLayer":  # (A sequential model does not list its InputLayer as a layer.)
            kept[name] = np.arange(int(model.inputs[0].shape[-1]))
            continue
        full = np.arange(int(model.get_layer(name).output.shape[-1]))
        if name in opaque:  # Its input is whole (plan keeps such channels); so is its output.
            kept[name] = full
        elif node.kind in LINEAR:
            kept[name] = keep.get(name, full)
        elif node.kind == "Concatenate":
            parts, offset = [], 0
            for src in node.inputs:
                parts.append(kept[src] + offset)
                offset += int(model.get_layer(src).output.shape[-1])
            kept[name] = np.concatenate(parts)
        elif node.kind == "Flatten":
            src_shape = model.get_layer(node.inputs[0]).output.shape
            c = int(src_shape[-1])
            positions = int(np.prod([int(d) for d in src_shape[1:-1]]))
            kept[name] = (np.arange(positions)[:, None] * c + kept[node.inputs[0]][None, :]).reshape(-1)
        else:  # Per-channel, channel-vector, depthwise, Add (inputs are whole by plan()).
            kept[name] = kept[node.inputs[0]]
    return kept


def thin(model, keep: Dict[str, Sequence[int]], scales: Optional[Dict[str, np.ndarray]] = None):
    """A new model with only the `keep` output channels of the named conv/dense layers.

    Args:
      model: the functional Keras model.
      keep: layer name -> sorted output-channel indices to keep (from `plan`'s layers).
      scales: consumer layer name -> per-input-channel factors over its *original*
        input channels, applied to its kernel rows (ThiNet's least-squares step).

    Returns:
      The thinned model (uncompiled), with weights copied.
    """
    nodes = layer_graph(model)
    opaque = untracked(nodes)
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
