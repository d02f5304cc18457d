"""Cost of a Keras model: parameters and multiply-accumulates of its conv, depthwise, separable and dense layers."""

from typing import Tuple

import keras
import numpy as np


def count(model) -> Tuple[int, int]:
    """(parameters, multiply-accumulates per image) of the conv, depthwise, separable and dense layers, with biases."""
    params = macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            depthwise = tuple(int(d) for d in layer.depthwise_kernel.shape)
            pointwise = tuple(int(d) for d in layer.pointwise_kernel.shape)
            out = tuple(int(d) for d in layer.output.shape[1:])
            positions = out[0] * out[1]
            params += int(np.prod(depthwise)) + int(np.prod(pointwise)) + (out[-1] if layer.use_bias else 0)
            macs += positions * (int(np.prod(depthwise)) + int(np.prod(pointwise)))
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            continue
        kernel = tuple(int(d) for d in layer.kernel.shape)
        out = tuple(int(d) for d in layer.output.shape[1:])
        params += int(np.prod(kernel)) + (out[-1] if layer.use_bias else 0)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            macs += int(np.prod(out)) * kernel[0] * kernel[1]
        elif isinstance(layer, keras.layers.Conv2D):
            macs += int(np.prod(out)) * int(np.prod(kernel[:-1]))
        else:
            macs += int(np.prod(kernel))
    return params, macs
