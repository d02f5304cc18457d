"""Weight sharing: k-means codebooks and product quantization."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.keras_jobs", "cluster")
