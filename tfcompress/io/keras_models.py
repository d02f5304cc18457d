"""Loading Keras models in safe mode, and copying them: the one way each is done."""

import zipfile

from tfcompress.errors import TfcError

def load_keras(path: str):
    """A .keras or .h5 model loaded by Keras 3 in safe mode, uncompiled.

    Raises:
      TfcError: not a .keras archive, Python code that safe mode will not
        run (a Lambda layer), or a corrupt or unsupported file.
    """
    import keras  # pylint: disable=import-outside-toplevel
    from tfcompress.keras.registry import custom_objects  # pylint: disable=import-outside-toplevel
    if path.lower().endswith(".keras") and not zipfile.is_zipfile(path):
        raise TfcError(f"cannot load Keras model {path}: not a .keras archive (corrupt or truncated)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True, custom_objects=custom_objects())
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
    import json  # pylint: disable=import-outside-toplevel
    import h5py  # pylint: disable=import-outside-toplevel
    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if config is None:
        return []
    names = []

    def walk(obj):
        if isinstance(obj, dict):
            if "class_name" in obj and "config" in obj:
                names.append(obj["class_name"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(json.loads(config.decode() if isinstance(config, bytes) else config))
    return names
