"""Streaming per-tensor statistics: min, max, count and a mergeable histogram.

The histogram has fixed-count bins of width 2^k aligned at zero.  Each batch
asks for a width, the power of two at or below its largest magnitude /
MAX_BINS (`batch_width`); the histogram's width is the largest any batch asked
for, doubled while [min, max] of everything seen needs more than MAX_BINS bins.
Coarsening merges pairs of bins, which is exact, so the width and the counts
are a function of the set of values alone: not of the batch order, and not of
how the data was split.  Statistics of shards, `merge`d, equal those of the
whole (what `calibrate --merge` relies on): the histogram, min, max and count
bit for bit, so every calibrator's range is the same; the per-channel sums
(float64) to rounding, since they are added in another order.  Memory per tensor is
bounded by MAX_BINS however many images are seen.
"""

import dataclasses
import math
import numpy as np

MAX_BINS = 2048
# A mean (of a layer's output error, for bias correction) counts only beyond this many standard errors of
# the mean (about 95%, two-sided).
SIGNIFICANCE = 2.0


def resolved_mean(count, total, squares):
    """Per channel, the mean of values given their count, sum and sum of squares, where the sample resolves
    it (|mean| > SIGNIFICANCE standard errors of the mean); 0 elsewhere.

    That matters where a channel has few values (a dense layer sees one per image); a convolution's mean
    over every position of every image is resolved almost always.
    """
    count = np.asarray(count, np.float64)
    n = np.maximum(count, 1.0)
    mean = np.asarray(total, np.float64) / n
    var = np.maximum(np.asarray(squares, np.float64) / n - mean ** 2, 0.0)
    return np.where((count > 1) & (np.abs(mean) > SIGNIFICANCE * np.sqrt(var / n)), mean, 0.0)


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
        wanted = batch_width(lo, hi)
        if self.bin_width == 0.0:
            self.bin_width, self.first_bin = wanted, math.floor(lo / wanted)
        self._coarsen(wanted)
        self._fit(math.floor(self.min / self.bin_width), math.floor(self.max / self.bin_width))
        idx = np.floor(values / self.bin_width).astype(np.int64) - self.first_bin
        self.counts += np.bincount(idx, minlength=self.counts.size)[:self.counts.size]

    def add_batch(self, count: int, lo: float, hi: float, channel_sum: np.ndarray, first_bin: int,
                  bin_width: float, counts: np.ndarray) -> None:
        """Adds a batch summarized where it was computed (see `collect.StatsRunner`): its count, min, max,
        per-channel sums (empty for rank < 2) and its histogram at `bin_width`, a power of two no finer than
        this histogram's width or the batch's own `batch_width`, and no coarser than [min, max] needs.  The
        result is what `update` would give on the batch's values."""
        if count == 0:
            return
        if channel_sum.size:
            if self.channel_sum.size and self.channel_sum.size != channel_sum.size:
                from tfcompress.errors import TfcError
                raise TfcError(f"a calibration tensor changed its channel count ({self.channel_sum.size} -> "
                               f"{channel_sum.size}) between batches")
            self.channel_sum = channel_sum if self.channel_sum.size == 0 else self.channel_sum + channel_sum
        self.min, self.max, self.count = min(self.min, lo), max(self.max, hi), self.count + count
        if self.bin_width == 0.0:
            self.bin_width, self.first_bin, self.counts = bin_width, first_bin, np.asarray(counts, np.int64)
            return
        self._coarsen(bin_width)
        self._fit(math.floor(self.min / self.bin_width), math.floor(self.max / self.bin_width))
        factor = int(round(self.bin_width / bin_width))
        if factor < 1 or factor * bin_width != self.bin_width:
            raise AssertionError(f"batch bin width {bin_width} does not divide {self.bin_width}")
        idx = (np.arange(len(counts)) + first_bin) // factor - self.first_bin
        np.add.at(self.counts, idx, np.asarray(counts, np.int64))

    def merge(self, other: "TensorStats") -> None:
        """Adds another set of statistics of the same tensor (a shard of the data): exactly what `update`
        on both shards' values would give.

        Raises:
          TfcError: the two have different channel counts.
        """
        if other.count == 0:
            return
        shard = _coarsened(other, max(other.bin_width, self.bin_width))
        self.add_batch(shard.count, shard.min, shard.max, shard.channel_sum, shard.first_bin, shard.bin_width,
                       shard.counts)

    def _coarsen(self, width: float) -> None:
        """Doubles the bin width (merging pairs of bins) until it is at least `width`."""
        while self.bin_width < width:
            first = self.first_bin
            new_first = first // 2
            merged = np.zeros(max((first + self.counts.size - 1) // 2 - new_first + 1, 0), np.int64)
            np.add.at(merged, (np.arange(self.counts.size) + first) // 2 - new_first, self.counts)
            self.counts, self.first_bin, self.bin_width = merged, new_first, self.bin_width * 2

    def _fit(self, lo_bin: int, hi_bin: int) -> None:
        """Widens bins (doubling) until [lo_bin, hi_bin] fits in MAX_BINS, then extends."""
        while hi_bin - lo_bin + 1 > MAX_BINS:
            self._coarsen(self.bin_width * 2)
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
        """Statistics from their JSON form, validated: nothing a hand-edited or damaged file holds gets through.

        Raises:
          ValueError: a missing or mistyped field, a non-finite value, min > max, a bin width that is not
            a positive power of two, negative counts or counts that do not sum to `count`, a histogram
            longer than MAX_BINS or not covering [min, max], or a channel sum that is not finite.
        """
        required = {"min", "max", "count", "histogram", "channel_sum"}
        if not isinstance(d, dict) or not required <= set(d) <= required | {"range"}:
            raise ValueError("unexpected fields")
        h = d["histogram"]
        if not isinstance(h, dict) or set(h) != {"bin_width", "first_bin", "counts"}:
            raise ValueError("histogram: unexpected fields")
        count, first_bin, counts = _integer(d["count"], "count"), _integer(h["first_bin"], "first_bin"), h["counts"]
        if count < 0 or abs(first_bin) > 2 ** 60:
            raise ValueError("count or first_bin out of range")
        if not isinstance(counts, list) or len(counts) > MAX_BINS:
            raise ValueError(f"histogram: not a list of at most {MAX_BINS} counts")
        values = [_integer(c, "histogram count") for c in counts]
        if any(c < 0 for c in values) or sum(values) != count:
            raise ValueError("histogram counts are negative or do not sum to count")
        channel_sum = d["channel_sum"]
        if not isinstance(channel_sum, list) or len(channel_sum) > 1 << 20:
            raise ValueError("channel_sum: not a list")
        channel_sum = np.asarray([_real(v, "channel_sum") for v in channel_sum], dtype=np.float64)
        if not np.all(np.isfinite(channel_sum)):
            raise ValueError("channel_sum is not finite")
        if count == 0:
            return cls()
        lo, hi, width = _real(d["min"], "min"), _real(d["max"], "max"), _real(h["bin_width"], "bin_width")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"a NaN or Inf range (min {lo}, max {hi})")
        if lo > hi:
            raise ValueError(f"min {lo:g} > max {hi:g}")
        if not (math.isfinite(width) and width > 0 and math.frexp(width)[0] == 0.5):
            raise ValueError(f"bin_width {width} is not a positive power of two")
        if first_bin * width > lo or (first_bin + len(values)) * width < hi:
            raise ValueError("the histogram does not cover [min, max]")
        return cls(min=lo, max=hi, count=count, bin_width=width, first_bin=first_bin,
                   counts=np.asarray(values, dtype=np.int64), channel_sum=channel_sum)


def batch_width(lo: float, hi: float) -> float:
    """The bin width a batch with values in [lo, hi] asks for: the power of two at or below
    max(|lo|, |hi|) / MAX_BINS.  The largest magnitude of a set is the largest over any split of it, so the
    largest width asked for is the same however the data is batched or sharded.  (The span hi - lo needs
    no say: a width that fits [min, max] in MAX_BINS bins is already coarser than span / MAX_BINS.)"""
    span = max(abs(hi), abs(lo), 1e-30)
    return 2.0 ** math.floor(math.log2(span / MAX_BINS))


def _coarsened(stats: TensorStats, width: float) -> TensorStats:
    """A copy of `stats` with its histogram at a coarser power-of-two `width`."""
    copy = TensorStats(min=stats.min, max=stats.max, count=stats.count, bin_width=stats.bin_width,
                       first_bin=stats.first_bin, counts=stats.counts.copy(), channel_sum=stats.channel_sum.copy())
    copy._coarsen(width)  # pylint: disable=protected-access
    return copy


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} is not an integer")
    return value


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is not a number")
    return float(value)
