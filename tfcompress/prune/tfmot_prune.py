"""Magnitude pruning of tf_keras (Keras 2) models with tensorflow-model-optimization's own wrappers.

tfmot works only with tf_keras, and importing it sets TF_USE_LEGACY_KERAS=1
for the whole process.  This module is therefore imported only on the
tf_keras path (a .h5 model written by tf_keras), and every tfmot import here
is inside a function.  The rest of the process keeps using Keras 3 through
`import keras`; the pruned tf_keras model comes back as a Keras 3 model
(through a temporary .h5, which Keras 3 reads), so it saves as .keras and
flows into `convert` and `eval` like any other.

Training uses the shared trainer (`keras.train.fit`), which compiles a
tf_keras model with tf_keras's optimizer and the same distillation loss.

References: Han et al., arXiv:1506.02626; Zhu & Gupta, arXiv:1710.01878 (the
schedules tfmot implements).
"""

import os
import tempfile
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from tfcompress.errors import TfcError


def _schedule(tfmot, kind: str, sparsity: float, steps: int, ramp: float, frequency: int):
    """tfmot's schedule.  tfmot updates masks only on steps that are positive multiples of the frequency
    (and, for PolynomialDecay, not after end_step), so the frequency is capped at the step count and
    end_step is rounded down to a multiple of it: the final sparsity is always reached."""
    frequency = max(1, min(frequency, steps))
    if kind == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=frequency)
    end = max(1, int(steps * ramp))
    frequency = min(frequency, end)
    return tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                                end_step=end // frequency * frequency, frequency=frequency)


def load_tf_keras(path: str):
    """A tf_keras model from a .h5 file, refusing Lambda layers (their code would run on load)."""
    from tfcompress.io.keras_models import h5_layer_classes  # pylint: disable=import-outside-toplevel
    if "Lambda" in h5_layer_classes(path):
        raise TfcError(f"refusing to load {path}: it holds Python code (a Lambda layer) that would run on load")
    import tf_keras  # pylint: disable=import-outside-toplevel
    try:
        return tf_keras.models.load_model(path, compile=False)
    except Exception as e:  # tf_keras raises many types for a bad file.
        raise TfcError(f"cannot load {path} as a tf_keras model: {str(e).splitlines()[0][:200]}") from e


def to_keras3(model):
    """The tf_keras model as a Keras 3 model (same layers and weights), through a temporary .h5."""
    from tfcompress.io.keras_models import load_keras  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.h5")
        model.save(path)
        return load_keras(path)


def prune_tf_keras(path: str, *, schedule: str, sparsity: float, ramp: float, frequency: int, x: np.ndarray,
                   labels: Optional[np.ndarray], config, teacher=None,
                   sparsity_map: Optional[Dict[str, float]] = None, exclude: Iterable[str] = (),
                   m_by_n: Optional[Tuple[int, int]] = None):
    """Loads the tf_keras model at `path`, prunes it with tfmot while training, strips it; a Keras 3 model.

    Args:
      schedule: "constant" or "polynomial" (over the first `ramp` of the steps).
      config: a `keras.train.TrainConfig`.
      teacher: the model to distil from (Keras 3 or tf_keras), if any.
      sparsity_map, exclude, m_by_n: per-layer targets, unpruned layers, N:M sparsity.

    Raises:
      TfcError: unknown layer names, nothing to prune, or a target that empties a layer.
    """
    try:
        import tensorflow_model_optimization as tfmot  # pylint: disable=import-outside-toplevel
        import tf_keras  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise TfcError(f"{path} is a tf_keras (Keras 2) model, which magnitude pruning sends through "
                       f"tensorflow-model-optimization, and {e.name} is not installed; install it with "
                       "`pip install --no-deps -r requirements-tf-keras.lock` (tools/setup.sh does)") from e
    from tfcompress.keras.train import fit  # pylint: disable=import-outside-toplevel
    model = load_tf_keras(path)
    sparsity_map, exclude = dict(sparsity_map or {}), set(exclude)
    names = {layer.name for layer in model.layers}
    unknown = sorted((set(sparsity_map) | exclude) - names)
    if unknown:
        raise TfcError(f"no layer named {', '.join(unknown)} in {path}")
    prunable = (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D, tf_keras.layers.SeparableConv2D,
                tf_keras.layers.Dense)
    steps = config.steps(len(x))
    wrapped = []

    def clone(layer):
        if not isinstance(layer, prunable) or layer.name in exclude:
            return layer.__class__.from_config(layer.get_config())
        target = sparsity_map.get(layer.name, sparsity)
        if not 0.0 <= target < 1.0:
            raise TfcError(f"sparsity {target} for {layer.name} would leave it empty (need [0, 1))")
        wrapped.append(layer.name)
        kwargs = {"sparsity_m_by_n": m_by_n} if m_by_n else {}
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer.__class__.from_config(layer.get_config()),
            pruning_schedule=_schedule(tfmot, schedule, target, steps, ramp, frequency), **kwargs)

    pruned = tf_keras.models.clone_model(model, clone_function=clone)
    if not wrapped:
        raise TfcError(f"{path} has no prunable layer (Conv2D, DepthwiseConv2D or Dense) left after --exclude")
    for layer in model.layers:  # clone_model builds fresh layers: copy the trained weights in.
        target = pruned.get_layer(("prune_low_magnitude_" + layer.name) if layer.name in wrapped else layer.name)
        inner = getattr(target, "layer", target)
        inner.set_weights(layer.get_weights())
    fit(pruned, x, labels, config, teacher=teacher, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return to_keras3(tfmot.sparsity.keras.strip_pruning(pruned))
