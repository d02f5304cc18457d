"""Calibration as one step: reuse a valid cache, or read images and write one."""

import dataclasses
import os
from typing import Optional, Tuple

from tfcompress.calibrate import cache as cache_lib
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.calibrate.collect import calibration_tensors, collect_stats, full_range_tensors
from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source, shard as source_shard
from tfcompress.data.tensors import BoundData
from tfcompress.errors import TfcError
from tfcompress.io.frozen import FrozenModel


@dataclasses.dataclass
class CalibrationResult:
    cache: cache_lib.CalibrationCache
    reused: bool          # True when no image was read.
    images_read: int


def calibrate(model: FrozenModel, *, prep: Optional[Preprocessing], calibrator: CalibratorConfig,
              images=None, data: Optional[BoundData] = None, cache_path: Optional[str] = None,
              recalibrate: bool = False, batch_size: Optional[int] = None, shard: Optional[Tuple[int, int]] = None,
              progress: bool = True) -> CalibrationResult:
    """Returns calibration statistics for the (optimized, float) `model`.

    A cache at `cache_path` that matches the model and preprocessing is reused
    without reading any image; a stale one is an error unless `recalibrate`.
    Otherwise `images` (or tensor `data`) are read and the cache (if a path is
    given) is written atomically.  A cache read from disk is not changed: the
    result holds a copy set to `calibrator`.

    Tensor data takes the place of images and of their preprocessing: the
    cache records the data's digest, so other data makes it stale.  Without
    data, a cache made from tensor data is reused for its model.

    Args:
      model: the optimized float model.
      prep: how pixels become input; part of the cache's fingerprint (None with tensor data).
      calibrator: how ranges are derived from the statistics.
      images: anything `data.source.as_source` takes; not read when the cache is reused.
      data: tensor data bound to the model (`data.tensors.BoundData`), instead of images.
      cache_path: the cache file to reuse or write (None: no cache).
      recalibrate: ignore an existing cache and replace it.
      batch_size: images (samples) per graph run (None: sized to the model, see `collect.auto_batch_size`).
      shard: (index, count): read only every count-th image (sample) from the index-th, for one worker of
        a sharded calibration; `cache.merge` joins the shards' caches into the whole's.
      progress: show a progress bar.

    Raises:
      TfcError: stale or corrupt cache, missing/empty image folder, bad images.
    """
    fingerprint = model.fingerprint()
    if shard is not None and data is not None:
        data = data.shard(*shard)
    made_from = data.fingerprint() if data is not None else prep.as_dict() if prep is not None else None
    if cache_lib.exists(cache_path) and not recalibrate:
        cached = cache_lib.load(cache_path)
        cache_lib.check_fresh(cached, cache_path, fingerprint, made_from)
        cache_lib.check_complete(cached, cache_path, calibration_tensors(model))
        cached = dataclasses.replace(cached, calibrator=calibrator, full_range=full_range_tensors(model))
        return CalibrationResult(cache=cached, reused=True, images_read=0)
    if data is None and (images is None or (isinstance(images, str) and not images)):
        what = "--calibration_images or --calibration_data" if prep is None else "--calibration_images"
        if cache_path:
            raise TfcError(f"calibration cache {cache_path} does not exist and no {what} given")
        raise TfcError(f"eightbit mode needs {what} (or an existing --calibration_cache)")
    if shard is not None and data is None:
        images = source_shard(as_source(images), *shard)
    if data is not None:
        count, digest = len(data), made_from["calibration_data"]["sha256"]
        stats = collect_stats(model, data=data, batch_size=batch_size, progress=progress)
    else:
        source = as_source(images)
        count, digest = len(source), source.fingerprint()
        stats = collect_stats(model, source, prep, batch_size=batch_size, progress=progress)
    result = cache_lib.CalibrationCache(model_fingerprint=fingerprint, preprocessing=made_from, stats=stats,
                                        calibrator=calibrator, image_count=count, image_sha256=digest,
                                        full_range=full_range_tensors(model))
    if cache_path:
        if os.path.isdir(cache_path):
            raise TfcError(f"--calibration_cache {cache_path} is a directory; name a .json file")
        cache_lib.save(result, cache_path)
    return CalibrationResult(cache=result, reused=False, images_read=count)
