"""Pruning: magnitude wrappers and schedules, filter thinning, block dropping, sensitivity."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.keras_jobs", "prune")
