"""Loading Keras models in safe mode, and copying them: the one way each is done."""

import json
import os
import shutil
import tempfile
import zipfile

from tfcompress.errors import TfcError

# Config keys tf_keras writes that Keras 3's layers refuse.  tf_keras's depthwise and separable convs inherit them
# from Conv: `groups` (always 1; another value cannot be expressed) and the `kernel_*` settings of a kernel they
# do not have (theirs are `depthwise_*` and `pointwise_*`), dropped whatever they say.
_UNUSED = {"kernel_initializer": None, "kernel_regularizer": None, "kernel_constraint": None}
_KERAS2_ONLY = {"DepthwiseConv2D": {"groups": 1, **_UNUSED}, "SeparableConv2D": {"groups": 1, **_UNUSED}}


def _layer_entries(obj):
    """Every {"class_name", "config"} entry of a stored model config, nested models' layers included, each
    yielded before its own contents are walked."""
    if isinstance(obj, dict):
        if "class_name" in obj and "config" in obj:
            yield obj
        for v in obj.values():
            yield from _layer_entries(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _layer_entries(v)


def _parsed(raw) -> dict:
    """A .h5 file's `model_config` attribute (JSON, bytes or str) as a dict."""
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _keras3_config(config: dict) -> dict:
    """A tf_keras model config with the keys Keras 3 refuses taken out (in place; returned).

    Raises:
      TfcError: such a key holds a value Keras 3 cannot express.
    """
    for entry in _layer_entries(config):
        for key, only in _KERAS2_ONLY.get(entry["class_name"], {}).items():
            value = entry["config"].pop(key, only)
            if only is not None and value != only:
                raise TfcError(f"layer {entry['config'].get('name')} ({entry['class_name']}) has {key}={value}, "
                               "which Keras 3 does not support")
    return config


def _load_tf_keras_h5(path: str, custom_objects):
    """A tf_keras (Keras 2) .h5 loaded by Keras 3: a temporary copy whose model config is rewritten where the two
    differ (`_KERAS2_ONLY`)."""
    import h5py  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "model.h5")
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            config = _keras3_config(_parsed(f.attrs["model_config"]))
            f.attrs["model_config"] = json.dumps(config).encode()
        return keras.saving.load_model(copy, compile=False, safe_mode=True, custom_objects=custom_objects)


def load_keras(path: str):
    """A .keras or .h5 model loaded by Keras 3 in safe mode, uncompiled (a tf_keras .h5 too).

    Raises:
      TfcError: not a .keras archive, Python code that safe mode will not
        run (a Lambda layer), or a corrupt or unsupported file.
    """
    import keras  # pylint: disable=import-outside-toplevel
    from tfcompress.keras.registry import custom_objects  # pylint: disable=import-outside-toplevel
    if path.lower().endswith(".keras") and not zipfile.is_zipfile(path):
        raise TfcError(f"cannot load Keras model {path}: not a .keras archive (corrupt or truncated)")
    try:
        if path.lower().endswith((".h5", ".hdf5")) and is_tf_keras_h5(path):
            return _load_tf_keras_h5(path, custom_objects())
        return keras.saving.load_model(path, compile=False, safe_mode=True, custom_objects=custom_objects())
    except TfcError:
        raise
    except Exception as e:  # Keras raises many types for a bad file.
        first = str(e).splitlines()[0] if str(e) else ""
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            raise TfcError(f"refusing to load {path}: it holds Python code (e.g. a Lambda layer) "
                           "that safe mode will not execute") from e
        raise TfcError(f"cannot load Keras model {path}: corrupt or unsupported "
                       f"({type(e).__name__}: {first[:200]})") from e


def check_finite_keras(model, source: str) -> None:
    """Raises TfcError naming the first weight of `model` that holds NaN or Inf."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    for weight in model.weights:
        if not np.all(np.isfinite(np.asarray(weight.numpy(), np.float64))):
            raise TfcError(f"model {source}: weight {weight.path} contains NaN or Inf")


def copy_model(model):
    """A functional or sequential model rebuilt from its config with the same weights.

    The copy has its own layers and variables (training it leaves `model`
    alone) and is never compiled, so no optimizer state or loss rides along.
    """
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def h5_keras_version(path: str) -> str:
    """The Keras version that wrote a legacy .h5 model ("2.x" for tf_keras, "3.x" for Keras 3), or ""."""
    import h5py  # pylint: disable=import-outside-toplevel
    with h5py.File(path, "r") as f:
        version = f.attrs.get("keras_version", "")
    return version.decode() if isinstance(version, bytes) else str(version)


def is_tf_keras_h5(path: str) -> bool:
    """True for a .h5 model written by tf_keras (Keras 2), which tensorflow-model-optimization can wrap."""
    return h5_keras_version(path).startswith("2.")


def h5_layer_classes(path: str) -> list:
    """Class names of every layer in a .h5 model's stored config, read without building the model."""
    import h5py  # pylint: disable=import-outside-toplevel
    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if config is None:
        return []
    return [entry["class_name"] for entry in _layer_entries(_parsed(config))]
