"""Entry point of the quantize step: float FrozenModel + ranges -> quantized FrozenModel."""

import dataclasses
from typing import Dict, List, Optional, Tuple

from tfcompress.calibrate.calibrators import TensorRanges
from tfcompress.errors import TfcError
from tfcompress.graph.graph import Graph, tensor_name
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
    if kernels == "tf1":
        return reference.TF1_QUANTIZERS, reference.FALLBACK
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
    if config.mode in ("weights", "weights_rounded"):
        change = quantize_weights if config.mode == "weights" else round_weights
        n = change(graph, bitdepth=config.bitdepth, min_weight_size=config.min_weight_size)
        report.quantized = {f"{n} constants": "Dequantize" if config.mode == "weights" else "rounded"}
        if n == 0:
            report.notes.append(f"--mode={config.mode} changed nothing: every float constant has fewer than "
                                f"--min_weight_size={config.min_weight_size} elements")
        return model.replace_graph(graph.to_graph_def()), report
    if ranges is None and config.fallback_range is None:
        raise TfcError("eightbit mode needs calibration ranges (or --quantized_fallback_min/max)")
    ranges = dict(ranges or {})
    ranges.update(fake_quant_ranges(graph))
    ranges = TensorRanges(ranges)  # NaN, Inf and min > max are refused here, whatever made them.
    quantizers, fallback = _kernel_set(config.kernels)
    quantized_inputs = {}
    if config.quantized_input is not None:
        quantized_inputs = {s.tensor: config.quantized_input for s in model.inputs if s.dtype == "float32"}
        if not quantized_inputs:
            raise TfcError("--quantized_input: the model has no float32 input")
    graph_def, report = build_eightbit(graph, ranges, quantizers, fallback, quantized_inputs=quantized_inputs,
                                      fallback_range=config.fallback_range,
                                      one_step=config.kernels == "reference")
    report.alone = quantized_alone(graph_def)
    out = model.replace_graph(graph_def)
    if quantized_inputs:
        out.inputs = [dataclasses.replace(s, dtype="quint8") if s.tensor in quantized_inputs else s
                      for s in model.inputs]
    check_finite_weights(out.graph_def)
    return out, report


FAKE_QUANT_OPS = ("FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxArgs")


def fake_quant_ranges(graph: Graph) -> Dict[str, Tuple[float, float]]:
    """The ranges FakeQuant ops fix: each one's (min, max) is the range of the tensor it follows and of
    its own output, taking the place of calibration there, as TF1's quantize_graph read them.

    FakeQuantWithMinMaxVars must take constant min and max (a frozen graph's are); per-channel FakeQuant
    ops give no tensor range and are left to calibration.
    """
    ranges = {}
    for node in graph.nodes.values():
        if node.op not in FAKE_QUANT_OPS:
            continue
        ins = [i for i in node.input if not i.startswith("^")]
        if node.op == "FakeQuantWithMinMaxArgs":
            lo, hi = node.attr["min"].f, node.attr["max"].f
        else:
            lo, hi = graph.const_value(ins[1]), graph.const_value(ins[2])
            if lo is None or hi is None or lo.size != 1 or hi.size != 1:
                continue
            lo, hi = float(lo.reshape(())), float(hi.reshape(()))
        for tensor in (tensor_name(ins[0]), node.name + ":0"):
            ranges[tensor] = (lo, hi)
    return ranges


def quantized_alone(graph_def) -> List[str]:
    """Float node names whose quantized op takes only QuantizeV2 outputs (or constants) and whose result
    (after its Requantize) goes only to Dequantize: a quantized island in float, where the conversions
    may cost more than the op saves."""
    nodes = {n.name: n for n in graph_def.node}
    consumers: Dict[str, List] = {}
    for n in graph_def.node:
        for inp in n.input:
            consumers.setdefault(inp.lstrip("^").split(":")[0], []).append(n)
    alone = []
    for n in graph_def.node:
        if not n.op.startswith("Quantized") or not n.name.endswith("/eightbit"):
            continue
        producers = [nodes.get(i.split(":")[0]) for i in n.input if not i.startswith("^")]
        entered = all(p is None or p.op in ("QuantizeV2", "Const") for p in producers)
        out = [c for c in consumers.get(n.name, [])]
        out = [d for c in out for d in (consumers.get(c.name, []) if c.op == "Requantize" else [c])]
        if entered and out and all(c.op == "Dequantize" for c in out):
            alone.append(n.name[:-len("/eightbit")])
    return alone
