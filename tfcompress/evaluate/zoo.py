"""Reference architectures for benchmarks and tests: the trained zoo in testdata/zoo, and builders.

The zoo (`ZOO`, made by tools/make_zoo.py) holds small trained models of the
architectures users deploy: separable and residual (mini-Xception), inverted
residual (MobileNetV2-style), projection-shortcut ResNet, plain VGG,
PReLU/LeakyReLU/swish with squeeze-and-excitation, and a two-headed class +
box regression net.  Each entry names its file, its images and how pixels
are normalized, and which outputs are class vectors.

For scale, keras.applications models are built here: no pretrained weights
can be fetched, so an architecture is built with seeded random weights and
its batch-norm statistics are then set from real images by forward passes in
training mode.  Without that step every BN layer
would keep mean 0 / variance 1, the activations would drift by orders of
magnitude through the depth of the network, and quantization would be
measured on a network no one trains.
"""

import dataclasses
import os
from typing import Dict, Sequence, Tuple

from tfcompress.data.images import Preprocessing, iter_batches
from tfcompress.keras.train import set_bn_statistics
from tfcompress.io.keras_models import copy_model


# The random-weight fixtures' batch norms keep this share of the initial statistics (mean 0, variance 1).
RANDOM_NET_PRIOR = 1.0 / 16.0


def _random_net_statistics(model, batches) -> None:
    """Batch-norm statistics of a random-weight fixture: the images' (`set_bn_statistics`), mixed with a
    RANDOM_NET_PRIOR share of the initial mean 0 and variance 1.

    With the images' statistics alone, the random MobileNetV2's late depthwise channels (variance about
    1e-3 on 32 images) are amplified about 20x, and the result is so ill-conditioned that the stock TFLite
    converter's int8 agrees with it on 22% of held-out images (measured).  The prior keeps these fixtures the
    well-conditioned stand-ins for trained nets they were built as (it is what the earlier four passes at
    momentum 0.5 left over one batch).
    """
    import keras  # pylint: disable=import-outside-toplevel
    set_bn_statistics(model, batches)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean = keras.ops.convert_to_numpy(layer.moving_mean)
            var = keras.ops.convert_to_numpy(layer.moving_variance)
            layer.moving_mean.assign((1.0 - RANDOM_NET_PRIOR) * mean)
            layer.moving_variance.assign((1.0 - RANDOM_NET_PRIOR) * var + RANDOM_NET_PRIOR)


def mobilenet_v2(image_paths: Sequence[str], *, alpha: float = 0.35, size: int = 96, seed: int = 0,
                 logits: bool = True):
    """Keras `MobileNetV2(alpha, weights=None)` at size×size×3, BN statistics set from `image_paths`
    (`_random_net_statistics`).

    Inputs are in [-1, 1] (the MobileNetV2 convention: mean 127.5, std 127.5).
    With `logits` the classifier has no softmax, so errors are measured on
    the values quantization actually changes.
    """
    import keras  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, weights=None,
                                           classifier_activation=None if logits else "softmax")
    prep = mobilenet_preprocessing(size)
    _random_net_statistics(model, list(iter_batches(list(image_paths), prep, batch_size=32)))
    return model


def mobilenet_preprocessing(size: int) -> Preprocessing:
    return Preprocessing.for_input((None, size, size, 3), mean=127.5, std=127.5)


def stacked_blocks(copies: int, *, size: int = 16, channels: int = 8, seed: int = 0):
    """`copies` inverted-residual blocks in a row (1x1 conv, BN, ReLU6; depthwise, BN, ReLU; 1x1 conv, BN;
    identity Add), for measuring how graph passes scale with graph size: every block holds the same
    rewrites (three BN folds, two activation spellings), so the node count grows with `copies` and
    nothing else does.  Untrained (seeded): only structure matters here.
    """
    import keras  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((size, size, channels))
    x = inputs
    for _ in range(copies):
        y = layers.ReLU(max_value=6.0)(layers.BatchNormalization()(layers.Conv2D(channels * 2, 1)(x)))
        y = layers.ReLU()(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(y)))
        x = layers.Add()([x, layers.BatchNormalization()(layers.Conv2D(channels, 1)(y))])
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs, name=f"stacked_{copies}")


# keras.applications builders for scale, with the preprocessing each expects.
APPLICATIONS = {
    "MobileNetV2": ("MobileNetV2", dict(mean=127.5, std=127.5)),
    "ResNet50": ("ResNet50", dict(mean=(123.68, 116.779, 103.939), std=1.0, channel_order="bgr")),
    "EfficientNetB0": ("EfficientNetB0", dict(mean=0.0, std=1.0)),
    "VGG16": ("VGG16", dict(mean=(123.68, 116.779, 103.939), std=1.0, channel_order="bgr")),
}


def application(name: str, image_paths: Sequence[str], *, size: int = 224, seed: int = 0, classes: int = 1000):
    """(keras.applications `name` with seeded weights at size x size x 3, its Preprocessing).

    Batch-norm statistics (where the model has batch norm) are set from
    `image_paths`.  ResNet50 and VGG16 take Caffe-style BGR input with the
    ImageNet channel means; EfficientNetB0 rescales inside the model (pixels
    in [0, 255]); MobileNetV2 takes [-1, 1].
    """
    import keras  # pylint: disable=import-outside-toplevel
    if name not in APPLICATIONS:
        from tfcompress.errors import TfcError  # pylint: disable=import-outside-toplevel
        raise TfcError(f"unknown application {name!r} (choose from {', '.join(APPLICATIONS)})")
    builder, norm = APPLICATIONS[name]
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, builder)(input_shape=(size, size, 3), weights=None, classes=classes)
    prep = Preprocessing.for_input((None, size, size, 3), **norm)
    if any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers):
        _random_net_statistics(model, list(iter_batches(list(image_paths), prep, batch_size=16)))
    return model, prep


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


def shipped_digits(labels):
    """(calibration indices, held-out indices) of the digits testdata/ ships, in the order they are written.

    After a seed-0 permutation of sklearn's digits, the first 10 of each class
    are calibration images and the next 30 held out.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = np.asarray(labels)[order]
    calibration, heldout = [], []
    for c in range(10):
        members = order[np.nonzero(shuffled == c)[0]]
        calibration.extend(members[:10].tolist())
        heldout.extend(members[10:40].tolist())
    return calibration, heldout


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
    calibration, heldout = shipped_digits(digits.target)
    shipped = set(calibration) | set(heldout)
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


TESTDATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "testdata")


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One trained zoo model and the data it goes with.

    Attributes:
      name: the file stem in testdata/zoo.
      architecture: what it exercises.
      images: the image folders under testdata/images: (calibration, held-out labelled).
      mean, std: input normalization, (pixel - mean) / std.
      heads: output name -> "class" (a softmax over classes) or "regression".
    """
    name: str
    architecture: str
    images: Tuple[str, str]
    mean: float
    std: float
    heads: Dict[str, str]

    @property
    def path(self) -> str:
        return os.path.join(TESTDATA, "zoo", f"{self.name}.keras")

    @property
    def task(self) -> str:
        """What its images show: "digits" (full-frame), "patches" (photo patches) or "boxes" (a digit placed on
        a canvas), read from its image folders."""
        return self.images[0].split("/")[0] if "/" in self.images[0] else "digits"

    @property
    def calibration(self) -> str:
        return os.path.join(TESTDATA, "images", self.images[0])

    @property
    def heldout(self) -> str:
        return os.path.join(TESTDATA, "images", self.images[1])


_DIGITS = ("calibration", "heldout")
_PATCHES = ("patches/calibration", "patches/heldout")
_BOXES = ("boxes/calibration", "boxes/heldout")

ZOO: Dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("xception_digits", "mini-Xception: separable convs, batch norm, residual adds", _DIGITS, 0.0, 255.0,
             {"probabilities": "class"}),
    ZooModel("mobilenetv2_patches", "MobileNetV2-style inverted residuals, ReLU6, depthwise", _PATCHES, 127.5,
             127.5, {"class": "class"}),
    ZooModel("resnet_patches", "ResNet with projection shortcuts", _PATCHES, 127.5, 127.5, {"class": "class"}),
    ZooModel("vgg_patches", "VGG-style plain CNN, no batch norm", _PATCHES, 127.5, 127.5, {"class": "class"}),
    ZooModel("se_patches", "PReLU, LeakyReLU, swish, squeeze-and-excitation (Multiply)", _PATCHES, 127.5, 127.5,
             {"class": "class"}),
    ZooModel("boxes_digits", "two heads: class softmax and box regression, PReLU, dense trunk", _BOXES, 0.0,
             255.0, {"class": "class", "box": "regression"}),
)}


def minmax_ranges(name: str, images: int):
    """(the zoo model's optimized frozen graph, its preprocessing, a source of its first `images` calibration
    images, their min/max ranges): the starting point of the range and bias tests."""
    # pylint: disable=import-outside-toplevel
    from tfcompress.calibrate.calibrators import CalibratorConfig
    from tfcompress.calibrate.run import calibrate
    from tfcompress.data.source import FolderSource
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import load_model
    entry = ZOO[name]
    model, _ = optimize(load_model(entry.path))
    prep = Preprocessing.for_input(tuple(model.inputs[0].shape), mean=entry.mean, std=entry.std)
    source = FolderSource.from_paths(FolderSource(entry.calibration).paths[:images])
    minmax = CalibratorConfig(method="minmax")
    ranges = calibrate(model, prep=prep, calibrator=minmax, images=source, progress=False).cache.ranges(minmax)
    return model, prep, source, ranges
