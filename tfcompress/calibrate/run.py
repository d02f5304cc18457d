"""Calibration as one step: reuse a valid cache, or read images and write one."""

import dataclasses
import os
from typing import Optional

from tfcompress.calibrate import cache as cache_lib
from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.calibrate.collect import collect_stats, full_range_tensors
from tfcompress.data.images import Preprocessing, fingerprint_files, list_images
from tfcompress.errors import TfcError
from tfcompress.io.frozen import FrozenModel


@dataclasses.dataclass
class CalibrationResult:
    cache: cache_lib.CalibrationCache
    reused: bool          # True when no image was read.
    images_read: int


def calibrate(model: FrozenModel, *, prep: Preprocessing, calibrator: CalibratorConfig,
              images_dir: Optional[str] = None, cache_path: Optional[str] = None,
              recalibrate: bool = False, batch_size: int = 32, progress: bool = True) -> CalibrationResult:
    """Returns calibration statistics for the (optimized, float) `model`.

    A cache at `cache_path` that matches the model and preprocessing is reused
    without reading any image; a stale one is an error unless `recalibrate`.
    Otherwise images are read from `images_dir` and the cache (if a path is
    given) is written atomically.

    Raises:
      TfcError: stale or corrupt cache, missing/empty image folder, bad images.
    """
    fingerprint = model.fingerprint()
    if cache_lib.exists(cache_path) and not recalibrate:
        cached = cache_lib.load(cache_path)
        cache_lib.check_fresh(cached, cache_path, fingerprint, prep.as_dict())
        cached.calibrator = calibrator
        cached.full_range = full_range_tensors(model)
        return CalibrationResult(cache=cached, reused=True, images_read=0)
    if not images_dir:
        if cache_path:
            raise TfcError(f"calibration cache {cache_path} does not exist and no --calibration_images given")
        raise TfcError("eightbit mode needs --calibration_images (or an existing --calibration_cache)")
    paths = list_images(images_dir)
    stats = collect_stats(model, paths, prep, batch_size=batch_size, progress=progress)
    result = cache_lib.CalibrationCache(model_fingerprint=fingerprint, preprocessing=prep.as_dict(), stats=stats,
                                        calibrator=calibrator, image_count=len(paths),
                                        image_sha256=fingerprint_files(paths, images_dir),
                                        full_range=full_range_tensors(model))
    if cache_path:
        if os.path.isdir(cache_path):
            raise TfcError(f"--calibration_cache {cache_path} is a directory; name a .json file")
        cache_lib.save(result, cache_path)
    return CalibrationResult(cache=result, reused=False, images_read=len(paths))
