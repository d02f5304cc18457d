"""Turning a float Keras model into a binary one, its 1-bit storage, and checking the int8 export.

`binarize` swaps Dense and Conv2D layers for BinaryDense/BinaryConv2D
(`tfcompress.binary.layers`), keeping the trained weights as the latent
weights, so training starts from the float model.  The first and the last
weight layers stay float by default, as in BinaryConnect and XNOR-Net.

Export: frozen for conversion, a binary layer's kernel is the constant
alpha_c * sign(W) (alpha_c = 1 for BinaryConnect).  TFLite's per-channel int8
weights store it as q = +-127 with scale alpha_c / 127, so the int8 model
holds the binary weights exactly (up to float32 rounding of the scale);
`check_int8_export` verifies that on the flatbuffer.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np

from tfcompress.binary.layers import BINARY_FORMS, PACKAGE, _check_mode
from tfcompress.errors import TfcError

# |q * scale - alpha| / alpha allowed: float32 rounding where conversion folds batch norm into alpha and
# divides by 127 (about 16 float32 ulps).
ALPHA_RTOL = 2e-6


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
                          "registered_name": f"{PACKAGE}>{form}"})
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


def check_int8_export(flatbuffer: bytes, model) -> List[Tuple[str, float]]:
    """Per binary layer: (name, largest |q * scale - alpha| / alpha) in the int8 flatbuffer.

    Each binary layer's filter is found by its shape and its sign pattern
    (TFLite stores conv filters as [out, kh, kw, in] and dense weights as
    [out, in]); every entry must be exactly +-127 and its channel's scale
    times 127 must be alpha (1 for BinaryConnect) within ALPHA_RTOL.  A
    batch norm right after the layer is folded into the filter by
    conversion, so alpha is scaled by its |gamma / sigma| (and the signs
    flipped where gamma < 0).

    Raises:
      TfcError: a binary layer whose filter is missing, not int8, or not +-127 * alpha / 127.
    """
    from tfcompress.export.flatbuffer import parse  # pylint: disable=import-outside-toplevel
    fb = parse(flatbuffer, "the int8 .tflite")
    subgraph = fb.subgraphs[0]
    candidates = []
    for tensor in subgraph.tensors:
        if tensor.type == 9 and tensor.buffer and fb.buffers[tensor.buffer].data is not None and tensor.quantization:
            q = np.frombuffer(bytes(fb.buffers[tensor.buffer].data), np.int8).reshape(tensor.shape)
            candidates.append((q, np.asarray(tensor.quantization.scale, np.float64), tensor.name))
    from tfcompress.prune.thinning import layer_graph  # pylint: disable=import-outside-toplevel
    nodes = layer_graph(model, check_known=False)
    results = []
    for name, layer in binary_layers(model).items():
        latent = layer.kernel.numpy()
        alpha = (np.mean(np.abs(latent), axis=tuple(range(latent.ndim - 1)))
                 if layer.mode in ("bwn", "xnor") else np.ones(latent.shape[-1]))
        signs = np.where(latent >= 0, 1, -1).astype(np.int8)
        consumers = nodes[name].consumers
        if len(consumers) == 1 and nodes[consumers[0]].kind == "BatchNormalization":
            # Conversion folds the batch norm into the filter: each channel is scaled by gamma / sigma.
            bn = model.get_layer(consumers[0])
            bn_scale = (bn.gamma.numpy() if bn.scale else 1.0) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
            alpha = alpha * np.abs(bn_scale)
            signs = (signs * np.where(bn_scale >= 0, 1, -1)).astype(np.int8)
        expected = np.moveaxis(signs, -1, 0) if signs.ndim == 4 else signs.T
        match = [(q, s) for q, s, _ in candidates if q.shape == expected.shape and np.array_equal(np.sign(q), expected)]
        if not match:
            raise TfcError(f"binary layer {name}: no int8 filter with its signs in the flatbuffer")
        q, scale = match[0]
        if not np.all(np.abs(q) == 127):
            raise TfcError(f"binary layer {name}: int8 filter holds values other than +-127")
        error = float(np.max(np.abs(127.0 * scale - alpha) / alpha))
        if error > ALPHA_RTOL:
            raise TfcError(f"binary layer {name}: int8 scales give alpha with relative error {error:.2e}")
        results.append((name, error))
    return results
