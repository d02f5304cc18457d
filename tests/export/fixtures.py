"""Small int8 flatbuffers with a known rounding bias, for the AdaRound and bias-correction tests."""

import numpy as np
import tensorflow as tf

from tfcompress.export import tflite
from tfcompress.graph.passes import optimize
from tfcompress.io.loaders import freeze_keras_model

IMAGES = 64


def biased_conv(seed=0):
    """A 1x1 conv + ReLU + dense net whose conv weights all sit 0.4 int8 steps above a step (so nearest
    rounding rounds every one down, by the same 0.4 s): the per-channel scale is pinned by one weight of
    exactly 127 steps per output channel."""
    import keras
    rng = np.random.default_rng(seed)
    step = 0.01
    codes = rng.integers(-60, 60, size=(1, 1, 16, 8)).astype(np.float64) + 0.4
    codes[0, 0, 0, :] = 127.0
    inputs = keras.Input((6, 6, 16))
    x = keras.layers.Conv2D(8, 1, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4, name="dense")(x)
    model = keras.Model(inputs, x, name="biased")
    model.get_layer("conv").set_weights([(codes * step).astype(np.float32), np.full(8, 0.5, np.float32)])
    dense = model.get_layer("dense")
    dense.set_weights([rng.normal(0, 0.3, (8, 4)).astype(np.float32), np.full(4, 0.1, np.float32)])
    images = rng.uniform(0.0, 1.0, (IMAGES, 6, 6, 16)).astype(np.float32)
    return model, images, codes


def int8_flatbuffers(model, images):
    """(float flatbuffer with min/max statistics from `images`, its int8 flatbuffer), per-channel weights."""
    frozen, _ = optimize(freeze_keras_model(model, model.name))
    ranges = {}
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(frozen.graph_def, name="")
    names = [n.name + ":0" for n in frozen.graph_def.node if n.op not in ("Const", "NoOp")]
    with tf.compat.v1.Session(graph=graph) as session:
        outs = session.run(names, {frozen.inputs[0].tensor: images})
    for name, value in zip(names, outs):
        ranges[name] = (float(np.min(value)), float(np.max(value)))
    calibrated, _ = tflite.calibrated_flatbuffer(frozen, ranges)
    return calibrated, tflite.quantize_calibrated(calibrated, "int8")
