"""Image statistics, calibrators and the range cache."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.graph_jobs", "calibrate")
