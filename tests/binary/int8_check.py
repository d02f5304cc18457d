"""Checking a binary model's int8 export on the flatbuffer itself, independently of the code that wrote it."""

from typing import List, Tuple

import numpy as np

from tfcompress.binary import binarize as bz
from tfcompress.export.flatbuffer import parse
from tfcompress.keras.graph import layer_graph

# |q * scale - alpha| / alpha allowed: float32 rounding where conversion folds batch norm into alpha and
# divides by 127 (about 16 float32 ulps).
ALPHA_RTOL = 2e-6


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
      AssertionError: a binary layer whose filter is missing, not int8, or not +-127 * alpha / 127.
    """
    fb = parse(flatbuffer, "the int8 .tflite")
    subgraph = fb.subgraphs[0]
    candidates = []
    for tensor in subgraph.tensors:
        if tensor.type == 9 and tensor.buffer and fb.buffers[tensor.buffer].data is not None and tensor.quantization:
            q = np.frombuffer(bytes(fb.buffers[tensor.buffer].data), np.int8).reshape(tensor.shape)
            candidates.append((q, np.asarray(tensor.quantization.scale, np.float64), tensor.name))
    nodes = layer_graph(model)
    results = []
    for name, layer in bz.binary_layers(model).items():
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
            raise AssertionError(f"binary layer {name}: no int8 filter with its signs in the flatbuffer")
        q, scale = match[0]
        if not np.all(np.abs(q) == 127):
            raise AssertionError(f"binary layer {name}: int8 filter holds values other than +-127")
        error = float(np.max(np.abs(127.0 * scale - alpha) / alpha))
        if error > ALPHA_RTOL:
            raise AssertionError(f"binary layer {name}: int8 scales give alpha with relative error {error:.2e}")
        results.append((name, error))
    return results
