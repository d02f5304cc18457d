"""The trainer every training command uses: hard labels, a teacher's soft targets, or both.

Loss per example (Hinton et al., "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531):

    alpha * CE(y, softmax(s))  +  (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

where s and t are the student's and teacher's logits and T the temperature.
An example without a label (a folder with no class subfolders) uses the
distillation term alone; with no teacher, the cross-entropy alone.  A model
whose output is a softmax has its logits recovered as log-probabilities
(softmax is shift-invariant, so softmax(log p / T) = softmax(z / T)).
"""

import dataclasses
from typing import List, Optional, Sequence

import keras
import numpy as np

from tfcompress.errors import TfcError

# Probabilities are clipped here before the log, so a zero never becomes -inf.
_EPS = 1e-7


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train.

    Attributes:
      epochs: passes over the images.
      batch_size: images per step.
      learning_rate: Adam's learning rate.
      temperature: distillation temperature T (> 0).
      alpha: weight of the hard-label term for labelled images, in [0, 1].
      seed: seeds Python, numpy, TF and the shuffle order.
      verbose: Keras progress bars (1) or none (0).
    """
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.5
    seed: int = 0
    verbose: int = 1

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1:
            raise TfcError(f"--epochs must be >= 0 and --batch_size >= 1 (got {self.epochs}, {self.batch_size})")
        if not self.temperature > 0:
            raise TfcError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise TfcError(f"--alpha must be in [0, 1], got {self.alpha}")

    def steps(self, images: int) -> int:
        """Optimizer steps over all epochs on `images` images (the last batch of an epoch may be short)."""
        return self.epochs * -(-images // self.batch_size)


def batches(x: np.ndarray, size: int = 32) -> List[np.ndarray]:
    """x split into consecutive batches of `size` (the last may be shorter), e.g. for set_bn_statistics."""
    return [x[i:i + size] for i in range(0, len(x), size)]


def outputs_probabilities(model) -> bool:
    """True if the model's output is a softmax (its last layer is Softmax or has a softmax activation)."""
    last = model.layers[-1]
    while getattr(last, "layer", None) is not None:  # A pruning or QAT wrapper around the classifier.
        last = last.layer
    # By name, so tf_keras layers (the tfmot path) are recognized as well as Keras 3 ones.
    return type(last).__name__ == "Softmax" or getattr(getattr(last, "activation", None), "__name__", "") == "softmax"


def _framework(model):
    """The Keras that built `model`: Keras 3, or tf_keras for tfmot-wrapped Keras 2 models."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras  # pylint: disable=import-outside-toplevel
        return tf_keras
    return keras


def logits(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's logits on x (log-probabilities for a softmax model)."""
    out = model.predict(x, batch_size=batch_size, verbose=0)
    return np.log(np.clip(out, _EPS, 1.0)) if outputs_probabilities(model) else out


@keras.saving.register_keras_serializable(package="tfcompress", name="DistillationLoss")
class DistillationLoss(keras.losses.Loss):
    """The loss above over packed targets [one-hot labels | teacher logits | has-label | has-teacher].

    Registered and serializable, so a model saved while compiled with it reloads.
    """

    def __init__(self, num_classes: int, temperature: float = 4.0, alpha: float = 0.5,
                 student_probabilities: bool = True, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.temperature, self.alpha = int(num_classes), float(temperature), float(alpha)
        self.student_probabilities = bool(student_probabilities)

    def call(self, y_true, y_pred):
        from keras import ops  # pylint: disable=import-outside-toplevel
        k, t = self.num_classes, self.temperature
        onehot, teacher = y_true[:, :k], y_true[:, k:2 * k]
        has_label, has_teacher = y_true[:, 2 * k], y_true[:, 2 * k + 1]
        student = ops.log(ops.clip(y_pred, _EPS, 1.0)) if self.student_probabilities else y_pred
        ce = -ops.sum(onehot * ops.log_softmax(student, axis=-1), axis=-1)
        p_teacher = ops.softmax(teacher / t, axis=-1)
        kl = ops.sum(p_teacher * (ops.log_softmax(teacher / t, axis=-1) - ops.log_softmax(student / t, axis=-1)),
                     axis=-1) * (t * t)
        w_label = has_label * ops.where(has_teacher > 0, self.alpha, 1.0)
        return w_label * ce + (1.0 - w_label) * has_teacher * kl

    def get_config(self):
        return {"num_classes": self.num_classes, "temperature": self.temperature, "alpha": self.alpha,
                "student_probabilities": self.student_probabilities, "name": self.name}


def fit(student, x: np.ndarray, labels: Optional[np.ndarray], config: TrainConfig, *, teacher=None,
        callbacks: Sequence = ()):
    """Trains `student` in place on images x (float NHWC), with labels and/or a teacher.

    Raises:
      TfcError: neither labels nor a teacher, or labels out of the output range.
    """
    if labels is None and teacher is None:
        raise TfcError("training needs labelled images or a teacher to distill from")
    num_classes = int(student.output_shape[-1])
    n = len(x)
    target = np.zeros((n, 2 * num_classes + 2), np.float32)
    if labels is not None:
        if labels.min() < 0 or labels.max() >= num_classes:
            raise TfcError(f"labels go up to {labels.max()} but the model outputs {num_classes} classes")
        target[np.arange(n), labels] = 1.0
        target[:, 2 * num_classes] = 1.0
    if teacher is not None:
        target[:, num_classes:2 * num_classes] = logits(teacher, x)
        target[:, 2 * num_classes + 1] = 1.0
    keras.utils.set_random_seed(config.seed)
    loss = DistillationLoss(num_classes, config.temperature, config.alpha, outputs_probabilities(student))
    framework = _framework(student)
    # tf_keras takes the loss as a plain function of tensors (keras.ops runs on TF tensors).
    student.compile(optimizer=framework.optimizers.Adam(config.learning_rate),
                    loss=loss if framework is keras else loss.call)
    return student.fit(x, target, batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
                       verbose=config.verbose, callbacks=list(callbacks))


def fit_features(model, layer: str, x: np.ndarray, target: np.ndarray, config: TrainConfig,
                 trainable: Optional[Sequence[str]] = None) -> float:
    """Trains `model` (or only its `trainable` layers) so that `layer`'s output mimics `target`; final MSE.

    Feature distillation (Romero et al., "FitNets", arXiv:1412.6550): the
    loss is the mean squared error between the student's feature and the
    teacher's, precomputed in `target` on the same images x.
    """
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    saved = {l.name: l.trainable for l in model.layers}
    if trainable is not None:
        for l in model.layers:
            l.trainable = l.name in trainable
    try:
        if config.epochs and probe.trainable_weights:
            keras.utils.set_random_seed(config.seed)
            probe.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")
            probe.fit(x, target, batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
                      verbose=config.verbose)
        return float(np.mean((probe.predict(x, batch_size=64, verbose=0) - target) ** 2))
    finally:
        for l in model.layers:
            l.trainable = saved[l.name]


BN_PASSES = 4
BN_MOMENTUM = 0.5


def set_bn_statistics(model, batches: Sequence[np.ndarray], passes: int = BN_PASSES,
                      momentum: float = BN_MOMENTUM) -> None:
    """Sets every BatchNormalization layer's moving mean/variance from `batches`.

    Each pass runs all batches in training mode with `momentum`, so after a
    few passes the moving statistics are those of the data (within
    momentum**passes of the starting values).  Used after pruning, whose
    changed weights leave the old statistics stale, and for models built with
    random weights.
    """
    bns = [l for l in model._flatten_layers() if type(l).__name__ == "BatchNormalization"]  # pylint: disable=protected-access
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = momentum
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    # One traced step rather than eager layer-by-layer calls (about 20x faster on small models).
    step = tf.function(lambda batch: model(batch, training=True), reduce_retracing=True)
    for _ in range(passes):
        for batch in batches:
            step(tf.convert_to_tensor(batch))
    for l, m in zip(bns, saved):
        l.momentum = m
