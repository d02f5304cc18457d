"""Calibrators: turn a tensor's statistics into a quantization range.

Registry keyed by name; each calibrator sees only `TensorStats`, so any of them
can be re-derived from a cache without reading images again.  Every range
contains zero (so zero is exactly representable, as the quantized kernels and
padding require).
"""

import collections.abc
import dataclasses
import math
from typing import AbstractSet, Callable, Dict, Iterator, Mapping, Tuple

import numpy as np

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


def on_grid(values, lo, hi, levels: int = 255):
    """`values` quantized and dequantized on `levels` equal steps from lo to hi (values outside clipped to
    the ends); lo and hi may be arrays that broadcast against `values`."""
    step = (hi - lo) / levels
    return lo + np.round((np.clip(values, lo, hi) - lo) / step) * step


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


# Candidate clipping thresholds evaluated per tensor by kl and mse (evenly spaced bin edges).
_MAX_CANDIDATES = 512


def _magnitude_histogram(stats: TensorStats) -> Tuple[np.ndarray, float]:
    """(counts of |x| per bin, bin width).  Exact: the bins are aligned at zero, so bin -k-1 folds onto bin k."""
    idx = np.arange(stats.counts.size) + stats.first_bin
    folded = np.where(idx >= 0, idx, -idx - 1)
    hist = np.zeros(int(folded.max()) + 1 if folded.size else 0, np.float64)
    np.add.at(hist, folded, stats.counts)
    return hist, stats.bin_width


def _levels(stats: TensorStats) -> int:
    """Quantization levels on the magnitude axis: 256 for a non-negative tensor, 128 per side otherwise."""
    return 256 if stats.min >= 0 else 128


def _candidates(n_bins: int, first: int) -> np.ndarray:
    """Bin counts (threshold = count * width) to try, from `first` to n_bins."""
    first = min(max(first, 1), n_bins)
    return np.unique(np.linspace(first, n_bins, min(_MAX_CANDIDATES, n_bins - first + 1)).round().astype(int))


def _clip_to(stats: TensorStats, threshold: float) -> Tuple[float, float]:
    return _with_zero(max(stats.min, -threshold), min(stats.max, threshold))


def _kl_divergence(hist: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q) for clipping the magnitude histogram after i bins and quantizing it to `levels` levels."""
    p = hist[:i].copy()
    p[-1] += hist[i:].sum()  # Clipped values land in the last kept bin.
    kept = hist[:i]
    level_of_bin = np.arange(i) * levels // i
    nonzero = kept > 0
    level_mass = np.bincount(level_of_bin, weights=kept, minlength=levels)
    level_nonzero = np.bincount(level_of_bin, weights=nonzero, minlength=levels)
    spread = np.divide(level_mass, level_nonzero, out=np.zeros(levels), where=level_nonzero > 0)
    q = np.where(nonzero, spread[level_of_bin], 0.0)
    p_sum, q_sum = p.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return float("inf")
    p, q = p / p_sum, q / q_sum
    mask = p > 0
    # A bin that P fills and Q leaves empty (only the last one can be: it took the clipped mass)
    # gets a small floor rather than an infinite divergence.
    q = np.maximum(q, 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def kl(stats: TensorStats, config: CalibratorConfig) -> Tuple[float, float]:
    """Entropy calibration: the clipping threshold whose quantized distribution is closest in KL divergence.

    The magnitude histogram, without its zero bin, is clipped at each
    candidate threshold (the clipped mass is added to the last bin:
    distribution P), requantized to the int8 levels and expanded back
    uniformly over P's non-empty bins (Q); the threshold with the smallest
    KL(P || Q) wins.

    References:
      Migacz, "8-bit Inference with TensorRT", GTC 2017 (entropy calibration).
    """
    hist, width = _magnitude_histogram(stats)
    levels = _levels(stats)
    if hist.size <= levels:
        return minmax(stats, config)  # The histogram is already no finer than the int8 grid.
    # Values within one bin of zero (all of a ReLU's zeros) are exact at any threshold.  Left in,
    # that spike is what every coarser requantization smears, so the smallest threshold would win.
    hist = hist.copy()
    hist[0] = 0.0
    best = min(_candidates(hist.size, levels), key=lambda i: (_kl_divergence(hist, i, levels), i))
    return _clip_to(stats, best * width)


def mse(stats: TensorStats, config: CalibratorConfig) -> Tuple[float, float]:
    """The clipping threshold that minimizes the squared error of 8-bit quantize-dequantize.

    For each candidate threshold T the range is [max(min, -T), min(max, T)]
    on 256 levels; every histogram bin centre is clipped, rounded to the grid
    and its squared error weighted by the bin's count.

    References:
      Banner et al., "Post training 4-bit quantization of convolutional
      networks for rapid-deployment", arXiv:1810.05723 (MSE-optimal clipping).
    """
    if stats.counts.size <= 1:
        return minmax(stats, config)
    centres = (np.arange(stats.counts.size) + stats.first_bin + 0.5) * stats.bin_width
    counts = stats.counts.astype(np.float64)
    magnitude = max(abs(stats.min), abs(stats.max))
    n = int(np.ceil(magnitude / stats.bin_width))

    def error(i: int) -> float:
        lo, hi = _clip_to(stats, i * stats.bin_width)
        return float(np.sum(counts * (centres - on_grid(centres, lo, hi)) ** 2))

    best = min(_candidates(n, 1), key=lambda i: (error(i), i))
    return _clip_to(stats, best * stats.bin_width)


CALIBRATORS: Dict[str, Callable[[TensorStats, CalibratorConfig], Tuple[float, float]]] = {
    "minmax": minmax,
    "percentile": percentile,
    "kl": kl,
    "mse": mse,
}


class TensorRanges(collections.abc.Mapping):
    """Calibrated (min, max) per tensor name, validated when made and read-only after.

    Raises (at construction):
      TfcError: a range with NaN or Inf, or with min > max.
    """

    def __init__(self, ranges: Mapping[str, Tuple[float, float]]):
        checked = {}
        for name, pair in ranges.items():
            lo, hi = (float(v) for v in pair)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise TfcError(f"calibration range of {name} is NaN or Inf")
            if lo > hi:
                raise TfcError(f"calibration range of {name} has min {lo:g} > max {hi:g}")
            checked[name] = (lo, hi)
        self._ranges = checked

    def __getitem__(self, name: str) -> Tuple[float, float]:
        return self._ranges[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    def __repr__(self) -> str:
        return f"TensorRanges({len(self)} tensors)"


def compute_ranges(stats: Dict[str, TensorStats], config: CalibratorConfig,
                   full_range: AbstractSet[str] = frozenset()) -> TensorRanges:
    """Range per tensor name.

    Args:
      full_range: tensors that always get their full observed range (minmax),
        whatever the calibrator: the model's input, which preprocessing
        already bounds, and the outputs with the tensors that feed them through
        pass-through ops (the logits before a softmax), where clipping would
        flatten exactly the values that decide the prediction.
    """
    fn = CALIBRATORS[config.method]
    return TensorRanges({name: (minmax if name in full_range else fn)(s, config)
                         for name, s in sorted(stats.items())})
