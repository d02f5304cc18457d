"""Low-rank factorizations of dense and conv layers."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.keras_jobs", "lowrank")
