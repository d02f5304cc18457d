"""Cost of a Keras model: parameters and multiply-accumulates of its conv, depthwise, separable and dense layers."""

from typing import Dict, Optional, Tuple

import keras
import numpy as np


def _layer_cost(layer) -> Optional[Tuple[int, Tuple[int, int, int]]]:
    """(parameters, (MACs that scale with the input channels only, with the output channels only, with both)),
    or None for a layer that is not conv, depthwise, separable or dense."""
    out = tuple(int(d) for d in layer.output.shape[1:]) if hasattr(layer, "output") else ()
    if isinstance(layer, keras.layers.SeparableConv2D):
        depthwise = int(np.prod(layer.depthwise_kernel.shape))
        pointwise = int(np.prod(layer.pointwise_kernel.shape))
        positions = out[0] * out[1]
        return (depthwise + pointwise + (out[-1] if layer.use_bias else 0),
                (positions * depthwise, 0, positions * pointwise))
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        return None
    kernel = tuple(int(d) for d in layer.kernel.shape)
    params = int(np.prod(kernel)) + (out[-1] if layer.use_bias else 0)
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (Input and output channels are one.)
        return params, (int(np.prod(out)) * kernel[0] * kernel[1], 0, 0)
    if isinstance(layer, keras.layers.Conv2D):
        return params, (0, 0, int(np.prod(out)) * int(np.prod(kernel[:-1])))
    return params, (0, 0, int(np.prod(kernel)))


def layer_macs(model) -> Dict[str, Tuple[int, int, int]]:
    """Layer name -> its multiply-accumulates per image that scale with its input channels only, with its output
    channels only, and with both (a conv's), for the conv, depthwise, separable and dense layers."""
    return {layer.name: cost[1] for layer in model.layers if (cost := _layer_cost(layer)) is not None}


def count(model) -> Tuple[int, int]:
    """(parameters, multiply-accumulates per image) of the conv, depthwise, separable and dense layers, with biases."""
    params = macs = 0
    for layer in model.layers:
        cost = _layer_cost(layer)
        if cost is not None:
            params += cost[0]
            macs += sum(cost[1])
    return params, macs
