"""k-means weight sharing: every kernel becomes a small codebook plus one index per weight.

Each conv, depthwise conv, separable conv and dense kernel is clustered on
its own (1-D k-means over its values), every weight is replaced by its
centroid, and the codebook is then fine-tuned with the assignments fixed:
the gradient of a centroid is the sum of its members' gradients (the shared
trainer's `SharedWeights`).  Exact zeros are kept out of the clustering and
stay zero, so a magnitude-pruned model keeps its sparsity (Deep Compression
stores them as its sparse positions, not as a codeword).  Batch norm is
folded into the layer before it first (the output has no BatchNormalization
layers that could be folded), so the codebooks reach the .tflite intact.

Storage of a clustered kernel: ceil(log2(codewords)) bits per weight, counting
the zero as a codeword when the kernel has zeros, plus the codebook at 32
bits per centroid.  `tfcompress.export.tfc` stores it for real, with the
zeros as relative offsets and entropy-coded indices.

References:
  Han, Mao & Dally, "Deep Compression", arXiv:1510.00149 (Sec. 3: linear,
  density and random initialization; linear works best; centroid gradient
  is the sum over the cluster).
  Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding",
  SODA 2007 (D^2 seeding).
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress.keras.train import SharedWeights, read_shared
from tfcompress.errors import TfcError
from tfcompress.io.keras_models import copy_model

INITS = ("linear", "density", "kmeans++")
MAX_CLUSTERS = 256
# Variables that are clustered: the kernels of conv, depthwise, separable and dense layers.
KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """How to cluster.

    Attributes:
      clusters: centroids per kernel, 2..256.
      init: linear (evenly spaced between min and max), density (evenly
        spaced quantiles of the weights' distribution) or kmeans++.
      iterations: Lloyd iterations at most (stops early when assignments settle).
      layers: only these layers (empty: every layer with a kernel).
      exclude: layers left float.
      fold_batch_norm: fold each BatchNormalization into the conv or dense
        layer before it first, so that conversion (which folds it anyway)
        does not scale every output channel of a codebook differently.
      seed: seeds k-means++.
    """
    clusters: int = 16
    init: str = "linear"
    iterations: int = 50
    layers: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    fold_batch_norm: bool = True
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.clusters <= MAX_CLUSTERS:
            raise TfcError(f"--clusters must be between 2 and {MAX_CLUSTERS}, got {self.clusters}")
        if self.init not in INITS:
            raise TfcError(f"unknown --init {self.init!r} (choose from {', '.join(INITS)})")
        if self.iterations < 1:
            raise TfcError(f"--iterations must be >= 1, got {self.iterations}")


def initial_centroids(values: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """k starting centroids for 1-D k-means over `values` (sorted ascending)."""
    lo, hi = float(values.min()), float(values.max())
    if init == "linear":
        return np.linspace(lo, hi, k)
    if init == "density":
        # Evenly spaced on the y axis of the empirical CDF, mapped back to x.
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    centroids = [values[rng.integers(len(values))]]
    for _ in range(1, k):
        d2 = np.min((values[:, None] - np.asarray(centroids)[None, :]) ** 2, axis=1)
        total = d2.sum()
        if total <= 0:
            break
        centroids.append(values[rng.choice(len(values), p=d2 / total)])
    return np.sort(np.asarray(centroids, np.float64))


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (centroids sorted ascending) for each value."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values)


def kmeans_1d(values: np.ndarray, k: int, init: str = "linear", iterations: int = 50,
              seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(centroids ascending, assignment per value): Lloyd's k-means in one dimension.

    With k or fewer distinct values, the distinct values are the centroids.
    A cluster that empties is re-seeded at the worst-fitted value.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    distinct = np.unique(values)
    if len(distinct) <= k:
        return distinct, np.searchsorted(distinct, values)
    centroids = np.unique(initial_centroids(np.sort(values), k, init, np.random.default_rng(seed)))
    labels = assign(values, centroids)
    for _ in range(iterations):
        counts = np.bincount(labels, minlength=len(centroids))
        sums = np.bincount(labels, weights=values, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        # An empty cluster (linear init over a pruned layer's two tails leaves some in the gap) moves to
        # the value farthest from its centroid, splitting the worst-fitting cluster.
        for empty in np.flatnonzero(counts == 0):
            error = np.abs(values - centroids[assign(values, centroids)])
            centroids[empty] = values[int(np.argmax(error))]
        centroids = np.unique(centroids)
        new = assign(values, centroids)
        if len(new) == len(labels) and np.array_equal(new, labels) and not (counts == 0).any():
            break
        labels = new
    return centroids, assign(values, centroids)


@dataclasses.dataclass
class ClusteredKernel:
    """One clustered variable.

    Attributes:
      layer, variable: names; path: the variable's Keras path.
      centroids: the codebook (float32).
      groups: codeword per element (-1 for a kept zero), the variable's shape.
    """
    layer: str
    variable: str
    path: str
    centroids: np.ndarray
    groups: np.ndarray

    @property
    def size(self) -> int:
        return int(self.groups.size)

    @property
    def zeros(self) -> int:
        return int(np.sum(self.groups < 0))

    @property
    def codewords(self) -> int:
        """Distinct stored values: the centroids, plus the zero when the kernel has zeros."""
        return len(self.centroids) + (1 if self.zeros else 0)

    @property
    def bits(self) -> int:
        """ceil(log2(codewords)) bits per weight plus a 32-bit codebook."""
        return self.size * max(1, math.ceil(math.log2(self.codewords))) + 32 * len(self.centroids)

    def values(self) -> np.ndarray:
        out = np.zeros(self.groups.shape, np.float32)
        nonzero = self.groups >= 0
        out[nonzero] = self.centroids[self.groups[nonzero]]
        return out


def _kernels(model, config: ClusterConfig) -> List[Tuple[keras.layers.Layer, keras.Variable]]:
    names = {l.name for l in model.layers}
    unknown = sorted((set(config.layers) | set(config.exclude)) - names)
    if unknown:
        raise TfcError(f"no layer named {', '.join(unknown)} in the model")
    found = []
    for layer in model.layers:
        if (config.layers and layer.name not in config.layers) or layer.name in config.exclude:
            continue
        for variable in layer.trainable_weights:
            if variable.name in KERNEL_NAMES and len(variable.shape) >= 2:
                found.append((layer, variable))
    if not found:
        raise TfcError("the model has no conv or dense kernel to cluster")
    return found


def cluster_model(model, config: ClusterConfig) -> Tuple[keras.Model, List[ClusteredKernel]]:
    """(a copy of `model` whose kernels hold their centroids, the clustered kernels).

    Raises:
      TfcError: unknown layer names, nothing to cluster, or a kernel with NaN/Inf.
    """
    if config.fold_batch_norm:
        from tfcompress.keras.fold import fold_batch_norm  # pylint: disable=import-outside-toplevel
        result, _ = fold_batch_norm(model)
    else:
        result = copy_model(model)
    clustered = []
    for layer, variable in _kernels(result, config):
        w = np.asarray(variable.numpy(), np.float64)
        if not np.all(np.isfinite(w)):
            raise TfcError(f"layer {layer.name} has NaN or Inf weights")
        nonzero = w != 0
        groups = np.full(w.shape, -1, np.int32)
        centroids = np.zeros(0)
        if nonzero.any():
            centroids, labels = kmeans_1d(w[nonzero], config.clusters, config.init, config.iterations, config.seed)
            groups[nonzero] = labels
        kernel = ClusteredKernel(layer.name, variable.name, variable.path, centroids.astype(np.float32), groups)
        variable.assign(kernel.values())
        clustered.append(kernel)
    return result, clustered


def sharing(clustered: Sequence[ClusteredKernel]) -> Dict[str, SharedWeights]:
    """The trainer's weight-sharing map for fine-tuning the codebooks (centroid gradient = sum)."""
    return {k.path: SharedWeights(k.groups, "sum") for k in clustered}


def read_codebooks(model, clustered: Sequence[ClusteredKernel], tolerance: float = 1e-6) -> float:
    """After fine-tuning: reads each codebook back from `model` and snaps members to it; the largest spread.

    Members of a codeword stay equal under the shared gradients; the spread
    (largest max - min within a codeword, relative to the kernel's largest
    magnitude) measures that, and a spread above `tolerance` is an error.
    Zeros are re-imposed exactly.
    """
    variables = {v.path: v for v in model.weights}
    worst = 0.0
    for k in clustered:
        w = variables[k.path].numpy()
        if len(k.centroids):
            means, spread = read_shared(w, k.groups, len(k.centroids))
            spread /= max(float(np.abs(w[k.groups >= 0]).max()), 1e-12)
            worst = max(worst, spread)
            if spread > tolerance:
                raise TfcError(f"layer {k.layer}: shared weights drifted apart ({spread:.2e}); the codebook was "
                               "not trained with shared gradients")
            k.centroids = np.where(np.isnan(means), k.centroids, means).astype(np.float32)
        variables[k.path].assign(k.values())
    return worst


def cluster_and_finetune(model, config: ClusterConfig, x: np.ndarray, labels: Optional[np.ndarray], train_config,
                         *, teacher=None) -> Tuple[keras.Model, List[ClusteredKernel]]:
    """Clusters every kernel, fine-tunes the codebooks (if train_config.epochs) and re-estimates BN statistics."""
    from tfcompress.keras import train as trainer  # pylint: disable=import-outside-toplevel
    result, clustered = cluster_model(model, config)
    if train_config.epochs:
        trainer.fit(result, x, labels, train_config, teacher=teacher, shared=sharing(clustered))
        read_codebooks(result, clustered)
    trainer.set_bn_statistics(result, trainer.batches(x, train_config.batch_size))
    return copy_model(result), clustered
