"""Calibrators: turn a tensor's statistics into a quantization range.

Registry keyed by name; each calibrator sees only `TensorStats`, so any of them
can be re-derived from a cache without reading images again.  Every range
contains zero (so zero is exactly representable, as the quantized kernels and
padding require).
"""

import dataclasses
from typing import Callable, Dict, Tuple

from tfcompress.calibrate.stats import TensorStats
from tfcompress.errors import TfcError


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibratorConfig:
    """Which calibrator, and its parameter.

    Attributes:
      method: a key of CALIBRATORS.
      percentile: for "percentile": the upper percentile kept (e.g. 99.99); the
        lower tail is cut symmetrically at 100 - percentile.
    """
    method: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self):
        if self.method not in CALIBRATORS:
            raise TfcError(f"unknown calibrator {self.method!r} (choose from {', '.join(sorted(CALIBRATORS))})")
        if self.method == "percentile" and not 50.0 < self.percentile <= 100.0:
            raise TfcError(f"--percentile must be in (50, 100], got {self.percentile}")

    def as_dict(self) -> dict:
        d = {"method": self.method}
        if self.method == "percentile":
            d["percentile"] = self.percentile
        return d


def _with_zero(lo: float, hi: float) -> Tuple[float, float]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-6:
        hi = lo + 1e-6
    return float(lo), float(hi)


def minmax(stats: TensorStats, config: CalibratorConfig) -> Tuple[float, float]:
    """The full observed range."""
    return _with_zero(stats.min, stats.max)


def percentile(stats: TensorStats, config: CalibratorConfig) -> Tuple[float, float]:
    """Clips both tails at the given percentile of the histogram.

    References:
      McKinstry et al., "Discovering Low-Precision Networks Close to
      Full-Precision Networks for Efficient Embedded Inference",
      arXiv:1809.04191 (percentile clipping of activations).
    """
    q = config.percentile / 100.0
    lo = stats.quantile(1.0 - q) if stats.min < 0 else stats.min
    return _with_zero(lo, stats.quantile(q))


CALIBRATORS: Dict[str, Callable[[TensorStats, CalibratorConfig], Tuple[float, float]]] = {
    "minmax": minmax,
    "percentile": percentile,
}


def compute_ranges(stats: Dict[str, TensorStats], config: CalibratorConfig) -> Dict[str, Tuple[float, float]]:
    """Range per tensor name."""
    fn = CALIBRATORS[config.method]
    return {name: fn(s, config) for name, s in sorted(stats.items())}
