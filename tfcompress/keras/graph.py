"""The layer graph of a Keras functional model, and rebuilding a model from it layer by layer.

Every piece of Keras model surgery (filter thinning, block dropping, batch-norm
folding, QAT and binarization rewrites) reads the graph with `layer_graph` and
writes the new model with `rebuild`.
"""

import dataclasses
from typing import Callable, Dict, List

import keras

from tfcompress.errors import TfcError


@dataclasses.dataclass
class LayerNode:
    """One layer of a functional model: its class name, the layers it reads, the layers that read it.

    Attributes:
      name: the layer's name.
      kind: its class name ("Conv2D", "Add", ...).
      inputs: names of the layers whose outputs it takes, in call order.
      consumers: names of the layers that take its output.
      config: the layer's serialized config.
    """
    name: str
    kind: str
    inputs: List[str]
    consumers: List[str] = dataclasses.field(default_factory=list)
    config: dict = dataclasses.field(default_factory=dict, repr=False)


def _history(obj, out: List[str]) -> None:
    """Names of the layers whose outputs appear in a serialized inbound-node structure."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            out.append(obj["config"]["keras_history"][0])
            return
        for v in obj.values():
            _history(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _history(v, out)


def layer_graph(model) -> Dict[str, LayerNode]:
    """Layer name -> its input layers and consumers, from the functional config.

    A sequential model is a chain: each layer reads the one before it.

    Raises:
      TfcError: not a functional/sequential model, or a layer called more
        than once (a shared layer cannot be rebuilt layer by layer).
    """
    config = model.get_config()
    if "layers" not in config:
        raise TfcError("this transform needs a functional or sequential Keras model")
    sequential = isinstance(model, keras.Sequential)
    nodes, previous = {}, None
    for entry in config["layers"]:
        if len(entry.get("inbound_nodes", [])) > 1:
            raise TfcError(f"layer {entry['config']['name']} is called more than once; this transform needs "
                           "each layer used once")
        inputs: List[str] = []
        if sequential:
            inputs = [previous] if previous else []
            previous = entry["config"]["name"]
        else:
            _history(entry.get("inbound_nodes", []), inputs)
        nodes[entry["config"]["name"]] = LayerNode(entry["config"]["name"], entry["class_name"], inputs,
                                                   config=entry["config"])
    for node in nodes.values():
        for src in node.inputs:
            nodes[src].consumers.append(node.name)
    return nodes


# Layers that take a list of tensors even when given one.
MERGING = (keras.layers.Add, keras.layers.Concatenate, keras.layers.Multiply, keras.layers.Subtract)


def call_layer(layer, args):
    """Calls `layer` on its input tensors: a list for merging layers, the tensor itself otherwise."""
    return layer(args if len(args) > 1 or isinstance(layer, MERGING) else args[0])


def rebuild(model, nodes: Dict[str, LayerNode], build: Callable) -> keras.Model:
    """A new functional model from `model`'s layer graph (`layer_graph(model)`), layer by layer.

    `build(name, layer, tensors)` gets each non-input layer with `tensors`,
    the new output tensor of every layer built so far, by name; it returns
    the layer's new output tensor (from the same layer, a replacement, or
    several layers; an input's tensor removes the layer), or None for a
    layer that is left out, whose consumers must not need it.  Inputs and
    outputs keep their places.
    """
    specs = {t._keras_history[0].name: t for t in model.inputs}  # pylint: disable=protected-access
    tensors = {}
    for name, node in nodes.items():
        if node.kind == "InputLayer":  # Sequential models list theirs in the config too.
            spec = specs[name]
            tensors[name] = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=name)
            continue
        out = build(name, model.get_layer(name), tensors)
        if out is not None:
            tensors[name] = out
    outputs = [tensors[t._keras_history[0].name] for t in model.outputs]  # pylint: disable=protected-access
    inputs = [tensors[name] for name in specs]
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                       name=model.name)
