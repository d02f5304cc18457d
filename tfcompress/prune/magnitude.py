"""Magnitude pruning for Keras 3: wrappers, schedules, the step callback and stripping.

The familiar API: `prune_low_magnitude(model, schedule)` wraps every conv,
depthwise conv, separable conv (both of its kernels) and dense layer in
`PruneLowMagnitude`; training with the
`UpdatePruningStep` callback raises each layer's sparsity along the schedule,
zeroing the smallest-magnitude weights (by a mask the wrapper keeps); and
`strip_pruning(model)` returns plain layers holding exact zeros.  Schedules
and wrappers are registered Keras serializables, so a model saved mid-way
reloads with its schedule, masks, per-layer targets and M:N pattern.

M:N sparsity keeps the N largest of every M consecutive weights along the
input-channel axis (2:4 is what sparse tensor cores accelerate).

References:
  Han et al., "Learning both Weights and Connections for Efficient Neural
  Networks", arXiv:1506.02626 (prune small weights, retrain, repeat).
  Zhu & Gupta, "To prune, or not to prune", arXiv:1710.01878 (the polynomial
  sparsity schedule s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n dt))^3).
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378
  (2:4 structured sparsity).
"""

from typing import Dict, Iterable, Optional, Tuple

import keras
import numpy as np

from tfcompress.errors import TfcError
from tfcompress.io.keras_models import copy_model
from tfcompress.keras.registry import register

PRUNABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Dense)


def kernel_names(layer) -> Tuple[str, ...]:
    """The attributes holding a prunable layer's kernels: a separable conv has a depthwise and a pointwise one."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        return ("depthwise_kernel", "pointwise_kernel")
    return ("kernel",)


def _input_axis(layer, name: str) -> Optional[int]:
    """The input-channel axis of a kernel (for M:N groups), or None for a depthwise kernel, which has none."""
    if isinstance(layer, keras.layers.DepthwiseConv2D) or name == "depthwise_kernel":
        return None
    return -2


class PruningSchedule:
    """Maps a training step to (update the mask now?, target sparsity)."""

    def __call__(self, step: int) -> Tuple[bool, float]:
        raise NotImplementedError

    @property
    def final(self) -> float:
        """The sparsity the schedule ends at."""
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)


def _check_sparsity(value: float, name: str) -> None:
    if not 0.0 <= value < 1.0:
        raise TfcError(f"{name} must be in [0, 1), got {value}")


@register("ConstantSparsity")
class ConstantSparsity(PruningSchedule):
    """A fixed sparsity, applied every `frequency` steps from `begin_step` to `end_step` (-1: forever)."""

    def __init__(self, target_sparsity: float, begin_step: int = 0, end_step: int = -1, frequency: int = 100):
        _check_sparsity(target_sparsity, "target_sparsity")
        if frequency < 1 or begin_step < 0 or (end_step != -1 and end_step < begin_step):
            raise TfcError(f"bad schedule steps: begin {begin_step}, end {end_step}, frequency {frequency}")
        self.target_sparsity, self.begin_step, self.end_step, self.frequency = (
            float(target_sparsity), int(begin_step), int(end_step), int(frequency))

    def __call__(self, step):
        active = step >= self.begin_step and (self.end_step == -1 or step <= self.end_step)
        return active and (step - self.begin_step) % self.frequency == 0, self.target_sparsity

    @property
    def final(self) -> float:
        return self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


@register("PolynomialDecay")
class PolynomialDecay(PruningSchedule):
    """Sparsity rising from `initial_sparsity` to `final_sparsity` between begin_step and end_step.

    s(t) = final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power, held at `final`
    after end_step; the mask is updated every `frequency` steps and at end_step.
    """

    def __init__(self, initial_sparsity: float, final_sparsity: float, begin_step: int, end_step: int,
                 power: float = 3.0, frequency: int = 100):
        _check_sparsity(initial_sparsity, "initial_sparsity")
        _check_sparsity(final_sparsity, "final_sparsity")
        if end_step <= begin_step or begin_step < 0 or frequency < 1:
            raise TfcError(f"bad schedule steps: begin {begin_step}, end {end_step}, frequency {frequency}")
        self.initial_sparsity, self.final_sparsity = float(initial_sparsity), float(final_sparsity)
        self.begin_step, self.end_step = int(begin_step), int(end_step)
        self.power, self.frequency = float(power), int(frequency)

    def sparsity(self, step: int) -> float:
        progress = min(max((step - self.begin_step) / (self.end_step - self.begin_step), 0.0), 1.0)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power

    def __call__(self, step):
        update = step >= self.begin_step and (step <= self.end_step and
                                              ((step - self.begin_step) % self.frequency == 0
                                               or step == self.end_step))
        return update, self.sparsity(step)

    @property
    def final(self) -> float:
        return self.final_sparsity

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}


SCHEDULES = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay}


def magnitude_mask(weights: np.ndarray, sparsity: float, m_by_n: Optional[Tuple[int, int]] = None,
                   input_axis: int = -2) -> np.ndarray:
    """0/1 mask zeroing the smallest |w|.

    Unstructured: exactly round(sparsity * size) weights are zeroed (ties go
    to the lower flat index).  M:N (m_by_n = (N, M), e.g. (2, 4)): in every
    group of M consecutive weights along `input_axis`, the N largest are kept;
    `sparsity` is then ignored (it is 1 - N/M).

    Raises:
      TfcError: the mask would leave no weight, or the input axis is not a
        multiple of M.
    """
    w = np.abs(np.asarray(weights, np.float64))
    if m_by_n is not None:
        keep, group = m_by_n
        moved = np.moveaxis(w, input_axis, -1)
        if moved.shape[-1] % group:
            raise TfcError(f"{keep}:{group} sparsity needs an input axis that is a multiple of {group}, "
                           f"got {moved.shape[-1]}")
        groups = moved.reshape(-1, group)
        order = np.argsort(-groups, axis=1, kind="stable")
        mask = np.zeros_like(groups)
        np.put_along_axis(mask, order[:, :keep], 1.0, axis=1)
        return np.moveaxis(mask.reshape(moved.shape), -1, input_axis).astype(np.float32)
    drop = int(round(sparsity * w.size))
    if drop >= w.size:
        raise TfcError(f"sparsity {sparsity} leaves no weight in a layer of {w.size} weights")
    mask = np.ones(w.size, np.float32)
    mask[np.argsort(w.reshape(-1), kind="stable")[:drop]] = 0.0
    return mask.reshape(w.shape)


@register("PruneLowMagnitude")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a conv, depthwise conv or dense layer whose kernel is pruned by magnitude.

    Args:
      layer: the layer to prune.
      schedule: a PruningSchedule.
      target_sparsity: overrides the schedule's final sparsity for this layer
        (the schedule's curve is scaled to it), or None.
      m_by_n: (N, M) structured sparsity, or None.
    """

    def __init__(self, layer, schedule: PruningSchedule, target_sparsity: Optional[float] = None,
                 m_by_n: Optional[Tuple[int, int]] = None, **kwargs):
        if not isinstance(layer, PRUNABLE):
            raise TfcError(f"cannot prune layer {layer.name} of type {type(layer).__name__} "
                           f"(prunable: {', '.join(t.__name__ for t in PRUNABLE)})")
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        super().__init__(layer, **kwargs)
        self.schedule = schedule
        if target_sparsity is not None:
            _check_sparsity(target_sparsity, f"sparsity of {layer.name}")
        self.target_sparsity = target_sparsity
        self.m_by_n = tuple(m_by_n) if m_by_n is not None else None

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        # One mask per kernel; a single kernel's is named "mask", as files saved before separable convs have it.
        names = kernel_names(self.layer)
        self.masks = {}
        for name in names:
            self.masks[name] = self.add_weight(
                name="mask" if len(names) == 1 else name.replace("kernel", "mask"),
                shape=getattr(self.layer, name).shape, initializer="ones", trainable=False, dtype="float32")
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def scheduled_sparsity(self, step: int) -> Tuple[bool, float]:
        update, sparsity = self.schedule(step)
        if self.target_sparsity is not None:
            final = self.schedule.final
            sparsity = sparsity * self.target_sparsity / final if final else self.target_sparsity
        return update, sparsity

    def update_mask(self, sparsity: float) -> None:
        """Recomputes each kernel's mask from its current magnitudes (every kernel to the same sparsity)."""
        for name, mask in self.masks.items():
            axis = _input_axis(self.layer, name)
            if self.m_by_n is not None and axis is None:
                raise TfcError(f"M:N sparsity needs an input-channel axis; {self.layer.name}'s {name} is depthwise")
            kernel = keras.ops.convert_to_numpy(getattr(self.layer, name))
            mask.assign(magnitude_mask(kernel, sparsity, self.m_by_n, input_axis=-2 if axis is None else axis))
        self.apply_mask()

    def apply_mask(self) -> None:
        for name, mask in self.masks.items():
            kernel = getattr(self.layer, name)
            kernel.assign(kernel * mask)

    def get_config(self):
        config = super().get_config()
        config.update({"schedule": keras.saving.serialize_keras_object(self.schedule),
                       "target_sparsity": self.target_sparsity,
                       "m_by_n": list(self.m_by_n) if self.m_by_n is not None else None})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)


class UpdatePruningStep(keras.callbacks.Callback):
    """Advances the pruning step each batch, updates masks when the schedule says, keeps pruned weights zero.

    The step counts batches from the first `fit`; `begin_step` and friends
    are in these units.
    """

    def __init__(self):
        super().__init__()
        self.step = 0
        self.wrappers = []

    def on_train_begin(self, logs=None):
        # Found once per fit, not on every batch.
        self.wrappers = [l for l in self.model._flatten_layers() if isinstance(l, PruneLowMagnitude)]  # pylint: disable=protected-access
        if not self.wrappers:
            raise TfcError("UpdatePruningStep is used on a model with no PruneLowMagnitude layer")

    def on_train_batch_begin(self, batch, logs=None):
        for wrapper in self.wrappers:
            update, sparsity = wrapper.scheduled_sparsity(self.step)
            if update:
                wrapper.update_mask(sparsity)
        self.step += 1

    def on_train_batch_end(self, batch, logs=None):
        for wrapper in self.wrappers:
            wrapper.apply_mask()  # The optimizer step may have moved pruned weights off zero.


def prune_low_magnitude(model, schedule: PruningSchedule, *, sparsity_map: Optional[Dict[str, float]] = None,
                        exclude: Iterable[str] = (), m_by_n: Optional[Tuple[int, int]] = None):
    """A copy of a functional or sequential Keras model with every prunable layer wrapped.

    Args:
      model: the Keras 3 model.
      schedule: the schedule for every wrapped layer.
      sparsity_map: layer name -> final sparsity, overriding the schedule's.
      exclude: layer names left unpruned.
      m_by_n: (N, M) structured sparsity for every wrapped layer (not depthwise convs).

    Raises:
      TfcError: a named layer does not exist or cannot be pruned, or nothing is prunable.
    """
    sparsity_map = dict(sparsity_map or {})
    exclude = set(exclude)
    names = {l.name for l in model.layers}
    unknown = sorted((set(sparsity_map) | exclude) - names)
    if unknown:
        raise TfcError(f"no layer named {', '.join(unknown)} in the model")
    for name in sparsity_map:
        layer = model.get_layer(name)
        if not isinstance(layer, PRUNABLE):
            raise TfcError(f"cannot prune layer {name} of type {type(layer).__name__}")

    final = schedule.final
    for layer in model.layers:
        if isinstance(layer, PRUNABLE) and layer.name not in exclude and m_by_n is None:
            target = sparsity_map.get(layer.name, final)
            for name in kernel_names(layer):
                size = int(np.prod(getattr(layer, name).shape))
                if int(round(target * size)) >= size:
                    raise TfcError(f"sparsity {target} leaves layer {layer.name} ({size} weights) empty")

    def wrap(layer):
        if isinstance(layer, PRUNABLE) and layer.name not in exclude:
            # M:N needs an input-channel axis: depthwise convs are pruned unstructured; a separable conv's
            # depthwise kernel has none, so a separable conv is too.
            depthwise = isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))
            structured = None if depthwise else m_by_n
            return PruneLowMagnitude(layer, schedule, target_sparsity=sparsity_map.get(layer.name),
                                     m_by_n=structured, name=f"prune_low_magnitude_{layer.name}")
        return layer

    # Wrap layers of a copy: the wrappers reuse the layers they are given, and training must not
    # change `model` (it is the teacher when distilling).
    pruned = keras.models.clone_model(copy_model(model), clone_function=wrap)
    if not any(isinstance(l, PruneLowMagnitude) for l in pruned.layers):
        raise TfcError("the model has no prunable layer (Conv2D, DepthwiseConv2D, SeparableConv2D or Dense) left "
                       "to prune")
    return pruned


def strip_pruning(model):
    """The model with every PruneLowMagnitude replaced by its layer, masks applied (exact zeros)."""
    for layer in model.layers:
        if isinstance(layer, PruneLowMagnitude):
            layer.apply_mask()
    # First a model over the wrapped layers themselves (it holds their masked weights), then a fresh
    # copy of it: new layers, no optimizer state or compile settings carried over from training.
    unwrapped = keras.models.clone_model(
        model, clone_function=lambda l: l.layer if isinstance(l, PruneLowMagnitude) else l)
    return copy_model(unwrapped)


def sparsity_of(model) -> Dict[str, Tuple[int, int]]:
    """Layer name -> (zero kernel weights, kernel size) for every prunable layer, all its kernels together."""
    result = {}
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        if isinstance(inner, PRUNABLE):
            kernels = [keras.ops.convert_to_numpy(getattr(inner, name)) for name in kernel_names(inner)]
            result[inner.name] = (sum(int(np.sum(k == 0)) for k in kernels), sum(int(k.size) for k in kernels))
    return result


def model_sparsity(model) -> Tuple[int, int]:
    """(zero weights, weights) over every trainable weight of the model: biases, BN and unpruned layers too."""
    values = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    return sum(int(np.sum(v == 0)) for v in values), sum(int(v.size) for v in values)


def schedule_for(kind: str, sparsity: float, steps: int, ramp: float = 0.6, frequency: int = 10) -> PruningSchedule:
    """The schedule `prune --schedule` names: "constant", or "polynomial" rising over the first `ramp` of `steps`."""
    if kind == "constant":
        return ConstantSparsity(sparsity, 0, -1, frequency)
    if kind != "polynomial":
        raise TfcError(f"unknown pruning schedule {kind!r} (constant or polynomial)")
    end = max(1, int(steps * ramp))
    return PolynomialDecay(0.0, sparsity, 0, end, frequency=min(frequency, end))


def prune_and_train(model, schedule: PruningSchedule, x: np.ndarray, labels: Optional[np.ndarray], config,
                    *, teacher=None, **wrap_options):
    """Wraps `model`, trains it along `schedule` with the shared trainer, and strips the wrappers.

    Args:
      model: the Keras model (not modified).
      config: a `keras.train.TrainConfig`.
      teacher: the model to distil from, if any.
      wrap_options: sparsity_map, exclude, m_by_n for `prune_low_magnitude`.
    """
    from tfcompress.keras.train import fit  # pylint: disable=import-outside-toplevel
    pruned = prune_low_magnitude(model, schedule, **wrap_options)
    fit(pruned, x, labels, config, teacher=teacher, callbacks=[UpdatePruningStep()])
    return strip_pruning(pruned)
