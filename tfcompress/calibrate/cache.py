"""The calibration cache: a JSON file at a path the user names.

Schema (version 2):

    {
      "format": "tfcompress.calibration",
      "version": 2,
      "fingerprint": {
        "model": "<sha256 of the optimized float GraphDef and signature>",
        "preprocessing": {"height":…, "width":…, "channels":…, "mean":…, "std":…, "resize":…}
                       | {"calibration_data": {"inputs": {…}, "sha256": "<the arrays>"}},
        "collector": {"histogram": "pow2-aligned", "max_bins": 2048}
      },
      "images": {"count": N, "sha256": "<names + contents>"},
      "calibrator": {"method": "minmax"} | {"method": "percentile", "percentile": 99.99},
      "tensors": {
        "<tensor name>": {"min":…, "max":…, "count":…,
                          "histogram": {"bin_width":…, "first_bin":…, "counts": […]},
                          "channel_sum": [per-channel sums over the last axis],
                          "range": [lo, hi]}
      }
    }

A cache made from a shard of the data (`calibrate --shard`) merges with the
other shards' (`merge`) into the cache of the whole: the same histograms and
ranges bit for bit, the per-channel sums to float64 rounding (see `stats`).
The merged `images.sha256` (and, for tensor data, the data's sha256) is a
digest of the shards' digests, not of the data itself.

`fingerprint` decides validity: a different model, preprocessing or collector
makes the cache stale; for tensor calibration data (`data.tensors`), the
data's digest stands in for the preprocessing.  `range` is what `calibrator` derived; another
calibrator (or percentile) is re-derived from `histogram` with no image read.
Tensor names are those of the optimized float graph; exporters that see other
names (TFLite) map them through the graph's layer names.
"""

import dataclasses
import hashlib
import json
import os
from typing import Dict, Optional, Sequence, Tuple

from tfcompress.calibrate.calibrators import CalibratorConfig, compute_ranges
from tfcompress.calibrate.stats import MAX_BINS, TensorStats
from tfcompress.errors import TfcError
from tfcompress.io.atomic import write_bytes

FORMAT = "tfcompress.calibration"
VERSION = 2
COLLECTOR = {"histogram": "pow2-aligned", "max_bins": MAX_BINS}


@dataclasses.dataclass
class CalibrationCache:
    """In-memory form of the cache file."""
    model_fingerprint: str
    preprocessing: dict
    stats: Dict[str, TensorStats]
    calibrator: CalibratorConfig
    image_count: int = 0
    image_sha256: str = ""
    # Tensors kept at their full observed range (see compute_ranges); derived
    # from the model, which the fingerprint pins, so it is not stored.
    full_range: frozenset = frozenset()

    def ranges(self, calibrator: Optional[CalibratorConfig] = None) -> Dict[str, Tuple[float, float]]:
        return compute_ranges(self.stats, calibrator or self.calibrator, self.full_range)

    def to_json(self) -> str:
        ranges = self.ranges()
        tensors = {}
        for name in sorted(self.stats):
            entry = self.stats[name].to_json()
            entry["range"] = list(ranges[name])
            tensors[name] = entry
        doc = {
            "format": FORMAT, "version": VERSION,
            "fingerprint": {"model": self.model_fingerprint, "preprocessing": self.preprocessing,
                            "collector": COLLECTOR},
            "images": {"count": self.image_count, "sha256": self.image_sha256},
            "calibrator": self.calibrator.as_dict(),
            "tensors": tensors,
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def save(cache: CalibrationCache, path: str) -> None:
    """Writes the cache atomically to `path`, replacing only an earlier tfcompress cache.

    Raises:
      TfcError: `path` holds something other than a calibration cache (a model,
        an image, any file of the user's), or cannot be written.
    """
    if os.path.lexists(path) and not is_cache_file(path):
        raise TfcError(f"--calibration_cache {path} exists and is not a tfcompress calibration cache; "
                       "refusing to overwrite it (name a new .json file)")
    write_bytes(path, cache.to_json().encode(), overwrite=True)


def is_cache_file(path: str) -> bool:
    """Whether `path` is a regular file holding a JSON document of this cache format (any version)."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    try:
        with open(path, "rb") as f:
            if f.read(64).lstrip()[:1] != b"{":
                return False
            f.seek(0)
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


# A cache holds at most MAX_BINS counts per tensor: even a very large graph's cache is far below this.
MAX_CACHE_BYTES = 256 << 20


def load(path: str) -> CalibrationCache:
    """Reads and validates a cache file (see `TensorStats.from_json` for what each tensor must satisfy).

    Raises:
      TfcError: unreadable, too large, not a cache, of another version or collector (stale), or any
        field that fails validation (naming the tensor).
    """
    try:
        if os.path.getsize(path) > MAX_CACHE_BYTES:
            raise TfcError(f"calibration cache {path} is larger than {MAX_CACHE_BYTES >> 20} MiB; not a cache")
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a tfcompress calibration cache")
        if doc.get("version") != VERSION:
            raise TfcError(f"calibration cache {path} is stale: format version {doc.get('version')}, this "
                           f"tfcompress writes version {VERSION}; pass --recalibrate")
        fp, cal, tensors, images = doc["fingerprint"], doc["calibrator"], doc["tensors"], doc["images"]
        if not all(isinstance(v, dict) for v in (fp, cal, tensors, images)):
            raise ValueError("fingerprint, calibrator, tensors and images must be mappings")
        if fp.get("collector") != COLLECTOR:
            raise TfcError(f"calibration cache {path} is stale: collected with {fp.get('collector')}; "
                           "pass --recalibrate")
        if not isinstance(fp.get("model"), str) or not isinstance(fp.get("preprocessing"), dict):
            raise ValueError("fingerprint: model and preprocessing")
        stats = {}
        for name, entry in tensors.items():
            try:
                stats[name] = TensorStats.from_json(entry)
            except (ValueError, TypeError, KeyError, OverflowError) as e:
                raise TfcError(f"calibration cache {path}: tensor {name}: {e}; pass --recalibrate") from e
        count, digest = images.get("count"), images.get("sha256")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0 or not isinstance(digest, str):
            raise ValueError("images: count and sha256")
        return CalibrationCache(model_fingerprint=fp["model"], preprocessing=fp["preprocessing"], stats=stats,
                                calibrator=CalibratorConfig(**cal), image_count=count, image_sha256=digest)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError,
            OverflowError, RecursionError) as e:
        raise TfcError(f"calibration cache {path} is unreadable or corrupt ({type(e).__name__})") from e


def check_complete(cache: CalibrationCache, path: str, tensors) -> None:
    """Raises TfcError if the cache lacks statistics for a tensor the graph needs."""
    missing = sorted(set(tensors) - set(cache.stats))
    if missing:
        raise TfcError(f"calibration cache {path} has no statistics for {len(missing)} tensor(s) of this graph "
                       f"(first: {missing[0]}); pass --recalibrate")


def check_fresh(cache: CalibrationCache, path: str, model_fingerprint: str, preprocessing: Optional[dict]) -> None:
    """Raises TfcError naming what changed if the cache does not match this model and what it was made from.

    `preprocessing` is the image preprocessing, or the tensor data's fingerprint (`BoundData.fingerprint`),
    or None when no data is at hand: a cache made from tensor data then stands for its model.
    """
    if cache.model_fingerprint != model_fingerprint:
        raise TfcError(f"calibration cache {path} is stale: it was made for a different model (or graph: "
                       "with and without --equalize, on by default, differ); pass --recalibrate to overwrite it")
    from_data = "calibration_data" in cache.preprocessing
    if preprocessing is None:
        if not from_data:
            raise TfcError(f"calibration cache {path} was made from images; give --calibration_images")
        return
    if from_data != ("calibration_data" in preprocessing):
        made = "tensor data" if from_data else "images"
        raise TfcError(f"calibration cache {path} is stale: it was made from {made}; pass --recalibrate to "
                       "overwrite it")
    if from_data:
        if cache.preprocessing != preprocessing:
            raise TfcError(f"calibration cache {path} is stale: it was made from other calibration data; "
                           "pass --recalibrate to overwrite it")
        return
    if cache.preprocessing != preprocessing:
        changed = sorted(k for k in set(cache.preprocessing) | set(preprocessing)
                         if cache.preprocessing.get(k) != preprocessing.get(k))
        raise TfcError(f"calibration cache {path} is stale: preprocessing differs ({', '.join(changed)}); "
                       "pass --recalibrate to overwrite it")


def merge(caches: Sequence[Tuple[str, CalibrationCache]]) -> CalibrationCache:
    """The cache of the union of the shards the `caches` ((path, cache) pairs) were made from.

    The statistics merge exactly (`TensorStats.merge`), in any order.  The calibrator is the first cache's.

    Raises:
      TfcError: fewer than two caches; caches of different models, preprocessing, input layouts or tensor
        sets; two caches of the same images.
    """
    if len(caches) < 2:
        raise TfcError("--merge needs at least two calibration caches")
    (first_path, first), rest = caches[0], caches[1:]
    seen = {first.image_sha256: first_path}
    for path, cache in rest:
        if cache.model_fingerprint != first.model_fingerprint:
            raise TfcError(f"calibration caches {first_path} and {path} were made for different models; "
                           "only shards of one model's calibration merge")
        if _layout(cache.preprocessing) != _layout(first.preprocessing):
            raise TfcError(f"calibration caches {first_path} and {path} were made with different preprocessing "
                           "or input layouts")
        if set(cache.stats) != set(first.stats):
            name = sorted(set(cache.stats) ^ set(first.stats))[0]
            raise TfcError(f"calibration caches {first_path} and {path} hold different tensors (first: {name})")
        if cache.image_sha256 in seen:
            raise TfcError(f"calibration caches {seen[cache.image_sha256]} and {path} were made from the same "
                           "images; merge each shard once")
        seen[cache.image_sha256] = path
    stats = {}
    for name in first.stats:
        merged = TensorStats()
        for path, cache in caches:
            try:
                merged.merge(cache.stats[name])
            except TfcError as e:
                raise TfcError(f"calibration cache {path}: tensor {name}: {e}") from e
        stats[name] = merged
    digest = _digest_of(sorted(cache.image_sha256 for _, cache in caches))
    preprocessing = first.preprocessing
    if "calibration_data" in preprocessing:
        try:
            inputs = {name: dict(spec, shape=[sum(int(c.preprocessing["calibration_data"]["inputs"][name]["shape"][0])
                                                  for _, c in caches)] + list(spec["shape"][1:]))
                      for name, spec in preprocessing["calibration_data"]["inputs"].items()}
            shas = sorted(str(c.preprocessing["calibration_data"]["sha256"]) for _, c in caches)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
            raise TfcError(f"the calibration caches to merge hold a malformed calibration_data fingerprint "
                           f"({type(e).__name__}); recalibrate the shards") from e
        preprocessing = {"calibration_data": {"inputs": inputs, "sha256": _digest_of(shas)}}
    return CalibrationCache(model_fingerprint=first.model_fingerprint, preprocessing=preprocessing, stats=stats,
                            calibrator=first.calibrator, image_count=sum(c.image_count for _, c in caches),
                            image_sha256=digest, full_range=first.full_range)


def _layout(preprocessing: dict) -> dict:
    """What shards of one calibration share: the image preprocessing, or the tensor data's inputs without
    their sample counts and digest."""
    if "calibration_data" not in preprocessing:
        return preprocessing
    data = preprocessing["calibration_data"]
    inputs = data.get("inputs") if isinstance(data, dict) else None
    if not isinstance(inputs, dict) or not all(isinstance(spec, dict) and isinstance(spec.get("shape"), list)
                                               for spec in inputs.values()):
        return {"malformed": repr(preprocessing)}
    return {name: (spec.get("dtype"), spec["shape"][1:]) for name, spec in inputs.items()}


def _digest_of(digests: Sequence[str]) -> str:
    h = hashlib.sha256(b"tfcompress merged shards\0")
    for d in digests:
        h.update(d.encode() + b"\0")
    return h.hexdigest()


def exists(path: Optional[str]) -> bool:
    return bool(path) and os.path.exists(path)
