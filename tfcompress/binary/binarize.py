"""Turning a float Keras model into a binary one, and its 1-bit storage.

`binarize` swaps Dense and Conv2D layers for BinaryDense/BinaryConv2D
(`tfcompress.binary.layers`), keeping the trained weights as the latent
weights, so training starts from the float model.  The first and the last
weight layers stay float by default, as in BinaryConnect and XNOR-Net.

Export: frozen for conversion, a binary layer's kernel is the constant
alpha_c * sign(W) (alpha_c = 1 for BinaryConnect).  TFLite's per-channel int8
weights store it as q = +-127 with scale alpha_c / 127, so the int8 model
holds the binary weights exactly (up to float32 rounding of the scale);
the binary tests verify that on the flatbuffer.
"""

import dataclasses
from typing import Dict, List, Sequence

import keras
import numpy as np

from tfcompress.binary.layers import BINARY_FORMS, _check_mode
from tfcompress.errors import TfcError
from tfcompress.keras.registry import registered_name


def _weight_layers(model) -> List[keras.layers.Layer]:
    return [l for l in model.layers if l.trainable_weights and any(v.name == "kernel" for v in l.trainable_weights)]


def choose_layers(model, layers: Sequence[str] = (), binarize_first_last: bool = False) -> List[str]:
    """The layers to binarize: `layers` (each must have a binary form), or every Dense/Conv2D.

    Raises:
      TfcError: an unknown layer, or a named layer whose type has no binary form.
    """
    if layers:
        for name in layers:
            try:
                layer = model.get_layer(name)
            except ValueError as e:
                raise TfcError(f"no layer named {name} in the model") from e
            if type(layer).__name__ not in BINARY_FORMS:
                raise TfcError(f"layer {name} is a {type(layer).__name__}, which has no binary form "
                               f"(binary forms exist for {', '.join(BINARY_FORMS)})")
        return list(layers)
    weighted = _weight_layers(model)
    if not binarize_first_last:
        weighted = weighted[1:-1]
    chosen = [l.name for l in weighted if type(l).__name__ in BINARY_FORMS]
    if not chosen:
        raise TfcError("the model has no Dense or Conv2D layer to binarize (the first and last weight layers stay "
                       "float unless --binarize_first_last)")
    return chosen


def binarize(model, mode: str, layers: Sequence[str], seed: int = 0) -> keras.Model:
    """A copy of `model` with `layers` as binary layers in `mode`, their latent weights the float ones."""
    _check_mode(mode)
    config = model.get_config()
    wanted = set(layers)
    for entry in config["layers"]:
        name = entry["config"].get("name")
        if name in wanted:
            form = BINARY_FORMS[entry["class_name"]]
            entry.update({"class_name": form, "module": "tfcompress.binary.layers",
                          "registered_name": registered_name(form)})
            entry["config"].update({"mode": mode, "seed": seed})
    rebuilt = model.__class__.from_config(config)
    for layer in rebuilt.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt


@dataclasses.dataclass(frozen=True)
class Storage:
    """Bits to store a model with binary layers: 1 per binary weight, 32 per scale and per float parameter."""
    binary_weights: int
    scales: int
    float_params: int

    @property
    def bits(self) -> int:
        return self.binary_weights + 32 * (self.scales + self.float_params)


def storage(model) -> Storage:
    binary = scales = floats = 0
    for layer in model.layers:
        for v in layer.weights:
            if not v.trainable and type(layer).__name__ == "BatchNormalization":
                floats += int(np.prod(v.shape))  # Moving statistics are stored too.
                continue
            if not v.trainable:
                continue
            if v.name == "kernel" and hasattr(layer, "binary_kernel"):
                binary += int(np.prod(v.shape))
                scales += int(v.shape[-1]) if layer.mode in ("bwn", "xnor") else 0
            else:
                floats += int(np.prod(v.shape))
    return Storage(binary, scales, floats)


def binary_layers(model) -> Dict[str, keras.layers.Layer]:
    return {l.name: l for l in model.layers if hasattr(l, "binary_kernel")}
