"""make_zoo: trains the zoo of small real-architecture models in testdata/zoo/ (no download).

    python tools/make_zoo.py --output=testdata

Every model is trained to convergence on data that ships in packages, so its
activation ranges are those of a trained net (skewed channels, outliers),
not of random weights.  Two tasks:

- digits (scikit-learn's bundled 8x8 digits upscaled to 32x32, grayscale,
  input pixel / 255): the 1,397 digits testdata/ does not ship are trained
  on; testdata/images/calibration and heldout are calibration and held-out;
- patches (which of 10 scikit-image sample photos a 32x32 RGB patch comes
  from, input (pixel - 127.5) / 127.5): training patches from the top 65% of
  each photo; testdata/images/patches holds the calibration and held-out
  patches from the bottom;
- boxes (a digit of random size at a random place on a 32x32 canvas): the
  digit's class and its box (x0, y0, x1, y1 as fractions of the canvas);
  testdata/images/boxes holds calibration and held-out canvases drawn from
  the shipped calibration and held-out digits.

Models (tiny widths, real shapes):
  xception_digits     mini-Xception: separable convs, batch norm, residual adds (projection 1x1 convs)
  mobilenetv2_patches MobileNetV2-style inverted residuals: expand 1x1, depthwise 3x3, ReLU6, linear bottleneck
  resnet_patches      ResNet with projection shortcuts (1x1 stride-2 conv + BN) and identity blocks
  vgg_patches         plain VGG-style stack of 3x3 convs with biases, max pooling, dense head, no batch norm
  se_patches          PReLU, LeakyReLU and swish activations, squeeze-and-excitation blocks (Multiply)
  boxes_digits        two outputs: a class softmax and a box regression, PReLU, flatten + dense trunk

Seeded: the same package versions give the same files.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
    import testdata_sources as sources  # noqa: E402
else:
    from . import common  # noqa: E402
    from . import testdata_sources as sources  # noqa: E402

from absl import flags  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", common.TESTDATA, "testdata directory to write zoo/ and images/boxes/ into.")
_MODELS = flags.DEFINE_list("models", None, "Only these zoo models (default: all).")
# The zoo trains with TF's own kernels unless --onednn_training (`tfcompress.keras.kernels`): run_main sets
# that before TensorFlow starts.
common.define_onednn_training_flag()
_EPOCHS = flags.DEFINE_float("epoch_scale", 1.0, "Scale every model's epoch count (for a quick look).")

SIZE = 32


def _layers():
    import keras
    return keras, keras.layers


def xception_digits():
    """Mini-Xception (Arriaga et al., arXiv:1710.07557) at 32x32x1: four separable residual modules."""
    keras, layers = _layers()
    inp = keras.Input((SIZE, SIZE, 1), name="image")
    x = inp
    for filters in (8, 8):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.ReLU()(layers.BatchNormalization()(x))
    for filters in (16, 32, 64):
        shortcut = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=2, padding="same",
                                                             use_bias=False)(x))
        y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.MaxPooling2D(3, strides=2, padding="same")(y)
        x = layers.Add()([y, shortcut])
    x = layers.Conv2D(10, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Softmax(name="probabilities")(x)
    return keras.Model(inp, out, name="xception_digits")


def mobilenetv2_patches():
    """MobileNetV2-style (Sandler et al., arXiv:1801.04381): inverted residuals with linear bottlenecks."""
    keras, layers = _layers()

    def block(x, out_channels, stride, expansion=4):
        in_channels = x.shape[-1]
        y = layers.Conv2D(in_channels * expansion, 1, use_bias=False)(x)
        y = layers.ReLU(6.0)(layers.BatchNormalization()(y))
        y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
        y = layers.ReLU(6.0)(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(out_channels, 1, use_bias=False)(y))
        return layers.Add()([x, y]) if stride == 1 and in_channels == out_channels else y

    inp = keras.Input((SIZE, SIZE, 3), name="patch")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    for out_channels, stride in ((16, 1), (16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (48, 2), (48, 1)):
        x = block(x, out_channels, stride)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(96, 1, use_bias=False)(x)))
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10, activation="softmax", name="class")(x)
    return keras.Model(inp, out, name="mobilenetv2_patches")


def resnet_patches():
    """ResNet (He et al., arXiv:1512.03385) basic blocks with projection shortcuts where the shape changes."""
    keras, layers = _layers()

    def block(x, filters, stride):
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
        if stride != 1 or x.shape[-1] != filters:
            x = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
        return layers.ReLU()(layers.Add()([x, y]))

    inp = keras.Input((SIZE, SIZE, 3), name="patch")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)))
    for filters, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
        x = block(x, filters, stride)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10, activation="softmax", name="class")(x)
    return keras.Model(inp, out, name="resnet_patches")


def vgg_patches():
    """VGG-style (Simonyan & Zisserman, arXiv:1409.1556): 3x3 convs with biases, max pooling, dense head."""
    keras, layers = _layers()
    inp = keras.Input((SIZE, SIZE, 3), name="patch")
    x = inp
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(layers.Dense(64, activation="relu")(x))
    out = layers.Dense(10, activation="softmax", name="class")(x)
    return keras.Model(inp, out, name="vgg_patches")


def se_patches():
    """PReLU / LeakyReLU / swish with squeeze-and-excitation (Hu et al., arXiv:1709.01507) residual blocks."""
    keras, layers = _layers()

    def se(x, ratio=4):
        channels = x.shape[-1]
        s = layers.GlobalAveragePooling2D()(x)
        s = layers.Dense(channels // ratio, activation="relu")(s)
        s = layers.Dense(channels, activation="sigmoid")(s)
        return layers.Multiply()([x, layers.Reshape((1, 1, channels))(s)])

    def block(x, filters, stride, act):
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, strides=stride, padding="same",
                                                      use_bias=False)(x))
        y = act(y)
        y = se(layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)))
        if stride != 1 or x.shape[-1] != filters:
            x = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
        return act(layers.Add()([x, y]))

    swish = lambda t: layers.Activation("swish")(t)  # noqa: E731
    leaky = lambda t: layers.LeakyReLU(0.1)(t)  # noqa: E731
    prelu = lambda t: layers.PReLU(shared_axes=[1, 2])(t)  # noqa: E731
    inp = keras.Input((SIZE, SIZE, 3), name="patch")
    x = prelu(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)))
    x = block(x, 16, 1, leaky)
    x = block(x, 32, 2, swish)
    x = block(x, 48, 2, prelu)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(10, activation="softmax", name="class")(x)
    return keras.Model(inp, out, name="se_patches")


def boxes_digits():
    """A detector-stage-like net (after MTCNN's O-Net, Zhang et al., arXiv:1604.02878): PReLU convs, a dense
    trunk, a class softmax and a box regression head."""
    keras, layers = _layers()
    inp = keras.Input((SIZE, SIZE, 1), name="image")
    x = inp
    for filters in (16, 32, 48):
        x = layers.Conv2D(filters, 3, padding="same")(x)
        x = layers.PReLU(shared_axes=[1, 2])(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.PReLU()(layers.Dense(96)(x))
    cls = layers.Dense(10, activation="softmax", name="class")(x)
    box = layers.Dense(4, name="box")(x)
    return keras.Model(inp, [cls, box], name="boxes_digits")


# name -> (builder, task, epochs)
ZOO = {
    "xception_digits": (xception_digits, "digits", 30),
    "mobilenetv2_patches": (mobilenetv2_patches, "patches", 12),
    "resnet_patches": (resnet_patches, "patches", 10),
    "vgg_patches": (vgg_patches, "patches", 12),
    "se_patches": (se_patches, "patches", 12),
    "boxes_digits": (boxes_digits, "boxes", 25),
}


def digits_data():
    """(train x, train y, held-out x, held-out y): gray 32x32 digits in [0, 1], shipped ones held out."""
    import numpy as np
    from tfcompress.evaluate.zoo import digits_training_set, shipped_digits
    x, y = digits_training_set()
    images, labels = sources.digit_images()
    held = np.array(shipped_digits(labels)[1])
    return x[..., :1], y, images[held, :, :, None].astype(np.float32) / 255.0, labels[held]


def patches_data():
    """(train x, train y, held-out x, held-out y) in [-1, 1], the held-out patches read from testdata."""
    import numpy as np
    from tfcompress.data.images import Preprocessing
    from tfcompress.data.source import FolderSource
    x, y = sources.training_patches()
    held = FolderSource(os.path.join(common.TESTDATA, "images", "patches", "heldout"))
    prep = Preprocessing(height=SIZE, width=SIZE, channels=3, mean=127.5, std=127.5)
    return (x.astype(np.float32) - 127.5) / 127.5, y, held.array(prep), held.labels


def boxes_data(out):
    """Training canvases from the unshipped digits; writes testdata/images/boxes from the shipped ones."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(2)
    small, labels, (cal, held, train) = sources.small_digits()
    x, box = sources.place_digits(small[train], rng, copies=4)
    y = np.tile(labels[train], 4)
    root = os.path.join(out, "images", "boxes")
    for name, idx in (("calibration", cal), ("heldout", held)):
        canvases, boxes = sources.place_digits(small[idx], rng, copies=1)
        for k, (canvas, label) in enumerate(zip(canvases, labels[idx])):
            folder = os.path.join(root, name) if name == "calibration" else os.path.join(root, name, str(label))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(canvas).save(os.path.join(folder, f"digit_{k:03d}.png"))
        if name == "heldout":
            held_x = canvases[..., None].astype(np.float32) / 255.0
            held_y, held_box = labels[idx], boxes
            np.savez(os.path.join(root, "heldout_boxes.npz"), boxes=boxes, labels=labels[idx])
    return x[..., None].astype(np.float32) / 255.0, (y, box), held_x, (held_y, held_box)


def train(name, out):
    import keras
    import numpy as np
    import tensorflow as tf
    builder, task, epochs = ZOO[name]
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    if task == "digits":
        x, y, hx, hy = digits_data()
    elif task == "patches":
        x, y, hx, hy = patches_data()
    else:
        x, y, hx, hy = boxes_data(out)
    model = builder()
    epochs = max(1, round(epochs * _EPOCHS.value))
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, epochs * -(-len(x) // 64))
    if task == "boxes":
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss={"class": "sparse_categorical_crossentropy", "box": "mse"},
                      loss_weights={"class": 1.0, "box": 20.0})
        model.fit(x, {"class": y[0], "box": y[1]}, batch_size=64, epochs=epochs, verbose=2, shuffle=True)
        cls, box = model.predict(hx, verbose=0)
        quality = (f"held-out accuracy {np.mean(cls.argmax(1) == hy[0]):.4f}, box mean abs error "
                   f"{np.mean(np.abs(box - hy[1])):.4f} (canvas fractions)")
    else:
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=64, epochs=epochs, verbose=2, shuffle=True)
        quality = f"held-out accuracy {np.mean(model.predict(hx, verbose=0).argmax(1) == hy):.4f}"
    from tfcompress.io.atomic import save_keras
    os.makedirs(os.path.join(out, "zoo"), exist_ok=True)
    save_keras(model, os.path.join(out, "zoo", f"{name}.keras"), overwrite=True)
    print(f"{name}: {model.count_params()} params, {quality}", flush=True)


def main() -> None:
    from tfcompress.errors import TfcError
    names = _MODELS.value or list(ZOO)
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        raise TfcError(f"unknown zoo model {unknown[0]!r} (choose from {', '.join(ZOO)})")
    for name in names:
        train(name, _OUTPUT.value)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
