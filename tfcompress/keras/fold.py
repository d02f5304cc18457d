"""Batch-norm folding in Keras models: conv/dense -> BatchNormalization becomes one conv/dense with a bias.

    y = gamma * (x W + b - mean) / sqrt(var + eps) + beta
      = x (W * s) + (b - mean) * s + beta,      s = gamma / sqrt(var + eps)  (per output channel)

Used before quantization-aware training (the fake-quantized weights are the
folded ones, as in the int8 model) and before weight clustering (a codebook
shared across a kernel survives conversion only if no per-channel BN scale
is folded into it afterwards).

Reference: Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", arXiv:1712.05877, Sec. 3.2.
"""

from typing import Dict, List, Tuple

import keras
import numpy as np

from tfcompress.io.keras_models import copy_model
from tfcompress.keras.graph import call_layer, layer_graph, rebuild

FOLDABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


def _foldable_pairs(model, nodes) -> Dict[str, str]:
    """BatchNormalization name -> the conv/dense it folds into (linear activation, the BN its only consumer)."""
    pairs = {}
    for name, node in nodes.items():
        if node.kind != "BatchNormalization" or len(node.inputs) != 1:
            continue
        producer = model.get_layer(node.inputs[0])
        bn = model.get_layer(name)
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        if (isinstance(producer, FOLDABLE) and not isinstance(producer, keras.layers.SeparableConv2D)
                and getattr(producer.activation, "__name__", "") == "linear"
                and nodes[producer.name].consumers == [name] and axis in (-1, len(bn.input.shape) - 1)):
            pairs[name] = producer.name
    return pairs


def _folded_weights(producer, bn) -> List[np.ndarray]:
    kernel = producer.kernel.numpy()
    channels = bn.moving_mean.shape
    bias = producer.bias.numpy() if producer.use_bias else np.zeros(channels, np.float32)
    gamma = bn.gamma.numpy() if bn.scale else np.ones(channels, np.float32)
    beta = bn.beta.numpy() if bn.center else np.zeros(channels, np.float32)
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    # A depthwise kernel is [kh, kw, in, multiplier], output channel c * multiplier + m.
    kernel = kernel * (scale.reshape(kernel.shape[2:]) if isinstance(producer, keras.layers.DepthwiseConv2D)
                       else scale)
    return [kernel.astype(np.float32), ((bias - bn.moving_mean.numpy()) * scale + beta).astype(np.float32)]


def fold_batch_norm(model) -> Tuple[keras.Model, Dict[str, str]]:
    """(a copy of `model` with every foldable BatchNormalization folded, {folded BN: the layer it went into}).

    A BN that follows anything else (an Add, an activation, a conv with a
    nonlinear activation) is kept.  The copy computes the same function as
    `model` in inference mode.
    """
    nodes = layer_graph(model)
    pairs = _foldable_pairs(model, nodes)
    if not pairs:
        return copy_model(model), {}
    producers = {p: bn for bn, p in pairs.items()}
    replaced = {}

    def build(name, layer, tensors):
        args = [tensors[src] for src in nodes[name].inputs]
        if name in pairs:
            return args[0]
        if name in producers:
            config = layer.get_config()
            config["use_bias"] = True
            layer = replaced[name] = layer.__class__.from_config(config)
        return call_layer(layer, args)

    folded = rebuild(model, nodes, build)
    for name, layer in replaced.items():
        layer.set_weights(_folded_weights(model.get_layer(name), model.get_layer(producers[name])))
    return copy_model(folded), pairs
