"""Measuring artifacts: op census, sizes, agreement with the float model, reports."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.evaluate", "evaluate")
