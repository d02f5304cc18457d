"""Quantization-aware training for Keras 3: prepare a model, train it, and what `convert` reads back.

`prepare_qat(model)`:
1. folds batch norm into the conv or dense layer before it (`fold.py`), so
   the weights that are fake-quantized are the ones the int8 model holds;
2. swaps Conv2D, DepthwiseConv2D and Dense for their fake-quantized forms
   (per-channel weights, `layers.py`);
3. puts a `FakeQuant` (per-tensor activations) on the input and on every
   tensor the int8 model stores: after each layer, except where TFLite
   keeps the scale of the input (max and average pooling, flatten, reshape,
   padding, dropout), right before a ReLU that TFLite fuses into the layer
   (the range then goes after the ReLU), and on a tensor read only by a
   concatenation (TFLite gives it the concatenation's scale);  A dense layer with a
   softmax gets its range on the logits, since TFLite's int8 softmax output
   has a fixed scale of 1/256.

Every trainable weight keeps training as float; the model's outputs are
those of the int8 model (to within rounding), so training adapts to them.
"""

from typing import Dict

import keras
import numpy as np

from tfcompress.errors import TfcError
from tfcompress.io.keras_models import copy_model
from tfcompress.keras.graph import call_layer, layer_graph, rebuild
from tfcompress.keras.fold import fold_batch_norm
from tfcompress.qat.layers import QUANT_FORMS, FakeQuant

SAME_SCALE = ("MaxPooling2D", "AveragePooling2D", "Flatten", "Reshape", "ZeroPadding2D", "Dropout",
              "GlobalMaxPooling2D", "InputLayer")
FUSED_ACTIVATIONS = ("relu", "relu6")


def _activation_name(layer) -> str:
    if type(layer).__name__ == "ReLU":
        return "relu6" if getattr(layer, "max_value", None) == 6 else ("relu" if layer.max_value is None else "")
    if type(layer).__name__ == "Activation":
        return getattr(layer.activation, "__name__", "")
    return ""


def prepare_qat(model) -> keras.Model:
    """A fake-quantized copy of `model` (see the module docstring), weights copied, ranges not yet seen.

    Raises:
      TfcError: a BatchNormalization that cannot be folded.
    """
    folded, _ = fold_batch_norm(model)
    nodes = layer_graph(folded)
    left = [n for n, node in nodes.items() if node.kind == "BatchNormalization"]
    if left:
        raise TfcError(f"batch norm {left[0]} does not follow a conv or dense layer with a linear activation, so it "
                       "cannot be folded for quantization-aware training")
    quantized: Dict[str, keras.layers.Layer] = {}
    input_fq: Dict[int, object] = {}

    def quantized_by_next(name) -> bool:
        """The layer's output takes the scale of its only consumer: a fused ReLU, or a concatenation."""
        consumers = nodes[name].consumers
        if len(consumers) != 1:
            return False
        if nodes[consumers[0]].kind == "Concatenate":
            return True  # TFLite gives a concatenation's only-consumer inputs the concatenation's scale.
        return (nodes[consumers[0]].kind in ("ReLU", "Activation")
                and _activation_name(folded.get_layer(consumers[0])) in FUSED_ACTIVATIONS)

    def from_input(tensor):
        if id(tensor) not in input_fq:
            input_fq[id(tensor)] = FakeQuant(name=f"input_fq_{len(input_fq)}")(tensor)
        return input_fq[id(tensor)]

    def build(name, layer, tensors):
        args = [from_input(tensors[src]) if nodes[src].kind == "InputLayer" else tensors[src]
                for src in nodes[name].inputs]
        kind = type(layer).__name__
        softmax = False
        if kind in QUANT_FORMS:
            config = layer.get_config()
            softmax = getattr(layer.activation, "__name__", "") == "softmax"
            if softmax:
                config["activation"] = "linear"
            layer = quantized[name] = QUANT_FORMS[kind].from_config(config)
        out = call_layer(layer, args)
        if softmax:
            out = FakeQuant(name=f"{name}_logits_fq")(out)
            return keras.layers.Softmax(name=f"{name}_softmax")(out)
        if kind in SAME_SCALE or kind == "Softmax" or quantized_by_next(name):
            return out
        return FakeQuant(name=f"{name}_fq")(out)

    qat = rebuild(folded, nodes, build)
    for name, layer in quantized.items():
        source = folded.get_layer(name)
        layer.kernel.assign(source.kernel)
        if source.use_bias:
            layer.bias.assign(source.bias)
        layer.sync_kernel_range()
    return qat


def quant_layers(model):
    return [l for l in model.layers if hasattr(l, "sync_kernel_range")]


def calibrate_ranges(model, x: np.ndarray, batch_size: int = 32) -> None:
    """Initializes every FakeQuant range from data: the EMA over one training-mode pass, weights unchanged."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    step = tf.function(lambda batch: model(batch, training=True), reduce_retracing=True)
    for i in range(0, len(x), batch_size):
        step(tf.convert_to_tensor(x[i:i + batch_size]))


def finish(model) -> keras.Model:
    """After training: each weight range set to its channel's current max |w|; an uncompiled copy."""
    for layer in quant_layers(model):
        layer.sync_kernel_range()
    return copy_model(model)
