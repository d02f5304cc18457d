"""Fake-quantization layers for quantization-aware training of Keras 3 models (TF backend).

- `FakeQuant`: an activation tensor, per-tensor 8-bit asymmetric, its range
  an exponential moving average of the batch min/max while training
  (frozen at inference), always containing zero.
- `QuantConv2D`, `QuantDepthwiseConv2D`, `QuantDense`: the layer's kernel
  fake-quantized per output channel, symmetric, narrow range [-127, 127]
  (TFLite's int8 weight scheme), with the range the channel's max |w|,
  refreshed at every training step and held at inference.

Both use TF's FakeQuantWithMinMaxVars ops, whose gradient is straight
through inside the range and zero outside.  Frozen, these ops are what the
TFLite converter reads as a quantization-aware-trained model: weight ranges
fold into on-grid constants, activation ranges become the int8 tensors'
scales and zero points.

Reference: Jacob et al., arXiv:1712.05877 (Sec. 3: simulated quantization,
EMA ranges, per-layer weight ranges); Krishnamoorthi, arXiv:1806.08342
(per-channel weights).
"""

import keras
import tensorflow as tf
from keras import ops

from tfcompress.keras.registry import register



@register("FakeQuant")
class FakeQuant(keras.layers.Layer):
    """8-bit per-tensor fake quantization of activations with an EMA range."""

    def __init__(self, momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)

    def build(self, input_shape):
        self.range_min = self.add_weight(shape=(), initializer="zeros", trainable=False, name="range_min")
        self.range_max = self.add_weight(shape=(), initializer="zeros", trainable=False, name="range_max")
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, inputs, training=None):
        if training:
            lo, hi = ops.min(inputs), ops.max(inputs)
            first = ops.equal(self.seen, 0.0)
            m = self.momentum
            self.range_min.assign(ops.where(first, lo, m * self.range_min + (1 - m) * lo))
            self.range_max.assign(ops.where(first, hi, m * self.range_max + (1 - m) * hi))
            self.seen.assign(1.0)
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, ops.minimum(self.range_min, 0.0), ops.maximum(self.range_max, 0.0), num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


class _QuantKernel:
    """Per-channel symmetric fake quantization of the layer's kernel (shared by the three layers)."""

    # Keras' conv and dense layers save only their kernel and bias: these save the range after them.
    def _own_variables(self):
        return [self.kernel] + ([self.bias] if self.use_bias else []) + [self.kernel_range]

    def save_own_variables(self, store):
        if self.built:
            for i, variable in enumerate(self._own_variables()):
                store[str(i)] = variable

    def load_own_variables(self, store):
        if self.built:
            for i, variable in enumerate(self._own_variables()):
                variable.assign(store[str(i)])

    def _build_range(self, channels: int):
        self.kernel_range = self.add_weight(shape=(channels,), initializer="ones", trainable=False,
                                            name="kernel_range")

    def _channel_max(self, kernel):
        return ops.max(ops.abs(ops.reshape(kernel, (-1, self.kernel_range.shape[0]))), axis=0)

    def sync_kernel_range(self):
        """Sets each channel's range to its current max |w| (so the largest weight sits exactly at +-127)."""
        self.kernel_range.assign(ops.maximum(self._channel_max(self.kernel), 1e-12))

    def quantized_kernel(self, training):
        if training:
            self.sync_kernel_range()
        kernel = self.kernel
        shape = ops.shape(kernel)
        flat = ops.reshape(kernel, (-1, self.kernel_range.shape[0]))  # Output channel last.
        q = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            flat, -self.kernel_range, self.kernel_range, num_bits=8, narrow_range=True)
        return ops.reshape(q, shape)

    def _finish(self, outputs):
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs


@register("QuantConv2D")
class QuantConv2D(_QuantKernel, keras.layers.Conv2D):
    def build(self, input_shape):
        super().build(input_shape)
        self._build_range(self.filters)

    def call(self, inputs, training=None):
        return self._finish(self.convolution_op(inputs, self.quantized_kernel(training)))


@register("QuantDepthwiseConv2D")
class QuantDepthwiseConv2D(_QuantKernel, keras.layers.DepthwiseConv2D):
    def build(self, input_shape):
        super().build(input_shape)
        self._build_range(int(input_shape[-1]) * self.depth_multiplier)

    def call(self, inputs, training=None):
        outputs = ops.depthwise_conv(inputs, self.quantized_kernel(training), strides=self.strides,
                                     padding=self.padding, dilation_rate=self.dilation_rate,
                                     data_format=self.data_format)
        return self._finish(outputs)


@register("QuantDense")
class QuantDense(_QuantKernel, keras.layers.Dense):
    def build(self, input_shape):
        super().build(input_shape)
        self._build_range(self.units)

    def call(self, inputs, training=None):
        return self._finish(ops.matmul(inputs, self.quantized_kernel(training)))


QUANT_FORMS = {"Conv2D": QuantConv2D, "DepthwiseConv2D": QuantDepthwiseConv2D, "Dense": QuantDense}
