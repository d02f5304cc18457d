"""Reference architectures built offline, for benchmarks and tests.

No pretrained weights can be fetched here, so an architecture is built with
seeded random weights and its batch-norm statistics are then set from real
images by forward passes in training mode.  Without that step every BN layer
would keep mean 0 / variance 1, the activations would drift by orders of
magnitude through the depth of the network, and quantization would be
measured on a network no one trains.
"""

from typing import Sequence

from tfcompress.data.images import Preprocessing, iter_batches
from tfcompress.keras.train import set_bn_statistics
from tfcompress.io.keras_models import copy_model


def mobilenet_v2(image_paths: Sequence[str], *, alpha: float = 0.35, size: int = 96, seed: int = 0,
                 logits: bool = True):
    """Keras `MobileNetV2(alpha, weights=None)` at size×size×3, BN statistics set from `image_paths`.

    Inputs are in [-1, 1] (the MobileNetV2 convention: mean 127.5, std 127.5).
    With `logits` the classifier has no softmax, so errors are measured on
    the values quantization actually changes.
    """
    import keras  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None,
                                           classifier_activation=None if logits else "softmax")
    prep = mobilenet_preprocessing(size)
    set_bn_statistics(model, list(iter_batches(list(image_paths), prep, batch_size=32)))
    return model


def mobilenet_preprocessing(size: int) -> Preprocessing:
    return Preprocessing.for_input((None, size, size, 3), mean=127.5, std=127.5)


def with_outlier_channel(model, producer: str, consumer: str, channel: int, factor: float,
                         consumer_offset: int = 0):
    """A copy of `model` whose `producer` output channel is `factor` times larger, compensated in `consumer`.

    The producer's kernel and bias for `channel` are multiplied by `factor`
    and the consumer's kernel rows for input channel `consumer_offset +
    channel` divided by it.  Everything between them must be positively
    homogeneous per channel (ReLU, pooling, concatenation), so the float
    function is unchanged while one channel's activations become outliers
    that share a per-tensor quantization range with the others: the inverse
    of cross-layer equalization.

    References:
      Nagel et al., "Data-Free Quantization Through Weight Equalization and
      Bias Correction", arXiv:1906.04721.
    """
    clone = copy_model(model)
    weights = clone.get_layer(producer).get_weights()
    weights[0][..., channel] *= factor
    if len(weights) > 1:
        weights[1][channel] *= factor
    clone.get_layer(producer).set_weights(weights)
    weights = clone.get_layer(consumer).get_weights()
    weights[0][..., consumer_offset + channel, :] /= factor
    clone.get_layer(consumer).set_weights(weights)
    return clone


def digits_with_outliers(model, factor: float = 300.0):
    """The shipped digits model with one outlier channel (see `with_outlier_channel`).

    Channel 0 of the 1x1 conv `conv2d_6` feeds, through ReLU, the concatenation
    (after the 32 depthwise channels) and average pooling, the conv `conv2d_7`.
    """
    return with_outlier_channel(model, "conv2d_6", "conv2d_7", channel=0, factor=factor, consumer_offset=32)


def digits_training_set(count=None):
    """sklearn's bundled digits that are *not* shipped in testdata/images, as the shipped model sees them.

    32x32x3 float32 in [0, 1] (bilinear upscaling of the 8x8 digits, as
    tools/make_testdata.py made the shipped images), with labels.  That tool
    drew the shipped calibration (10 per class) and held-out (30 per class)
    digits after a seed-0 permutation; the same draw is repeated and those are
    left out, so held-out numbers stay held out.  1,397 digits in all.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    labels = digits.target[order]
    shipped = set()
    for c in range(10):
        shipped.update(order[np.nonzero(labels == c)[0][:40]].tolist())
    keep = np.array([i for i in range(len(digits.images)) if i not in shipped])[:count]
    small = np.clip(digits.images[keep] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BILINEAR)) for im in small])
    return np.repeat(big[..., None], 3, -1).astype(np.float32) / 255.0, digits.target[keep]


def lenet5(input_shape=(32, 32, 1), classes: int = 10, name: str = "lenet5"):
    """LeNet-5 (LeCun et al. 1998; Deep Compression's Table 1 model): two 5x5 convs, three dense layers."""
    import keras  # pylint: disable=import-outside-toplevel
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(6, 5, activation="relu"), layers.AveragePooling2D(2),
        layers.Conv2D(16, 5, activation="relu"), layers.AveragePooling2D(2),
        layers.Flatten(), layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(classes, activation="softmax")], name=name)


def lenet_300_100(input_shape=(32, 32, 1), classes: int = 10, name: str = "lenet_300_100"):
    """LeNet-300-100 (LeCun et al. 1998; Deep Compression's Table 1): dense 300 -> 100 -> classes."""
    import keras  # pylint: disable=import-outside-toplevel
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape), layers.Flatten(), layers.Dense(300, activation="relu"),
        layers.Dense(100, activation="relu"), layers.Dense(classes, activation="softmax")], name=name)
