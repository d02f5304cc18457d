"""make_testdata: builds testdata/ from scikit-learn's bundled digits (no download).

    python tools/make_testdata.py --output=testdata

Writes:
  images/calibration/  100 digits (10 per class) as png, with a few jpg/bmp/gif
  images/heldout/<label>/  300 digits never used for training or calibration
  models/digits_resnet.{keras,h5}, models/digits_resnet_savedmodel/, models/digits_resnet.pb
    a small CNN with batch norm, residual blocks, a depthwise conv, a concat and
    ReLU6, trained on the remaining digits (32x32x3 input, pixels / 255).

Seeded: the same package versions give the same files.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", common.TESTDATA, "testdata directory to (re)write.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Training epochs.")

SIZE = 32


def digit_images():
    """(uint8 images [N, 32, 32], labels [N]) from sklearn's 8x8 digits, upscaled bilinearly."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
                    for im in small])
    return big, digits.target.astype(np.int64)


def build_model():
    import keras
    from keras import layers

    def conv_bn(x, filters, stride=1, relu6=False):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0 if relu6 else None)(x)

    def residual(x, filters):
        y = conv_bn(x, filters)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        return layers.ReLU()(layers.Add()([x, y]))

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = conv_bn(inp, 16)
    x = residual(x, 16)
    x = layers.MaxPooling2D(2)(x)
    x = conv_bn(x, 32, relu6=True)
    x = residual(x, 32)
    d = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    d = layers.BatchNormalization()(d)
    d = layers.ReLU(6.0)(d)
    p = layers.Conv2D(16, 1, activation="relu")(x)
    x = layers.Concatenate()([d, p])
    x = layers.AveragePooling2D(2)(x)
    x = conv_bn(x, 48, stride=2)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(32, activation="relu")(x)
    out = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name="digits_resnet")


def main() -> None:
    import numpy as np
    from PIL import Image
    import keras
    import tensorflow as tf
    from tfcompress.io.atomic import write_bytes
    from tfcompress.io.loaders import freeze_keras_model

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    images, labels = digit_images()
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    cal_idx, held_idx = [], []
    for c in range(10):
        idx = np.nonzero(labels == c)[0]
        cal_idx.extend(idx[:10])
        held_idx.extend(idx[10:40])
    used = set(cal_idx) | set(held_idx)
    train_idx = np.array([i for i in range(len(images)) if i not in used])

    out = _OUTPUT.value
    cal_dir = os.path.join(out, "images", "calibration")
    formats = ["png"] * 7 + ["jpg", "bmp", "gif"]
    for k, i in enumerate(cal_idx):
        ext = formats[k % len(formats)]
        sub = os.path.join(cal_dir, ext if ext != "png" else "")
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(images[i]).save(os.path.join(sub, f"digit_{k:03d}_{labels[i]}.{ext}"))
    for k, i in enumerate(held_idx):
        sub = os.path.join(out, "images", "heldout", str(labels[i]))
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(images[i]).save(os.path.join(sub, f"digit_{k:03d}.png"))

    x = np.repeat(images[train_idx, :, :, None], 3, axis=-1).astype(np.float32) / 255.0
    y = labels[train_idx]
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=_EPOCHS.value, verbose=2, shuffle=True)
    xh = np.repeat(images[held_idx, :, :, None], 3, axis=-1).astype(np.float32) / 255.0
    acc = float(np.mean(np.argmax(model.predict(xh, verbose=0), 1) == labels[held_idx]))
    print(f"held-out accuracy: {acc:.4f}")

    models = os.path.join(out, "models")
    os.makedirs(models, exist_ok=True)
    model.save(os.path.join(models, "digits_resnet.keras"))
    model.save(os.path.join(models, "digits_resnet.h5"))
    model.export(os.path.join(models, "digits_resnet_savedmodel"), verbose=False)
    frozen = freeze_keras_model(model, "digits_resnet")
    write_bytes(os.path.join(models, "digits_resnet.pb"), frozen.graph_def.SerializeToString(deterministic=True))


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
