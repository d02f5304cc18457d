"""The one registry of tfcompress's serializable Keras objects.

Each custom layer, schedule or loss is declared with `@register("Name")`,
which registers it with Keras under the package "tfcompress" (so a saved model
names it "tfcompress>Name") and records it here.  `custom_objects()` imports
every module that declares such objects and returns them, and every loader
passes that mapping to Keras: a model that uses any of them loads, in safe
mode, in a fresh process.  A test checks that every object Keras knows under
the package is declared through this registry.
"""

import importlib
from typing import Callable, Dict

PACKAGE = "tfcompress"

# The modules that declare registered objects; importing them fills `_OBJECTS`.
MODULES = (
    "tfcompress.binary.layers",
    "tfcompress.qat.layers",
    "tfcompress.prune.magnitude",
    "tfcompress.keras.train",
)

_OBJECTS: Dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: registers `cls` with Keras as "tfcompress>name" and records it here."""
    def wrap(cls: type) -> type:
        import keras  # pylint: disable=import-outside-toplevel
        cls = keras.saving.register_keras_serializable(package=PACKAGE, name=name)(cls)
        _OBJECTS[name] = cls
        return cls
    return wrap


def registered_name(name: str) -> str:
    """The name Keras stores for a registered object ("tfcompress>name")."""
    return f"{PACKAGE}>{name}"


def custom_objects() -> Dict[str, type]:
    """Every registered object by its stored name, after importing every declaring module."""
    for module in MODULES:
        importlib.import_module(module)
    return {registered_name(name): cls for name, cls in sorted(_OBJECTS.items())}
