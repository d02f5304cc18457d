"""tfcompress: TensorFlow/TFLite model compression.

Data flow: data (images) and io (load, freeze) -> graph (rewrite) -> calibrate
(ranges, cache) -> quantize (eightbit graph) or export (TFLite) -> evaluate;
on the Keras side, keras (graph, train) -> prune / cluster / lowrank / qat /
binary / distill.

The public API, one function per job (see README.md, "Python")::

    import tfcompress as tfc
    result = tfc.convert("net.keras", "net_int8.tflite", images="data/sample")
    pruned = tfc.prune("net.keras", method="thinet", ratio=0.5, train_images=pixels).model

Every function takes a model as a path or a keras.Model, images as a folder,
an (N, H, W, C) array of raw pixels or a tf.data.Dataset, and keyword options
with the command line's defaults; each returns a typed result.  Names are
loaded on first use, so `import tfcompress` does not start TensorFlow.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "calibrate": "tfcompress.api.graph_jobs",
    "merge_caches": "tfcompress.api.graph_jobs",
    "quantize_graph": "tfcompress.api.graph_jobs",
    "convert": "tfcompress.api.graph_jobs",
    "CalibrationOptions": "tfcompress.api.graph_jobs",
    "ModelCard": "tfcompress.api.graph_jobs",
    "prune": "tfcompress.api.keras_jobs",
    "cluster": "tfcompress.api.keras_jobs",
    "pq": "tfcompress.api.keras_jobs",
    "lowrank": "tfcompress.api.keras_jobs",
    "drop_blocks": "tfcompress.api.keras_jobs",
    "distill": "tfcompress.api.keras_jobs",
    "qat": "tfcompress.api.keras_jobs",
    "binarize": "tfcompress.api.keras_jobs",
    "cost": "tfcompress.api.keras_jobs",
    "TrainOptions": "tfcompress.api.keras_jobs",
    "evaluate": "tfcompress.api.evaluate",
    "RuntimeOptions": "tfcompress.api.evaluate",
    "compress": "tfcompress.api.compress",
    "LoadOptions": "tfcompress.api.models",
    "save_keras": "tfcompress.io.atomic",
    "TfcError": "tfcompress.errors",
}

__all__ = sorted(_API)


# Jobs named like a subpackage: the subpackage itself is callable and runs the job (see callable_package).
_PACKAGES = ("calibrate", "prune", "qat", "distill", "evaluate", "cluster", "lowrank")


def __getattr__(name):
    if name in _PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tfcompress' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
