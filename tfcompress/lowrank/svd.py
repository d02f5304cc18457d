"""Low-rank factorization of dense and conv layers by truncated SVD.

- Dense (Denton et al., arXiv:1404.0736): W [in, out] ≈ A B with A = U_r √S_r
  [in, r] and B = √S_r V_rᵀ [r, out]: Dense(r, no bias) then Dense(out).
- Conv, channel SVD (Zhang et al., arXiv:1505.06798): W reshaped to
  [(kh·kw·cin), cout] ≈ A B: a kh×kw conv with r filters, then a 1×1 conv.
- Conv, spatial SVD (Jaderberg et al., arXiv:1405.3866, scheme 2): W
  rearranged to [(kh·cin), (kw·cout)] ≈ A B: a kh×1 conv with r filters,
  then a 1×kw conv; strides and padding are split between the two.

The rank is chosen per layer by kept energy (Σ_{i<r} s_i² ≥ energy · Σ s_i²)
or by parameter ratio (the largest r whose factors have at most that
fraction of the layer's weights).  The second factor keeps the layer's name,
bias and activation; the first is named `<layer>_svd`.  The model is rebuilt
from its config, so the result saves, loads and converts to TFLite like any
Keras model.
"""

import copy
import dataclasses
from typing import Dict, Optional, Tuple

import keras
import numpy as np

from tfcompress.errors import TfcError

MODES = ("channel", "spatial")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LowRankConfig:
    """Attributes:
      energy: keep this fraction of the squared singular values (used when param_ratio is None).
      param_ratio: factors hold at most this fraction of the layer's weights.
      rank: a fixed rank for every chosen layer (capped at full rank), even if
        the factors are not smaller; overrides energy and param_ratio.
      conv_mode: "channel" or "spatial" SVD for convs.
      layers: only these layers (empty: every dense and non-depthwise conv that gets smaller).
    """
    energy: float = 0.9
    param_ratio: Optional[float] = None
    rank: Optional[int] = None
    conv_mode: str = "channel"
    layers: Tuple[str, ...] = ()

    def __post_init__(self):
        if not 0.0 < self.energy <= 1.0:
            raise TfcError(f"--energy must be in (0, 1], got {self.energy}")
        if self.param_ratio is not None and not 0.0 < self.param_ratio < 1.0:
            raise TfcError(f"--param_ratio must be in (0, 1), got {self.param_ratio}")
        if self.rank is not None and self.rank < 1:
            raise TfcError(f"--rank must be >= 1, got {self.rank}")
        if self.conv_mode not in MODES:
            raise TfcError(f"--conv_mode must be one of {', '.join(MODES)}, got {self.conv_mode!r}")


def _matrix(layer, mode: str) -> np.ndarray:
    w = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    if isinstance(layer, keras.layers.Dense):
        return w
    kh, kw, cin, cout = w.shape
    if mode == "channel":
        return w.reshape(kh * kw * cin, cout)
    return w.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)  # Rows (h, c), columns (w, o).


def choose_rank(singular: np.ndarray, shape: Tuple[int, int], config: LowRankConfig) -> int:
    """The rank for a matrix of `shape` with these singular values (0 if no rank makes the layer smaller)."""
    rows, cols = shape
    limit = (rows * cols) // (rows + cols)  # Largest rank whose factors are smaller than the matrix.
    if config.param_ratio is not None:
        rank = int(config.param_ratio * rows * cols // (rows + cols))
    else:
        energy = np.cumsum(singular ** 2) / np.sum(singular ** 2)
        rank = int(np.searchsorted(energy, config.energy - 1e-12) + 1)
    rank = min(rank, len(singular), limit)
    return rank if rank >= 1 else 0


def factor(matrix: np.ndarray, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """(A, B) with A @ B the best rank-`rank` approximation (Eckart-Young), √S split evenly."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def _factor_layers(entry: dict, layer, rank: int, mode: str, a: np.ndarray, b: np.ndarray):
    """(first-factor config entry, new config for the layer itself, first weights, second weights)."""
    name = entry["config"]["name"]
    first = copy.deepcopy(entry)
    if "name" in first:
        first["name"] = f"{name}_svd"
    first["config"].update(name=f"{name}_svd", use_bias=False, activation="linear")
    second = dict(entry["config"])
    weights = layer.get_weights()
    if isinstance(layer, keras.layers.Dense):
        first["config"]["units"] = rank
        return first, second, [a.astype(np.float32)], [b.astype(np.float32)] + weights[1:]
    kh, kw, cin, cout = layer.kernel.shape
    first["config"].update(filters=rank)
    if mode == "channel":
        second.update(kernel_size=(1, 1), strides=(1, 1), padding="valid", dilation_rate=(1, 1))
        return (first, second, [a.reshape(kh, kw, cin, rank).astype(np.float32)],
                [b.reshape(1, 1, rank, cout).astype(np.float32)] + weights[1:])
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    first["config"].update(kernel_size=(kh, 1), strides=(sh, 1), dilation_rate=(dh, 1))
    second.update(kernel_size=(1, kw), strides=(1, sw), dilation_rate=(1, dw))
    vertical = a.reshape(kh, cin, rank)[:, None, :, :]            # [kh, 1, cin, r]
    horizontal = b.reshape(rank, kw, cout).transpose(1, 0, 2)[None]  # [1, kw, r, cout]
    return first, second, [vertical.astype(np.float32)], [horizontal.astype(np.float32)] + weights[1:]


@dataclasses.dataclass
class LowRankResult:
    model: object
    ranks: Dict[str, Tuple[int, int]]  # layer -> (rank, full rank)
    skipped: Dict[str, str]


def factorize(model, config: LowRankConfig) -> LowRankResult:
    """A new model with the chosen dense and conv layers replaced by two low-rank factors.

    Raises:
      TfcError: a named layer is missing or cannot be factorized, or nothing would get smaller.
    """
    candidates = [l for l in model.layers if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))
                  and not isinstance(l, keras.layers.DepthwiseConv2D)]
    if config.layers:
        names = {l.name for l in candidates}
        missing = [n for n in config.layers if n not in names]
        if missing:
            raise TfcError(f"cannot factorize {', '.join(missing)}: not a Dense or Conv2D layer of the model")
        candidates = [l for l in candidates if l.name in config.layers]
    full = model.get_config()
    if "layers" not in full:
        raise TfcError("low-rank factorization needs a functional or sequential Keras model")
    plans, skipped = {}, {}
    for layer in candidates:
        if isinstance(layer, keras.layers.Conv2D) and layer.groups != 1:
            skipped[layer.name] = "grouped conv"
            continue
        if isinstance(layer, keras.layers.Conv2D) and config.conv_mode == "spatial" and layer.padding == "same" \
                and (layer.kernel.shape[0] % 2 == 0 or layer.kernel.shape[1] % 2 == 0):
            skipped[layer.name] = "spatial SVD of an even 'same' kernel would shift the output"
            continue
        matrix = _matrix(layer, config.conv_mode)
        singular = np.linalg.svd(matrix, compute_uv=False)
        if config.rank is not None:
            rank = min(config.rank, len(singular))
        else:
            rank = choose_rank(singular, matrix.shape, config)
        if rank == 0 or (config.rank is None and rank * sum(matrix.shape) >= matrix.size):
            skipped[layer.name] = "no rank makes it smaller"
            continue
        plans[layer.name] = (rank, min(matrix.shape), factor(matrix, rank))
    if not plans:
        raise TfcError("no layer gets smaller by low-rank factorization at these settings")
    entries, weights = [], {}
    for entry in full["layers"]:
        entry.pop("build_config", None)
        name = entry["config"]["name"]
        if name in plans:
            rank, _, (a, b) = plans[name]
            first, second, w1, w2 = _factor_layers(entry, model.get_layer(name), rank, config.conv_mode, a, b)
            sequential = "inbound_nodes" not in entry
            entries.append(first)
            entry = dict(entry, config=second)
            if not sequential:
                probe = keras.layers.deserialize({"class_name": first["class_name"], "config": first["config"],
                                                  "module": first.get("module"),
                                                  "registered_name": first.get("registered_name")})
                shape = list(probe.compute_output_shape(tuple(model.get_layer(name).input.shape)))
                entry["inbound_nodes"] = [{"args": [{"class_name": "__keras_tensor__", "config": {
                    "shape": shape, "dtype": "float32", "keras_history": [f"{name}_svd", 0, 0]}}], "kwargs": {}}]
            weights[f"{name}_svd"], weights[name] = w1, w2
        entries.append(entry)
    full["layers"] = entries
    rebuilt = model.__class__.from_config(full)
    for layer in rebuilt.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return LowRankResult(model=rebuilt, ranks={n: (p[0], p[1]) for n, p in plans.items()}, skipped=skipped)
