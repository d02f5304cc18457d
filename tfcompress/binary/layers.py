"""Binary layers for Keras 3: BinaryConnect, BWN and XNOR-Net, with the quantizers they use.

Weights stay float during training (the *latent* weights the optimizer
updates); the forward pass uses their binarized form, and the gradient
reaches the latent weights straight through the sign, clipped to |w| <= 1
(the gradient of Htanh).  Modes:

- ``binaryconnect``: W_b = sign(W) (deterministic BinaryConnect).
- ``binaryconnect_stochastic``: W_b = +1 with probability
  hard_sigmoid(W) = clip((W + 1) / 2, 0, 1), else -1, while training;
  sign(W) at inference (stochastic BinaryConnect).
- ``bwn``: W_b = alpha * sign(W), alpha = mean |W| per output channel
  (Binary-Weight-Networks).
- ``xnor``: BWN weights, and the layer's input binarized too: sign(I), with
  the scaling factor K = the channel-mean of |I| averaged over each
  receptive field (XNOR-Net), so the output is (sign(I) * W_b) . K.

sign(0) is +1, so every binarized weight is exactly +-1 (or +-alpha).  The
recommended block order is BatchNormalization -> BinaryActivation ->
binary conv -> pooling (XNOR-Net, Fig. 3); an ``xnor`` conv binarizes its
own input, so it follows the BN directly.

References:
  Courbariaux, Bengio & David, "BinaryConnect", arXiv:1511.00363.
  Rastegari et al., "XNOR-Net", arXiv:1603.05279 (BWN and XNOR-Net).
  Hubara et al., "Binarized Neural Networks", arXiv:1602.02830 (the
  straight-through estimator with the Htanh clip).
"""

import keras
from keras import ops

from tfcompress.errors import TfcError
from tfcompress.keras.registry import register

MODES = ("binaryconnect", "binaryconnect_stochastic", "bwn", "xnor")


def ste_sign(x):
    """+1 where x >= 0, else -1; gradient 1 where |x| <= 1, else 0 (straight through Htanh)."""
    clipped = ops.clip(x, -1.0, 1.0)
    return clipped + ops.stop_gradient(ops.where(x >= 0, 1.0, -1.0) - clipped)


def stochastic_sign(x, seed_generator):
    """+1 with probability clip((x + 1) / 2, 0, 1), else -1; the same straight-through gradient."""
    clipped = ops.clip(x, -1.0, 1.0)
    p = (clipped + 1.0) / 2.0
    draw = keras.random.uniform(ops.shape(x), seed=seed_generator)
    return clipped + ops.stop_gradient(ops.where(draw < p, 1.0, -1.0) - clipped)


def channel_scale(kernel):
    """alpha: mean |W| over every axis but the last (the output channel), shaped to broadcast."""
    axes = tuple(range(len(kernel.shape) - 1))
    return ops.mean(ops.abs(kernel), axis=axes, keepdims=True)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise TfcError(f"unknown binary mode {mode!r} (choose from {', '.join(MODES)})")
    return mode


class _Binarized:
    """The weight binarization shared by BinaryDense and BinaryConv2D."""

    def _init_binary(self, mode: str, seed: int):
        self.mode = _check_mode(mode)
        self.seed = int(seed)
        self._seed_generator = keras.random.SeedGenerator(self.seed) if mode == "binaryconnect_stochastic" else None

    def binary_kernel(self, training=False):
        """The kernel the forward pass uses (from the latent float kernel)."""
        kernel = self.kernel
        if self.mode == "binaryconnect_stochastic" and training:
            return stochastic_sign(kernel, self._seed_generator)
        binary = ste_sign(kernel)
        if self.mode in ("bwn", "xnor"):
            binary = binary * channel_scale(kernel)
        return binary

    def _finish(self, outputs):
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def _binary_config(self, config):
        config.update({"mode": self.mode, "seed": self.seed})
        return config


@register("BinaryDense")
class BinaryDense(_Binarized, keras.layers.Dense):
    """Dense with binary weights (and, in ``xnor`` mode, binary inputs scaled by mean |x| per example)."""

    def __init__(self, units, mode: str = "bwn", seed: int = 0, **kwargs):
        super().__init__(units, **kwargs)
        self._init_binary(mode, seed)

    def call(self, inputs, training=None):
        kernel = self.binary_kernel(training)
        if self.mode == "xnor":
            scale = ops.mean(ops.abs(inputs), axis=-1, keepdims=True)
            return self._finish(ops.matmul(ste_sign(inputs), kernel) * scale)
        return self._finish(ops.matmul(inputs, kernel))

    def get_config(self):
        return self._binary_config(super().get_config())


@register("BinaryConv2D")
class BinaryConv2D(_Binarized, keras.layers.Conv2D):
    """Conv2D with binary weights (and, in ``xnor`` mode, binary inputs with XNOR-Net's K map)."""

    def __init__(self, filters, kernel_size, mode: str = "bwn", seed: int = 0, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last":
            raise TfcError("binary convolutions support channels_last only")
        self._init_binary(mode, seed)

    def call(self, inputs, training=None):
        kernel = self.binary_kernel(training)
        if self.mode != "xnor":
            return self._finish(self.convolution_op(inputs, kernel))
        # K: the mean |I| over channels, averaged over each receptive field (a k x k box filter with the
        # conv's own strides, padding and dilation).
        a = ops.mean(ops.abs(inputs), axis=-1, keepdims=True)
        box = ops.ones(tuple(self.kernel_size) + (1, 1), dtype=a.dtype) / float(
            self.kernel_size[0] * self.kernel_size[1])
        k = ops.conv(a, box, strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate)
        return self._finish(self.convolution_op(ste_sign(inputs), kernel) * k)

    def get_config(self):
        return self._binary_config(super().get_config())


@register("BinaryActivation")
class BinaryActivation(keras.layers.Layer):
    """sign(x) in {-1, +1} with the straight-through Htanh gradient (Hubara et al.)."""

    def call(self, inputs):
        return ste_sign(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


BINARY_FORMS = {"Dense": "BinaryDense", "Conv2D": "BinaryConv2D"}
