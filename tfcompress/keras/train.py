"""The trainer every training command uses: hard labels, a teacher's soft targets, or both.

Loss per example (Hinton et al., "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531):

    alpha * CE(y, softmax(s))  +  (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

where s and t are the student's and teacher's logits and T the temperature
(the T^2 factor keeps the soft term's gradients on the scale of the hard
term's as T changes).
An example without a label (a folder with no class subfolders) uses the
distillation term alone; with no teacher, the cross-entropy alone.  A model
whose output is a softmax has its logits recovered as log-probabilities
(softmax is shift-invariant, so softmax(log p / T) = softmax(z / T)).

With `TrainConfig.function_matching` and no labels, the teacher labels
each batch as it is drawn, half of it new views of the images (see `views`).

A model with several outputs (see `heads`) trains every class head by this
loss (labels go to the first) and every other head (a box regression, a
dense map) by the mean squared error to the teacher's output over that
output's variance, summed: a head's units (a box in [0, 1] or in pixels)
then do not decide how much it counts.
"""

import contextlib
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress.errors import TfcError
from tfcompress.keras import distribute, kernels, views
from tfcompress.keras.distribute import check_kind
from tfcompress.keras.heads import Head, as_list, heads, is_softmax, predict_all, unwrapped
from tfcompress.keras.registry import register

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
      distribute: none, mirrored or multi_worker (see `keras.distribute`); batch_size is then the global
        batch over every replica.
      function_matching: when the teacher is the only target (no labels, one device, no feature pairs),
        train on batches half of fresh shifted and mixed views, half of the images, labelled by the teacher
        as they are drawn (`keras.views`), the learning rate on a cosine decay to 0 over the run.
    """
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.5
    seed: int = 0
    verbose: int = 1
    distribute: str = "none"
    function_matching: bool = False

    def __post_init__(self):
        check_kind(self.distribute)
        if self.epochs < 0 or self.batch_size < 1:
            raise TfcError(f"--epochs must be >= 0 and --batch_size >= 1 (got {self.epochs}, {self.batch_size})")
        if not self.temperature > 0:
            raise TfcError(f"--temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise TfcError(f"--alpha must be in [0, 1], got {self.alpha}")

    def on_views(self, labelled: bool, features: bool = False) -> bool:
        """Whether a teacher-distilled fit trains by function matching: asked for, no labels, no feature
        pairs, one device."""
        return self.function_matching and not labelled and not features and self.distribute == "none"

    def steps(self, images: int) -> int:
        """Optimizer steps over all epochs on `images` images (the last batch of an epoch may be short)."""
        return self.epochs * -(-images // self.batch_size)


def batches(x: np.ndarray, size: int = 32) -> List[np.ndarray]:
    """x split into consecutive batches of `size` (the last may be shorter), e.g. for set_bn_statistics."""
    return [x[i:i + size] for i in range(0, len(x), size)]


def outputs_probabilities(model) -> bool:
    """True if the model's output is a softmax (its last layer is Softmax or has a softmax activation)."""
    return is_softmax(unwrapped(model.layers[-1]))


def _framework(model):
    """The Keras that built `model`: Keras 3, or tf_keras for tfmot-wrapped Keras 2 models."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras  # pylint: disable=import-outside-toplevel
        return tf_keras
    return keras


def _as_logits(out: np.ndarray, probabilities: bool) -> np.ndarray:
    return np.log(np.clip(out, _EPS, 1.0)) if probabilities else out


def logits(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's logits on x (log-probabilities for a softmax model)."""
    return _as_logits(model.predict(x, batch_size=batch_size, verbose=0), outputs_probabilities(model))


def _packed_target(n: int, k: int, labels: Optional[np.ndarray], teacher_logits: Optional[np.ndarray],
                   what: str) -> np.ndarray:
    """DistillationLoss's target [one-hot labels | teacher logits | has-label | has-teacher] for `k` classes.

    Raises:
      TfcError: labels outside 0..k-1 (`what` names the output in the message).
    """
    target = np.zeros((n, 2 * k + 2), np.float32)
    if labels is not None:
        if labels.min() < 0 or labels.max() >= k:
            raise TfcError(f"labels go up to {labels.max()} but {what}")
        target[np.arange(n), labels] = 1.0
        target[:, 2 * k] = 1.0
    if teacher_logits is not None:
        target[:, k:2 * k] = teacher_logits
        target[:, 2 * k + 1] = 1.0
    return target


@register("DistillationLoss")
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


@dataclasses.dataclass(frozen=True)
class SharedWeights:
    """Weight sharing for one variable during training.

    Attributes:
      groups: int array of the variable's shape: the shared value (codeword
        entry) each element holds, or -1 for an element frozen at its value
        (a pruned zero).
      reduction: "sum" (k-means codebooks, Han et al.: a centroid's gradient
        is the sum over its members) or "mean" (product-quantization
        codewords, Stock et al.: gradients averaged per codeword).
    """
    groups: np.ndarray
    reduction: str = "sum"

    def __post_init__(self):
        if self.reduction not in ("sum", "mean"):
            raise TfcError(f"unknown gradient reduction {self.reduction!r}")


def read_shared(weights: np.ndarray, groups: np.ndarray, count: int) -> Tuple[np.ndarray, float]:
    """(each group's value, largest max - min within a group) of a variable trained with SharedWeights.

    `groups` as in SharedWeights (elements < 0 are not read); groups
    0..count-1 without a member come back as NaN.  The spread is 0 when the
    shared gradients kept every group's members equal.
    """
    members = groups.reshape(-1) >= 0
    ids, values = groups.reshape(-1)[members], np.asarray(weights, np.float64).reshape(-1)[members]
    lo, hi = np.full(count, np.inf), np.full(count, -np.inf)
    np.minimum.at(lo, ids, values)
    np.maximum.at(hi, ids, values)
    counts = np.bincount(ids, minlength=count)
    means = np.where(counts > 0, np.bincount(ids, weights=values, minlength=count) / np.maximum(counts, 1), np.nan)
    return means, float(np.max(np.where(counts > 0, hi - lo, 0.0), initial=0.0))


def _shared_gradient(grad, spec: SharedWeights):
    """Every member of a group gets the group's summed (or averaged) gradient; frozen elements get 0."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    groups = spec.groups.reshape(-1).astype(np.int64)
    n = int(groups.max()) + 1 if groups.size and groups.max() >= 0 else 0
    ids_np = np.where(groups < 0, n, groups)  # Frozen elements share one extra, discarded segment.
    ids = tf.constant(ids_np)
    total = tf.math.unsorted_segment_sum(tf.reshape(grad, [-1]), ids, n + 1)
    if spec.reduction == "mean":
        counts = np.bincount(ids_np, minlength=n + 1).astype(np.float32)
        total = total / tf.constant(np.maximum(counts, 1.0), grad.dtype)
    keep = tf.constant(np.arange(n + 1) < n, grad.dtype)
    return tf.reshape(tf.gather(total * keep, ids), tf.shape(grad))


def _optimizer(framework, learning_rate, shared: Optional[Dict[str, SharedWeights]]):
    """Adam, with gradients of shared variables reduced per group before the update.

    Members of a group start equal and then receive identical gradients, so
    Adam's element-wise update keeps them equal: the variable stays a codebook
    lookup without any projection step.
    """
    if not shared:
        return framework.optimizers.Adam(learning_rate)

    class SharedAdam(keras.optimizers.Adam):
        def apply(self, grads, trainable_variables=None):
            variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
            grads = [g if g is None or v.path not in shared else _shared_gradient(g, shared[v.path])
                     for g, v in zip(grads, variables)]
            return super().apply(grads, trainable_variables)

    return SharedAdam(learning_rate)


@dataclasses.dataclass(frozen=True)
class FeaturePair:
    """Feature distillation between a student layer's output and a teacher layer's output (same H x W)."""
    student: str
    teacher: str


def _feature_model(student, teacher, pairs: Sequence[FeaturePair]):
    """(the student with the paired features as extra outputs, through 1x1 adapters where widths differ,
    a model giving the teacher's paired features)."""
    outputs, probes = [student.outputs[0]], []
    for i, pair in enumerate(pairs):
        try:
            s_out, t_out = student.get_layer(pair.student).output, teacher.get_layer(pair.teacher).output
        except ValueError as e:
            raise TfcError(f"feature pair {pair.student}:{pair.teacher}: {e}") from e
        if tuple(s_out.shape[1:-1]) != tuple(t_out.shape[1:-1]):
            raise TfcError(f"feature pair {pair.student}:{pair.teacher}: spatial shapes differ "
                           f"({tuple(s_out.shape[1:-1])} vs {tuple(t_out.shape[1:-1])})")
        if s_out.shape[-1] != t_out.shape[-1]:
            # A 1x1 convolution (a Dense on the channel axis), trained with the student and then discarded.
            s_out = keras.layers.Dense(int(t_out.shape[-1]), use_bias=False, name=f"feature_adapter_{i}")(s_out)
        outputs.append(s_out)
        probes.append(t_out)
    return keras.Model(student.inputs, outputs), keras.Model(teacher.inputs, probes)


def fit(student, x: np.ndarray, labels: Optional[np.ndarray], config: TrainConfig, *, teacher=None,
        callbacks: Sequence = (), shared: Optional[Dict[str, SharedWeights]] = None,
        features: Sequence[FeaturePair] = (), feature_weight: float = 1.0):
    """Trains `student` in place on images x (float NHWC), with labels and/or a teacher.

    `shared` maps variable paths (`variable.path`) to their weight sharing
    (Keras 3 students only): those variables train as codebooks.
    `features` adds feature distillation (Romero et al., "FitNets",
    arXiv:1412.6550): `feature_weight` times the mean squared error between
    each paired student and teacher feature, through a bias-free 1x1 adapter
    when their widths differ.

    Raises:
      TfcError: neither labels nor a teacher, or labels out of the output range.
    """
    if labels is None and teacher is None:
        raise TfcError("training needs labelled images or a teacher to distill from")
    if features and teacher is None:
        raise TfcError("feature distillation needs a teacher")
    outputs = heads(student)
    if teacher is not None and config.on_views(labels is not None, bool(features)):
        return _fit_views(student, outputs, x, config, teacher=teacher, callbacks=callbacks, shared=shared)
    if len(outputs) > 1 or outputs[0].kind != "class":
        if features:
            raise TfcError("feature distillation trains single-output class models only")
        return _fit_heads(student, outputs, x, labels, config, teacher=teacher, callbacks=callbacks, shared=shared)
    num_classes = int(student.output_shape[-1])
    target = _packed_target(len(x), num_classes, labels, logits(teacher, x) if teacher is not None else None,
                            f"the model outputs {num_classes} classes")
    keras.utils.set_random_seed(config.seed)
    loss = DistillationLoss(num_classes, config.temperature, config.alpha, outputs_probabilities(student))
    framework = _framework(student)
    if (shared or features) and framework is not keras:
        raise TfcError("weight sharing and feature distillation train Keras 3 models only")
    if features:
        trained, probes = _feature_model(student, teacher, features)
        feature_targets = probes.predict(x, batch_size=64, verbose=0)
        feature_targets = feature_targets if isinstance(feature_targets, list) else [feature_targets]
        mse = "mse" if config.distribute == "none" else keras.losses.MeanSquaredError()
        return _train(trained, x, [target] + feature_targets, [loss] + [mse] * len(features),
                      lambda: _optimizer(framework, config.learning_rate, shared), config, callbacks,
                      loss_weights=[1.0] + [float(feature_weight)] * len(features))
    if config.distribute != "none":
        return _train(student, x, [target], [loss], lambda: _optimizer(framework, config.learning_rate, shared),
                      config, callbacks)
    kernels.warn_if_onednn_training()
    # tf_keras takes the loss as a plain function of tensors (keras.ops runs on TF tensors).
    student.compile(optimizer=_optimizer(framework, config.learning_rate, shared),
                    loss=loss if framework is keras else loss.call)
    return student.fit(x, target, batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
                       verbose=config.verbose, callbacks=list(callbacks))


def _train(model, x, targets, losses, make_optimizer, config: TrainConfig, callbacks=(), loss_weights=None):
    """compile + fit on one device, or the `distribute.fit` loop under config.distribute."""
    kernels.warn_if_onednn_training()
    if config.distribute != "none":
        return distribute.fit(model, x, targets, losses, make_optimizer, kind=config.distribute,
                              epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                              verbose=config.verbose, loss_weights=loss_weights, callbacks=callbacks)
    single = len(losses) == 1
    model.compile(optimizer=make_optimizer(), loss=losses[0] if single else list(losses), loss_weights=loss_weights)
    return model.fit(x, targets[0] if single else list(targets), batch_size=config.batch_size, epochs=config.epochs,
                     shuffle=True, verbose=config.verbose, callbacks=list(callbacks))


def _fit_heads(student, outputs: Sequence[Head], x: np.ndarray, labels: Optional[np.ndarray], config: TrainConfig,
               *, teacher, callbacks, shared):
    """`fit` for several outputs, or one that is not a class vector: each class head by the loss above (the
    labels belong to the first), every other head by mean squared error against the teacher's output; the
    losses are summed with `_head_weights`."""
    framework = _framework(student)
    if teacher is None:
        values = [h.name for h in outputs if h.kind != "class"]
        if values:
            raise TfcError(f"output {values[0]} is not a class vector: training it needs a teacher to distill "
                           "from (--distill_from=original)")
    first_class = next((h.index for h in outputs if h.kind == "class"), None)
    if labels is not None and first_class is None:
        raise TfcError("labels need a class output; this model has none (distill from the original instead)")
    teacher_out = predict_all(teacher, x) if teacher is not None else None
    targets, losses = _head_targets(outputs, len(x), labels, teacher_out), _head_losses(outputs, config, framework)
    keras.utils.set_random_seed(config.seed)
    return _train(student, x, targets, losses, lambda: _optimizer(framework, config.learning_rate, shared), config,
                  callbacks, loss_weights=_head_weights(outputs, teacher_out))


def _head_weights(outputs: Sequence[Head], teacher_out) -> Optional[List[float]]:
    """Each head's loss weight, None for one head: 1 for a class head, 1 / the variance of the teacher's
    output over the images for every other (averaged over its elements), so that its squared error counts
    as the share of the teacher's variance it misses, whatever the units (a box in [0, 1] has a variance
    near 0.02: unweighted, its error weighed a fiftieth of a class head's)."""
    if len(outputs) == 1:
        return None
    weights = []
    for head in outputs:
        variance = float(np.mean(np.var(teacher_out[head.index], axis=0))) if head.kind != "class" else 1.0
        weights.append(1.0 / variance if variance > _EPS else 1.0)
    return weights


def _head_targets(outputs: Sequence[Head], n: int, labels: Optional[np.ndarray], teacher_out) -> list:
    """The target of each head for n images: DistillationLoss's packed target for a class head (the labels go
    to the first), the teacher's values for every other head."""
    first_class = next((h.index for h in outputs if h.kind == "class"), None)
    return [np.asarray(teacher_out[head.index], np.float32) if head.kind != "class" else _packed_target(
        n, head.width, labels if head.index == first_class else None,
        _as_logits(teacher_out[head.index], head.probabilities) if teacher_out is not None else None,
        f"output {head.name} has {head.width} classes") for head in outputs]


def _head_losses(outputs: Sequence[Head], config: TrainConfig, framework) -> list:
    """The loss of each head: DistillationLoss for a class head, mean squared error for every other (for
    tf_keras, which takes losses as plain functions of tensors: the loss's `call`, and "mse")."""
    losses = [DistillationLoss(head.width, config.temperature, config.alpha, head.probabilities)
              if head.kind == "class" else keras.losses.MeanSquaredError() for head in outputs]
    if framework is not keras:
        losses = [loss.call if isinstance(loss, DistillationLoss) else "mse" for loss in losses]
    return losses


def _fit_views(student, outputs: Sequence[Head], x: np.ndarray, config: TrainConfig, *, teacher, callbacks,
               shared):
    """`fit` by function matching (see `keras.views`): config.steps(len(x)) steps, each on a fresh batch of
    views that the teacher labels as it is drawn."""
    framework = _framework(student)

    def labelled():
        for view in views.views(x, config.batch_size, config.seed):
            targets = _head_targets(outputs, len(view), None, _outputs_on(teacher, view))
            yield view, (tuple(targets) if len(targets) > 1 else targets[0])

    steps = config.steps(len(x))
    if not steps:
        return None
    keras.utils.set_random_seed(config.seed)
    kernels.warn_if_onednn_training()
    losses = _head_losses(outputs, config, framework)
    schedule = framework.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps)
    student.compile(optimizer=_optimizer(framework, schedule, shared),
                    loss=losses[0] if len(losses) == 1 else list(losses),
                    loss_weights=_head_weights(outputs, predict_all(teacher, x)) if len(losses) > 1 else None)
    return student.fit(labelled(), steps_per_epoch=steps // config.epochs, epochs=config.epochs, shuffle=False,
                       verbose=config.verbose, callbacks=list(callbacks))


def _outputs_on(model, x: np.ndarray) -> List[np.ndarray]:
    """Every output of `model` on one batch x, in output order (inference mode)."""
    return [np.asarray(o) for o in as_list(model, model(x, training=False))]


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
            _train(probe, x, [target], ["mse" if config.distribute == "none" else keras.losses.MeanSquaredError()],
                   lambda: keras.optimizers.Adam(config.learning_rate), config)
        return float(np.mean((probe.predict(x, batch_size=64, verbose=0) - target) ** 2))
    finally:
        for l in model.layers:
            l.trainable = saved[l.name]


def _batch_norms(model) -> list:
    """Every BatchNormalization layer of `model`, nested models' included."""
    return [l for l in model._flatten_layers() if type(l).__name__ == "BatchNormalization"]  # pylint: disable=W0212


@contextlib.contextmanager
def _momentum_at_most(bns: Sequence, cap: float):
    """Within the block, each batch norm of `bns` has momentum min(its own, cap); its own afterwards."""
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = min(l.momentum, cap)
    try:
        yield
    finally:
        for l, m in zip(bns, saved):
            l.momentum = m


# After a fine-tune, its batch norms' moving averages keep at most this share of the statistics they started with.
STALE_SHARE = 0.01


@contextlib.contextmanager
def moving_averages_over(model, steps: int):
    """Within the block, every BatchNormalization's momentum is lowered (never raised) to STALE_SHARE ** (1 /
    steps), so that after `steps` training steps its moving averages hold at most STALE_SHARE of the statistics
    they started with: a short fine-tune's averages are then its own.  Only the averages change: a training
    step normalizes by its batch's statistics whatever the momentum."""
    with _momentum_at_most(_batch_norms(model), STALE_SHARE ** (1.0 / max(steps, 1))):
        yield


def set_bn_statistics(model, batches: Sequence[np.ndarray]) -> None:
    """Sets every BatchNormalization layer's moving mean/variance to its input's mean and variance over all of
    `batches`, whatever their order.

    One pass in training mode (each layer's input normalized by its batch's statistics, as in training), with
    momentum 0 so that each batch's statistics can be read back; they are pooled on the host, weighted by
    batch size (the variance by the law of total variance).  An exponential moving average would weight the
    last few batches most: read from class folders in order, those hold the last classes only.  Used after
    pruning, whose changed weights leave the old statistics stale, and for models built with random weights.
    """
    bns = _batch_norms(model)
    if not bns or not len(batches):  # Nothing to set: skip the pass over the images.
        return
    before = [(keras.ops.convert_to_numpy(l.moving_mean), keras.ops.convert_to_numpy(l.moving_variance)) for l in bns]
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    # One traced step rather than eager layer-by-layer calls (about 20x faster on small models).
    step = tf.function(lambda batch: model(batch, training=True), reduce_retracing=True)
    count, means, squares = 0, [0.0] * len(bns), [0.0] * len(bns)
    with _momentum_at_most(bns, 0.0):
        try:
            for batch in batches:
                step(tf.convert_to_tensor(batch))
                n = len(batch)
                count += n
                for i, l in enumerate(bns):
                    mean = keras.ops.convert_to_numpy(l.moving_mean).astype(np.float64)
                    var = keras.ops.convert_to_numpy(l.moving_variance).astype(np.float64)
                    means[i] = means[i] + n * mean
                    squares[i] = squares[i] + n * (var + mean ** 2)
        except BaseException:
            for l, (mean, var) in zip(bns, before):  # No half-set statistics.
                l.moving_mean.assign(mean)
                l.moving_variance.assign(var)
            raise
    for l, total, square in zip(bns, means, squares):
        mean = total / count
        l.moving_mean.assign(mean.astype(np.float32))
        l.moving_variance.assign(np.maximum(square / count - mean ** 2, 0.0).astype(np.float32))
