"""The distillation loss against numpy, and the trainer's input checks."""

import sys

import numpy as np
import pytest

from tfcompress.keras.train import DistillationLoss, TrainConfig, fit, outputs_probabilities
from tfcompress.errors import TfcError

LOSS_RTOL = 1e-5


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_loss_matches_the_hinton_formula_in_numpy():
    rng = np.random.default_rng(0)
    k, t, alpha = 5, 3.0, 0.3
    student, teacher = rng.standard_normal((6, k)), rng.standard_normal((6, k))
    labels = rng.integers(0, k, 6)
    has_label = np.array([1, 1, 0, 0, 1, 0], np.float32)
    has_teacher = np.array([1, 0, 1, 1, 1, 1], np.float32)
    packed = np.zeros((6, 2 * k + 2), np.float32)
    packed[np.arange(6), labels] = 1.0
    packed[:, k:2 * k] = teacher
    packed[:, 2 * k], packed[:, 2 * k + 1] = has_label, has_teacher
    got = DistillationLoss(k, t, alpha, student_probabilities=False).call(packed, student.astype(np.float32))
    ce = -_log_softmax(student)[np.arange(6), labels]
    p_t = np.exp(_log_softmax(teacher / t))
    kl = (p_t * (_log_softmax(teacher / t) - _log_softmax(student / t))).sum(-1) * t * t
    w = has_label * np.where(has_teacher > 0, alpha, 1.0)
    np.testing.assert_allclose(np.asarray(got), w * ce + (1 - w) * has_teacher * kl, rtol=LOSS_RTOL)
    # A softmax student: its log-probabilities are its logits up to a shift, which softmax ignores.
    probs = np.exp(_log_softmax(student)).astype(np.float32)
    again = DistillationLoss(k, t, alpha, student_probabilities=True).call(packed, probs)
    np.testing.assert_allclose(np.asarray(again), np.asarray(got), rtol=1e-4)


def test_config_and_input_errors():
    import keras
    with pytest.raises(TfcError, match="temperature"):
        TrainConfig(temperature=0)
    with pytest.raises(TfcError, match="alpha"):
        TrainConfig(alpha=1.5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    assert outputs_probabilities(model)
    with pytest.raises(TfcError, match="labelled images or a teacher"):
        fit(model, np.zeros((2, 4), np.float32), None, TrainConfig(verbose=0))
    with pytest.raises(TfcError, match="outputs 3 classes"):
        fit(model, np.zeros((2, 4), np.float32), np.array([0, 5]), TrainConfig(verbose=0))


# Batch-norm statistics pooled in float64 from float32 batch moments.
BN_STATS_RTOL = 1e-4


def test_bn_statistics_are_the_whole_sets_whatever_the_order():
    """A first batch norm's moving mean and variance become its input's mean and variance over every image, as
    numpy computes them, also when the batches come class by class (as from class folders read in order: an
    exponential average would hold mostly the last class), and the same when shuffled."""
    import keras
    from tfcompress.keras.train import batches, set_bn_statistics
    rng = np.random.default_rng(0)
    # Two "classes" with different statistics, sorted: the first 96 images dark, the last 64 bright.
    x = np.concatenate([rng.normal(0.0, 1.0, (96, 6, 6, 2)), rng.normal(3.0, 0.5, (64, 6, 6, 2))]).astype(np.float32)
    inp = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(4, 3, name="conv")
    out = keras.layers.BatchNormalization(name="bn")(conv(inp))
    model = keras.Model(inp, keras.layers.BatchNormalization(name="bn2")(keras.layers.ReLU()(out)))
    features = keras.Model(inp, conv.output).predict(x, verbose=0).astype(np.float64).reshape(-1, 4)
    for order in (np.arange(len(x)), rng.permutation(len(x))):
        set_bn_statistics(model, batches(x[order], 32))
        bn = model.get_layer("bn")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), features.mean(0), rtol=BN_STATS_RTOL,
                                   atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), features.var(0),
                                   rtol=BN_STATS_RTOL)
    assert model.get_layer("bn").momentum == 0.99  # The layer's own momentum is given back.


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
