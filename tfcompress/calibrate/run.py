"""Calibration as one step: reuse a valid cache, or read images and write one."""

import dataclasses
import os
from typing import Optional

from tfcompress.calibrate import cache as cache_lib
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.calibrate.collect import calibration_tensors, collect_stats, full_range_tensors
from tfcompress.data.images import Preprocessing
from tfcompress.data.source import as_source
from tfcompress.errors import TfcError
from tfcompress.io.frozen import FrozenModel


@dataclasses.dataclass
class CalibrationResult:
    cache: cache_lib.CalibrationCache
    reused: bool          # True when no image was read.
    images_read: int


def calibrate(model: FrozenModel, *, prep: Preprocessing, calibrator: CalibratorConfig,
              images=None, cache_path: Optional[str] = None,
              recalibrate: bool = False, batch_size: int = 32, progress: bool = True) -> CalibrationResult:
    """Returns calibration statistics for the (optimized, float) `model`.

    A cache at `cache_path` that matches the model and preprocessing is reused
    without reading any image; a stale one is an error unless `recalibrate`.
    Otherwise `images` are read and the cache (if a path is given) is written
    atomically.  A cache read from disk is not changed: the result holds a
    copy set to `calibrator`.

    Args:
      model: the optimized float model.
      prep: how pixels become input; part of the cache's fingerprint.
      calibrator: how ranges are derived from the statistics.
      images: anything `data.source.as_source` takes; not read when the cache is reused.
      cache_path: the cache file to reuse or write (None: no cache).
      recalibrate: ignore an existing cache and replace it.
      batch_size: images per graph run.
      progress: show a progress bar.

    Raises:
      TfcError: stale or corrupt cache, missing/empty image folder, bad images.
    """
    fingerprint = model.fingerprint()
    if cache_lib.exists(cache_path) and not recalibrate:
        cached = cache_lib.load(cache_path)
        cache_lib.check_fresh(cached, cache_path, fingerprint, prep.as_dict())
        cache_lib.check_complete(cached, cache_path, calibration_tensors(model))
        cached = dataclasses.replace(cached, calibrator=calibrator, full_range=full_range_tensors(model))
        return CalibrationResult(cache=cached, reused=True, images_read=0)
    if images is None or (isinstance(images, str) and not images):
        if cache_path:
            raise TfcError(f"calibration cache {cache_path} does not exist and no --calibration_images given")
        raise TfcError("eightbit mode needs --calibration_images (or an existing --calibration_cache)")
    source = as_source(images)
    stats = collect_stats(model, source, prep, batch_size=batch_size, progress=progress)
    result = cache_lib.CalibrationCache(model_fingerprint=fingerprint, preprocessing=prep.as_dict(), stats=stats,
                                        calibrator=calibrator, image_count=len(source),
                                        image_sha256=source.fingerprint(),
                                        full_range=full_range_tensors(model))
    if cache_path:
        if os.path.isdir(cache_path):
            raise TfcError(f"--calibration_cache {cache_path} is a directory; name a .json file")
        cache_lib.save(result, cache_path)
    return CalibrationResult(cache=result, reused=False, images_read=len(source))
