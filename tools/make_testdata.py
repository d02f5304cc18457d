"""make_testdata: builds testdata/ from scikit-learn's bundled digits (no download).

    python tools/make_testdata.py --output=testdata

Writes (--parts=digits):
  images/calibration/  100 digits (10 per class) as png, with a few jpg/bmp/gif
  images/heldout/<label>/  300 digits never used for training or calibration
  models/digits_resnet.{keras,h5}, models/digits_resnet_savedmodel/, models/digits_resnet.pb
    a small CNN with batch norm, residual blocks, a depthwise conv, a concat and
    ReLU6, trained on the remaining digits (32x32x3 input, pixels / 255).

Writes (--parts=patches), a second model and image set that no other part of
the project was developed against, for the int8 acceptance check:
  images/patches/calibration/  100 colour patches (10 per class)
  images/patches/heldout/<class>/  300 patches
  models/patches_vgg.keras  a plain VGG-style CNN (no residuals, a separable
    conv) that tells which of 10 scikit-image sample photos a 32x32 patch
    comes from; input (pixel - 127.5) / 127.5.  Training patches come from the
    top 65% of each photo, calibration patches from the left and held-out
    patches from the right half of the bottom 35%: no pixel is shared.

Seeded: the same package versions give the same files.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
    from testdata_sources import PATCH_SOURCES, SIZE, digit_images, patch_sources, sample_patches  # noqa: E402
else:
    from . import common  # noqa: E402
    from .testdata_sources import PATCH_SOURCES, SIZE, digit_images, patch_sources, sample_patches  # noqa: E402

from absl import flags  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", common.TESTDATA, "testdata directory to (re)write.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Training epochs (digits).")
_PARTS = flags.DEFINE_list("parts", ["digits", "patches"], "What to (re)build: digits and/or patches.")


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


def build_patches_model(classes):
    import keras
    from keras import layers

    def conv_bn(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        return layers.ReLU()(layers.BatchNormalization()(x))

    inp = keras.Input((SIZE, SIZE, 3), name="patch")
    x = conv_bn(conv_bn(inp, 32), 32)
    x = layers.MaxPooling2D(2)(x)
    x = conv_bn(x, 64)
    x = layers.SeparableConv2D(64, 3, padding="same", use_bias=False)(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.MaxPooling2D(2)(x)
    x = conv_bn(x, 128)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    out = layers.Dense(classes, activation="softmax", name="class")(x)
    return keras.Model(inp, out, name="patches_vgg")


def make_patches(out):
    import numpy as np
    from PIL import Image
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(1)
    train_x, train_y = [], []
    for label, (name, photo) in enumerate(patch_sources().items()):
        h, w = photo.shape[:2]
        split = int(h * 0.65)
        train = sample_patches(photo, (0, split), (0, w), 500, rng)
        flip = rng.random(len(train)) < 0.5
        train[flip] = train[flip, :, ::-1]
        train_x.append(train)
        train_y.extend([label] * len(train))
        cal = sample_patches(photo, (split, h), (0, w // 2), 10, rng)
        held = sample_patches(photo, (split, h), (w // 2, w), 30, rng)
        cal_dir = os.path.join(out, "images", "patches", "calibration")
        held_dir = os.path.join(out, "images", "patches", "heldout", name)
        os.makedirs(cal_dir, exist_ok=True)
        os.makedirs(held_dir, exist_ok=True)
        for k, p in enumerate(cal):
            Image.fromarray(p).save(os.path.join(cal_dir, f"{name}_{k:02d}.png"))
        for k, p in enumerate(held):
            Image.fromarray(p).save(os.path.join(held_dir, f"{k:02d}.png"))
    x = (np.concatenate(train_x).astype(np.float32) - 127.5) / 127.5
    y = np.asarray(train_y, np.int64)
    model = build_patches_model(len(PATCH_SOURCES))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=12, verbose=2, shuffle=True)
    models = os.path.join(out, "models")
    os.makedirs(models, exist_ok=True)
    model.save(os.path.join(models, "patches_vgg.keras"))


def main() -> None:
    if "patches" in _PARTS.value:
        make_patches(_OUTPUT.value)
    if "digits" in _PARTS.value:
        make_digits(_OUTPUT.value)


def make_digits(out) -> None:
    import numpy as np
    from PIL import Image
    import keras
    import tensorflow as tf
    from tfcompress.io.atomic import write_bytes
    from tfcompress.evaluate.zoo import shipped_digits
    from tfcompress.io.loaders import freeze_keras_model

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    images, labels = digit_images()
    cal_idx, held_idx = shipped_digits(labels)
    used = set(cal_idx) | set(held_idx)
    # Training order: the seed-0 permutation the shipped model was trained in.
    train_idx = np.array([i for i in np.random.default_rng(0).permutation(len(images)) if i not in used])

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
