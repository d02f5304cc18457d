"""Entry point of the quantize step: float FrozenModel + ranges -> quantized FrozenModel."""

from typing import Dict, Optional, Tuple

from tfcompress.calibrate.calibrators import TensorRanges
from tfcompress.errors import TfcError
from tfcompress.graph.graph import Graph
from tfcompress.io.frozen import FrozenModel, check_finite_weights
from tfcompress.quantize import onednn, reference
from tfcompress.quantize.builder import QuantReport, build_eightbit
from tfcompress.quantize.config import QuantConfig
from tfcompress.quantize.weights import quantize_weights, round_weights


def _kernel_set(kernels: str):
    if kernels == "onednn":
        if not onednn.mkl_enabled():
            raise TfcError("--kernels=onednn needs TF's oneDNN kernels, which are off in this process: "
                           "set TF_ENABLE_ONEDNN_OPTS=1 before starting it")
        return onednn.QUANTIZERS, onednn.FALLBACK
    return reference.QUANTIZERS, reference.FALLBACK


def quantize_model(model: FrozenModel, config: QuantConfig,
                   ranges: Optional[Dict[str, Tuple[float, float]]] = None) -> Tuple[FrozenModel, QuantReport]:
    """Quantizes an optimized float model.

    Args:
      model: output of `graph.passes.optimize`.
      config: what to do.
      ranges: calibrated ranges per tensor (eightbit mode only).

    Returns:
      (quantized model with the same signature, report).

    Raises:
      TfcError: missing ranges, NaN/Inf ranges, or an unavailable kernel set.
    """
    graph = Graph(model.graph_def, outputs=[s.tensor for s in model.outputs])
    report = QuantReport()
    if config.mode == "weights":
        n = quantize_weights(graph, bitdepth=config.bitdepth, min_weight_size=config.min_weight_size)
        report.quantized = {f"{n} constants": "Dequantize"}
        return model.replace_graph(graph.to_graph_def()), report
    if config.mode == "weights_rounded":
        n = round_weights(graph, bitdepth=config.bitdepth, min_weight_size=config.min_weight_size)
        report.quantized = {f"{n} constants": "rounded"}
        return model.replace_graph(graph.to_graph_def()), report
    if ranges is None:
        raise TfcError("eightbit mode needs calibration ranges")
    ranges = TensorRanges(ranges)  # NaN, Inf and min > max are refused here, whatever made them.
    quantizers, fallback = _kernel_set(config.kernels)
    graph_def, report = build_eightbit(graph, ranges, quantizers, fallback)
    out = model.replace_graph(graph_def)
    check_finite_weights(out.graph_def)
    return out, report
