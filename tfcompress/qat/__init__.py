"""Quantization-aware training: fake-quantized layers and the QAT rewrite."""

from tfcompress.callable_package import make_callable

make_callable(__name__, "tfcompress.api.keras_jobs", "qat")
