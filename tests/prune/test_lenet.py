"""Magnitude pruning's acceptance check: a LeNet-5 trained here on labelled digits, pruned to 90%.

The model is built and trained in this test (seeded), on the 1,397 scikit-learn
digits that are not shipped; accuracy is measured on the 300 shipped held-out
digits.  Pruning to 90% sparsity in every layer, with labels mixed with
distillation from the dense model, must lose at most half a point.
"""

import sys

import numpy as np
import pytest

from tests.conftest import HELDOUT

MAX_ACCURACY_LOSS = 0.005
TARGET_SPARSITY = 0.9


def test_lenet5_pruned_to_90_percent_keeps_its_accuracy():
    import keras
    import tensorflow as tf
    from tfcompress.data.folders import read_image_set
    from tfcompress.data.images import Preprocessing, iter_batches
    from tfcompress.keras.train import TrainConfig, fit
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.prune import magnitude
    keras.utils.set_random_seed(3)
    tf.config.experimental.enable_op_determinism()
    x, y = digits_training_set()
    held = read_image_set(HELDOUT)
    xh = np.concatenate(list(iter_batches(held.paths, Preprocessing(height=32, width=32, channels=3), 100)))
    layers = keras.layers
    lenet = keras.Sequential([
        keras.Input((32, 32, 3)),
        layers.Conv2D(6, 5, activation="relu"), layers.AveragePooling2D(2),
        layers.Conv2D(16, 5, activation="relu"), layers.AveragePooling2D(2),
        layers.Flatten(), layers.Dense(120, activation="relu"), layers.Dense(84, activation="relu"),
        layers.Dense(10, activation="softmax")], name="lenet5")
    fit(lenet, x, y, TrainConfig(epochs=30, alpha=1.0, verbose=0))
    dense_accuracy = float(np.mean(lenet.predict(xh, verbose=0).argmax(1) == held.labels))
    epochs = 30
    steps = epochs * -(-len(x) // 32)
    wrapped = magnitude.prune_low_magnitude(
        lenet, magnitude.PolynomialDecay(0.0, TARGET_SPARSITY, 0, steps // 2, frequency=10))
    fit(wrapped, x, y, TrainConfig(epochs=epochs, alpha=0.5, verbose=0), teacher=lenet,
        callbacks=[magnitude.UpdatePruningStep()])
    pruned = magnitude.strip_pruning(wrapped)
    sparsity = magnitude.sparsity_of(pruned)
    assert sum(z for z, _ in sparsity.values()) / sum(n for _, n in sparsity.values()) >= TARGET_SPARSITY - 1e-3
    pruned_accuracy = float(np.mean(pruned.predict(xh, verbose=0).argmax(1) == held.labels))
    assert dense_accuracy >= 0.97, dense_accuracy  # A real LeNet, not a degenerate one.
    assert pruned_accuracy >= dense_accuracy - MAX_ACCURACY_LOSS, (dense_accuracy, pruned_accuracy)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
