"""Choosing the calibrator for a TFLite model by what it does to the model's outputs.

Every candidate calibrator's ranges are derived from the same cached
statistics (no image is read for that), each candidate is quantized, and the
one whose outputs stay closest to float on the given images wins: highest
top-1 agreement first, then lowest mean squared output error.  No calibrator
is best everywhere: min/max keeps rare large activations exact but spends
the int8 grid on them, clipping calibrators do the opposite (see the
benchmark's digits_outliers rows), so the choice is made per model.
"""

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from tfcompress.calibrate.calibrators import CalibratorConfig
from tfcompress.export.litert import LiteRTRunner
from tfcompress.export.tflite import TfliteConfig, calibrated_flatbuffer, quantize_calibrated


@dataclasses.dataclass
class Candidate:
    calibrator: CalibratorConfig
    agreement: float
    output_mse: float
    flatbuffer: bytes


def candidates(percentile: float) -> List[CalibratorConfig]:
    return [CalibratorConfig(method="minmax"), CalibratorConfig(method="percentile", percentile=percentile),
            CalibratorConfig(method="kl"), CalibratorConfig(method="mse")]


def choose_calibrator(model, ranges_for, config: TfliteConfig, images: np.ndarray, reference: np.ndarray,
                      options: Sequence[CalibratorConfig],
                      finish: Optional[Callable[[bytes, bytes], bytes]] = None) -> Tuple[Candidate, List[Candidate]]:
    """Quantizes with each calibrator in `options`; returns (best, all candidates in order).

    Args:
      model: the optimized float model.
      ranges_for: CalibratorConfig -> ranges (from the calibration cache).
      config: the int8/uint8 conversion.
      images: float NHWC images to compare on; reference: the float outputs for them [N, K].
      finish: (quantized, calibrated float flatbuffer) -> the flatbuffer that will be written, so each
        candidate is judged as it would be delivered (after bias correction).
    """
    tried: List[Candidate] = []
    for calibrator in options:
        calibrated, _ = calibrated_flatbuffer(model, ranges_for(calibrator), config.per_channel)
        flatbuffer = quantize_calibrated(calibrated, config.quantize, config.per_channel)
        if finish is not None:
            flatbuffer = finish(flatbuffer, calibrated)
        out = LiteRTRunner(flatbuffer).predict(images).reshape(len(images), -1)
        tried.append(Candidate(calibrator=calibrator,
                               agreement=float(np.mean(np.argmax(out, 1) == np.argmax(reference, 1))),
                               output_mse=float(np.mean((out.astype(np.float64) - reference) ** 2)),
                               flatbuffer=flatbuffer))
    best = min(tried, key=lambda c: (-c.agreement, c.output_mse))
    return best, tried

