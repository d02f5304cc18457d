"""Ranges of per-image vector tensors, widened by a leave-one-image-out estimate of a new image's error.

A global pool's or a dense layer's output holds one value per channel per
image, so its min/max range is an extreme of N·C values where a conv's is of
N·H·W·C.  A new image overshoots such a range often: on the zoo's SE net, 50
calibration images give the second SE block's dense ReLU a range of 4.4 that
held-out images reach 8.6 in (2.5% of its values clipped), and doubling the
ranges of that block's two dense layers alone brings the int8 model's
held-out output MSE from 1.08x the stock converter's to 0.65x (four
calibration halves).  More images would settle the range; the user has the
ones they gave.

So for each such tensor the range is scaled by the factor (FACTORS) whose
leave-one-image-out error is least: every calibration image is quantized
(255 steps, 0.0 included, clipping and rounding) with the range the *other*
images give, scaled, and the squared errors are summed.  That sum estimates
the error the scaled range gives an image it was not calibrated on, the
cross-validation estimate of prediction error (Stone, "Cross-Validatory
Choice and Assessment of Statistical Predictions", JRSS B 36(2), 1974).  A
tensor whose images agree on their extremes keeps its range (factor 1: any
widening only coarsens the steps); one whose extremes come from single
images is widened by what a left-out image needs.
"""

from typing import Dict, Iterable, List, Tuple

import numpy as np

from tfcompress.calibrate.calibrators import on_grid
from tfcompress.io.frozen import FrozenModel

# The scale factors tried, 1 to 4 in eighths.
FACTORS = 1.0 + np.arange(25) / 8.0
LEVELS = 255
# Fewer images than this cannot leave one out and still show an extreme.
MIN_IMAGES = 8
# Ops that only move values: their output is quantized as their input is (a Flatten of a conv map is the
# map's values, not a vector of per-image features).
_MOVES = {"Reshape", "Squeeze", "ExpandDims", "Identity", "IdentityN", "Transpose"}


def vector_tensors(model: FrozenModel, names: Iterable[str]) -> List[str]:
    """Those of `names` (float graph tensors) that hold one value per channel per image: rank 2, or rank 4
    with a 1x1 spatial size (a pool kept as a map), by their static shapes.  The model inputs and the
    outputs of ops that only move values (_MOVES) are left out."""
    from tfcompress.graph.runner import imported_graph  # pylint: disable=import-outside-toplevel
    graph = imported_graph(model.graph_def)
    inputs = {s.tensor for s in model.inputs}
    found = []
    for name in names:
        if name in inputs:
            continue
        try:
            tensor = graph.get_tensor_by_name(name)
        except (KeyError, ValueError):
            continue
        if tensor.op.type in _MOVES:
            continue
        shape = tensor.shape
        if shape.rank == 2 or (shape.rank == 4 and shape[1] == 1 and shape[2] == 1):
            found.append(name)
    return found


def leave_one_out_errors(values: np.ndarray, factors: np.ndarray = FACTORS) -> np.ndarray:
    """Per factor, the summed squared quantization error of each image (row of `values`, [N, M]) under the
    range of the other images (their min and max, 0.0 included) scaled by the factor."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    highs, lows = values.max(axis=1), values.min(axis=1)
    # The others' extreme: the overall one, or the runner-up for the image that holds it.
    top = np.sort(highs)
    bottom = np.sort(lows)
    others_hi = np.where(highs == top[-1], top[-2], top[-1])
    others_lo = np.where(lows == bottom[0], bottom[1], bottom[0])
    others_hi, others_lo = np.maximum(others_hi, 0.0), np.minimum(others_lo, 0.0)
    errors = []
    for factor in factors:
        lo = (others_lo * factor)[:, None]
        hi = np.maximum(others_hi * factor, others_lo * factor + 1e-12)[:, None]  # An all-zero tensor: one step.
        errors.append(float(np.sum((on_grid(values, lo, hi, LEVELS) - values) ** 2)))
    return np.asarray(errors)


def widen(model: FrozenModel, ranges: Dict[str, Tuple[float, float]], batches: Iterable[np.ndarray]
          ) -> Tuple[Dict[str, Tuple[float, float]], Dict[str, float]]:
    """(ranges with every vector tensor's scaled by its least-error factor, {tensor: factor} of those
    widened).  `batches` are float NHWC calibration images for the model's image input: all of them, so
    the factor is chosen for a range of as many images as the calibrated one.

    Nothing changes with fewer than MIN_IMAGES images.
    """
    from tfcompress.graph.runner import GraphRunner  # pylint: disable=import-outside-toplevel
    names = vector_tensors(model, ranges)
    if not names:
        return dict(ranges), {}
    with GraphRunner(model.graph_def, [model.image_input().tensor], names, inner_fetches=True) as runner:
        parts = [[v.reshape(len(v), -1) for v in runner.run(batch)] for batch in batches]
    if sum(len(p[0]) for p in parts) < MIN_IMAGES:
        return dict(ranges), {}
    widened, factors = dict(ranges), {}
    for k, name in enumerate(names):
        factor = float(FACTORS[int(np.argmin(leave_one_out_errors(np.concatenate([p[k] for p in parts]))))])
        if factor > 1.0:
            lo, hi = ranges[name]
            widened[name] = (lo * factor, hi * factor)
            factors[name] = factor
    return widened, factors
