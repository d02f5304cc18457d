"""Typed quantization configuration."""

import dataclasses
import math
from typing import Optional, Tuple

from tfcompress.errors import TfcError

MODES = ("eightbit", "weights", "weights_rounded")
KERNELS = ("reference", "tf1", "onednn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """How to quantize a float graph.

    Attributes:
      mode: "eightbit" (quantized kernels, calibrated activations), "weights"
        (8-bit constants + Dequantize) or "weights_rounded" (float constants
        snapped to 2^bitdepth levels).
      bitdepth: levels for the weights modes (eightbit kernels are 8-bit).
      min_weight_size: constants with fewer elements stay float (weights modes).
      kernels: "reference" (TF's portable quantized kernels, which run in any
        TF process: one 8-bit step per conv or matmul, per-channel weights),
        "tf1" (the same kernels in TF1's quantize_graph chain: per-tensor
        weights, quint8 bias, activations and pools, two requantizations per
        conv) or "onednn" (fused oneDNN kernels: faster, need a TF whose
        oneDNN ops are on, i.e. `TF_ENABLE_ONEDNN_OPTS=1` on CPUs where TF
        does not enable them by default).
      quantized_input: eightbit: the (min, max) of the float inputs, which then
        arrive as quint8 codes, code = round((x - min) * 255 / (max - min)),
        instead of being quantized in the graph (TF1's --quantized_input).
      fallback_range: eightbit: the (min, max) of any tensor without a
        calibrated range (TF1's --quantized_fallback_min/max); with it, a
        graph can be quantized with no calibration at all.
    """
    mode: str = "eightbit"
    bitdepth: int = 8
    min_weight_size: int = 1024
    kernels: str = "reference"
    quantized_input: Optional[Tuple[float, float]] = None
    fallback_range: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise TfcError(f"unknown --mode {self.mode!r} (choose from {', '.join(MODES)})")
        if self.kernels not in KERNELS:
            raise TfcError(f"unknown --kernels {self.kernels!r} (choose from {', '.join(KERNELS)})")
        if self.mode == "eightbit" and self.bitdepth != 8:
            raise TfcError(f"--bitdepth={self.bitdepth}: eightbit kernels are 8-bit; "
                           "other depths apply to --mode=weights or weights_rounded")
        if self.mode == "weights" and not 2 <= self.bitdepth <= 8:
            raise TfcError(f"--bitdepth must be in [2, 8] for --mode=weights, got {self.bitdepth}")
        if self.mode == "weights_rounded" and not 1 <= self.bitdepth <= 16:
            raise TfcError(f"--bitdepth must be in [1, 16] for --mode=weights_rounded, got {self.bitdepth}")
        for flag, pair in (("--quantized_input_min/max", self.quantized_input),
                           ("--quantized_fallback_min/max", self.fallback_range)):
            if pair is None:
                continue
            if self.mode != "eightbit":
                raise TfcError(f"{flag} apply to --mode=eightbit only")
            lo, hi = pair
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise TfcError(f"{flag} must be finite with min < max, got {lo:g}, {hi:g}")
        if self.min_weight_size < 1:
            raise TfcError(f"--min_weight_size must be positive, got {self.min_weight_size}")
