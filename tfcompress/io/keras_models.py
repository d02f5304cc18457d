"""Keras model copies: the one way the Keras-side transforms duplicate a model."""


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
