"""Streaming per-tensor statistics: min, max, count and a mergeable histogram.

The histogram has fixed-count bins of width 2^k aligned at zero.  When new
values fall outside it, the width doubles and pairs of bins merge, which is
exact, so the result depends only on the data, not on the batch order.  Memory
per tensor is bounded by MAX_BINS however many images are seen.
"""

import dataclasses
import math
import numpy as np

MAX_BINS = 2048


@dataclasses.dataclass
class TensorStats:
    """Statistics of one float tensor over all calibration inputs.

    Attributes:
      min, max: extreme values seen.
      count: number of values.
      bin_width: histogram bin width (a power of two).
      first_bin: index of counts[0]; bin i covers [i*w, (i+1)*w).
      counts: int64 counts per bin.
      channel_sum: sum of the values per channel (last axis of a tensor
        of rank >= 2), for channel means (bias correction); empty otherwise.
    """
    min: float = math.inf
    max: float = -math.inf
    count: int = 0
    bin_width: float = 0.0
    first_bin: int = 0
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    channel_sum: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float64))

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        if values.ndim >= 2:  # [batch, ..., channels]; a [batch] vector has no channel axis.
            per_channel = values.reshape(-1, values.shape[-1]).sum(axis=0)
            if self.channel_sum.size and self.channel_sum.size != per_channel.size:
                from tfcompress.errors import TfcError
                raise TfcError(f"a calibration tensor changed its channel count ({self.channel_sum.size} -> "
                               f"{per_channel.size}) between batches")
            self.channel_sum = per_channel if self.channel_sum.size == 0 else self.channel_sum + per_channel
        values = values.reshape(-1)
        if not np.all(np.isfinite(values)):
            from tfcompress.errors import TfcError
            raise TfcError("a calibration activation is NaN or Inf; check the model and the images")
        lo, hi = float(values.min()), float(values.max())
        self.min, self.max, self.count = min(self.min, lo), max(self.max, hi), self.count + values.size
        if self.bin_width == 0.0:
            span = max(hi - lo, abs(hi), abs(lo), 1e-30)
            self.bin_width = 2.0 ** math.floor(math.log2(span / MAX_BINS))
            self.first_bin = math.floor(lo / self.bin_width)
        self._fit(math.floor(self.min / self.bin_width), math.floor(self.max / self.bin_width))
        idx = np.floor(values / self.bin_width).astype(np.int64) - self.first_bin
        self.counts += np.bincount(idx, minlength=self.counts.size)[:self.counts.size]

    def _fit(self, lo_bin: int, hi_bin: int) -> None:
        """Widens bins (doubling) until [lo_bin, hi_bin] fits in MAX_BINS, then extends."""
        while hi_bin - lo_bin + 1 > MAX_BINS:
            first = self.first_bin
            new_first = first // 2
            merged = np.zeros((first + self.counts.size - 1) // 2 - new_first + 1, np.int64)
            np.add.at(merged, (np.arange(self.counts.size) + first) // 2 - new_first, self.counts)
            self.counts, self.first_bin, self.bin_width = merged, new_first, self.bin_width * 2
            lo_bin, hi_bin = lo_bin // 2, hi_bin // 2
        start = min(lo_bin, self.first_bin) if self.counts.size else lo_bin
        end = max(hi_bin, self.first_bin + self.counts.size - 1) if self.counts.size else hi_bin
        if start != self.first_bin or end - start + 1 != self.counts.size:
            grown = np.zeros(end - start + 1, np.int64)
            grown[self.first_bin - start:self.first_bin - start + self.counts.size] = self.counts
            self.counts, self.first_bin = grown, start

    def quantile(self, q: float) -> float:
        """Value below which a fraction q of the values lie (linear within a bin, clipped to [min, max])."""
        cum = np.cumsum(self.counts)
        target = q * cum[-1]
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.counts.size - 1)
        before = cum[i - 1] if i > 0 else 0
        frac = (target - before) / self.counts[i] if self.counts[i] else 0.0
        value = (self.first_bin + i + frac) * self.bin_width
        return float(min(max(value, self.min), self.max))

    def channel_mean(self) -> np.ndarray:
        """Mean per channel (last axis) over every value seen."""
        if self.channel_sum.size == 0 or self.count == 0:
            return np.zeros(0)
        return self.channel_sum / (self.count // self.channel_sum.size)

    def to_json(self) -> dict:
        nz = np.nonzero(self.counts)[0]
        a, b = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        return {"min": self.min, "max": self.max, "count": int(self.count),
                "histogram": {"bin_width": self.bin_width, "first_bin": self.first_bin + a,
                              "counts": [int(c) for c in self.counts[a:b]]},
                "channel_sum": [float(v) for v in self.channel_sum]}

    @classmethod
    def from_json(cls, d: dict) -> "TensorStats":
        h = d["histogram"]
        return cls(min=float(d["min"]), max=float(d["max"]), count=int(d["count"]),
                   bin_width=float(h["bin_width"]), first_bin=int(h["first_bin"]),
                   counts=np.asarray(h["counts"], dtype=np.int64),
                   channel_sum=np.asarray(d["channel_sum"], dtype=np.float64))
