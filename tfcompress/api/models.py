"""What the API accepts as a model: a path in any of the four formats, or an in-memory Keras model."""

import dataclasses
import os
from typing import Optional, Sequence

from tfcompress.errors import TfcError


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How a model file is read.

    Attributes:
      signature: SavedModel signature key.
      input_names, output_names: frozen .pb only: tensor or node names.
      allow_unsafe_ops: accept graphs with ops outside the allowlist of pure ops (file, exec, debug, dataset or unknown ops).
    """
    signature: str = "serving_default"
    input_names: Optional[Sequence[str]] = None
    output_names: Optional[Sequence[str]] = None
    allow_unsafe_ops: bool = False


def model_path(model) -> Optional[str]:
    """The file a model argument names, or None for an in-memory model."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else None


def describe(model) -> str:
    """How a model argument is named in reports."""
    path = model_path(model)
    if path is not None:
        return path
    return "<graph_def>" if _is_graph_def(model) else f"<keras model {getattr(model, 'name', '?')}>"


def load_frozen(model, options: LoadOptions = LoadOptions()):
    """A FrozenModel from a path (SavedModel, .keras, .h5, frozen .pb), a Keras model or a frozen GraphDef.

    A GraphDef is read as a frozen .pb file would be, with `options.input_names`/`output_names`.

    Raises:
      TfcError: a missing, corrupt or unsafe model, or an argument that is none of these.
    """
    from tfcompress.io.loaders import freeze_keras_model, frozen_graph, load_model  # pylint: disable=import-outside-toplevel
    path = model_path(model)
    if path is not None:
        return load_model(path, signature=options.signature, input_names=options.input_names,
                          output_names=options.output_names, allow_unsafe_ops=options.allow_unsafe_ops)
    if _is_graph_def(model):
        from tfcompress.io.frozen import check_dtypes, check_finite_weights  # pylint: disable=import-outside-toplevel
        frozen = frozen_graph(model, options.input_names, options.output_names,
                              allow_unsafe_ops=options.allow_unsafe_ops)
        check_dtypes(frozen)
        check_finite_weights(frozen.graph_def)
        return frozen
    if _is_keras_model(model):
        return freeze_keras_model(model, source=describe(model))
    raise TfcError(f"model must be a path, a keras.Model or a GraphDef, not {type(model).__name__}")


def load_frozen_released(model, options: LoadOptions = LoadOptions()):
    """`load_frozen`, then what loading freed (a whole Keras model, for a .keras file) is given back."""
    from tfcompress.io.memory import release_freed_memory  # pylint: disable=import-outside-toplevel
    frozen = load_frozen(model, options)
    release_freed_memory(frozen.graph_def.ByteSize() * 4)  # The model's weights, several times over.
    return frozen


def _is_graph_def(model) -> bool:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return isinstance(model, tf.compat.v1.GraphDef)


def load_keras_model(model):
    """(keras.Model, path or None): a .keras/.h5 path loaded in safe mode, or the Keras model itself.

    Raises:
      TfcError: not a Keras model file, neither a path nor a Keras model, or NaN/Inf weights.
    """
    from tfcompress.io.keras_models import check_finite_keras, load_keras  # pylint: disable=import-outside-toplevel
    from tfcompress.io.loaders import detect_format  # pylint: disable=import-outside-toplevel
    path = model_path(model)
    if path is not None:
        fmt = detect_format(path)
        if fmt not in ("keras", "h5"):
            raise TfcError(f"this command takes a Keras model (.keras, or .h5); {path} is {fmt}")
        loaded = load_keras(path)
        check_finite_keras(loaded, path)
        return loaded, path
    if _is_keras_model(model):
        check_finite_keras(model, describe(model))
        return model, None
    raise TfcError(f"model must be a .keras/.h5 path or a keras.Model, not {type(model).__name__}")


def _is_keras_model(model) -> bool:
    import keras  # pylint: disable=import-outside-toplevel
    return isinstance(model, keras.Model)
