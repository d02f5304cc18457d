"""Filter pruning criteria and the layer-by-layer schedule.

Criteria (each picks which output channels of a prunable layer to keep):
- l1 / l2: the norm of each filter (Li et al., "Pruning Filters for Efficient
  ConvNets", arXiv:1608.08710);
- apoz: the average percentage of zeros of each channel after its ReLU,
  measured on images; channels that are mostly zero go first (Hu et al.,
  "Network Trimming", arXiv:1607.03250);
- thinet: channels are chosen by the *next* layer.  On sampled output
  positions of the consumer, each input channel's contribution is computed;
  channels are removed greedily so that the sum of the removed contributions
  stays as close to zero as possible, then the kept channels are rescaled by
  least squares to reconstruct the consumer's output (Luo et al., "ThiNet",
  ICCV 2017, arXiv:1707.06342);
- random: a seeded random choice, the baseline.

Each criterion scores a channel *group* (`thinning.plan`): a lone conv's
filters, or the producers tied by a residual Add or an SE Multiply together,
whose importance is summed over the group (DepGraph, Fang et al.,
arXiv:2301.12900); ThiNet's reconstruction then covers every consumer of the
group's channels.

Reconstruction (FilterConfig.to_original, the default): ThiNet's paper
rescales the kept channels to reproduce the consumer's output in the model
as it stands, so each group's error is built into the next group's target
and errors compound; on the zoo's MobileNetV2-style net, thinning every
group that way leaves 9% top-1 agreement before any training.  Instead,
after ThiNet's greedy choice (whose target is then also the original's),
each conv consumer's kernel rows for the kept channels are refitted by
ridge least squares over all its taps and outputs, from the thinned model's
own inputs to the original model's outputs (He et al., "Channel Pruning
for Accelerating Very Deep Neural Networks", ICCV 2017, arXiv:1707.06168,
Sec. 3.2-3.3); a dense consumer keeps ThiNet's per-channel scales.  The
batch-norm layers then see what the original's statistics describe, so they
are not re-estimated from the few images.

Allocation: every group at `ratio` (ThiNet's paper), or per-group ratios
from each group's measured sensitivity that together remove `ratio` of the
model's MACs (`FilterConfig.allocation`).

Schedule: one group at a time (thinned, then fine-tuned for a short while),
then a global fine-tune, all with the shared distillation trainer.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import keras
import numpy as np

from tfcompress.errors import TfcError
from tfcompress.io.keras_models import copy_model
from tfcompress.prune import thinning

CRITERIA = ("l1", "l2", "apoz", "thinet", "random")
ALLOCATIONS = ("uniform", "sensitivity")
# Per-group ratios at which sensitivity is measured, and the images it is measured on.
SENSITIVITY_GRID = (0.25, 0.5, 0.625, 0.75, 0.875)
SENSITIVITY_IMAGES = 256
# ThiNet's sampled (image, position, output channel) triples per layer.
THINET_SAMPLES = 4000


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterConfig:
    """Attributes:
      criterion: one of CRITERIA.
      ratio: the fraction removed, in (0, 1): of each channel group's channels ("uniform"), or of the
        model's MACs ("sensitivity").
      allocation: "uniform" gives every group `ratio`, as ThiNet's paper does; "sensitivity" measures how much
        thinning each group alone (by the criterion, rescaled, without training) changes the model's outputs
        on the images at each SENSITIVITY_GRID ratio, and gives each group the largest ratio whose change stays
        within one level, the level chosen so that `ratio` of the model's MACs go (a global budget as in
        DepGraph, Fang et al., arXiv:2301.12900, with measured per-layer sensitivity as in Li et al.,
        arXiv:1608.08710, Sec. 4.1).
      layers: restrict to the channel groups of these layers (empty: every prunable group).
      seed: for random choice and ThiNet's sampling.
      residual_groups: also thin groups with several producers (tied by a residual Add or an SE Multiply);
        False thins only inside blocks, as ThiNet's paper does on ResNet-50.
      to_original: thinet: choose and refit each group's channels against the original model's outputs
        (`Reference`, `reconstruct_kernels`); False follows ThiNet's paper (the current model's outputs,
        per-channel scales) and re-estimates batch-norm statistics after each group.
    """
    criterion: str = "l1"
    ratio: float = 0.5
    allocation: str = "uniform"
    layers: Tuple[str, ...] = ()
    seed: int = 0
    residual_groups: bool = True
    to_original: bool = True

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise TfcError(f"unknown filter criterion {self.criterion!r} (choose from {', '.join(CRITERIA)})")
        if not 0.0 < self.ratio < 1.0:
            raise TfcError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.allocation not in ALLOCATIONS:
            raise TfcError(f"unknown allocation {self.allocation!r} (choose from {', '.join(ALLOCATIONS)})")
        if self.allocation == "sensitivity" and self.ratio > max(SENSITIVITY_GRID):
            raise TfcError(f"--ratio {self.ratio} is beyond the largest per-group ratio sensitivity allocation "
                           f"gives ({max(SENSITIVITY_GRID)})")


def _keep_count(channels: int, ratio: float) -> int:
    return max(1, channels - int(round(ratio * channels)))


def _activations(model, layer_name: str, x: np.ndarray) -> np.ndarray:
    probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
    return probe.predict(x, batch_size=64, verbose=0)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices from the highest score to the lowest (ties to the lower index)."""
    return np.argsort(-scores, kind="stable")


def norm_ranking(model, target: thinning.Prunable, p: int) -> np.ndarray:
    """The channels from the largest filter Lp norm to the smallest.  In a group, each producer's norms are
    divided by their mean (batch norm after a conv makes its scale arbitrary) and summed over the producers,
    DepGraph's group importance (Fang et al., arXiv:2301.12900)."""
    score = np.zeros(target.channels)
    for name in target.producers:
        kernel = keras.ops.convert_to_numpy(thinning.output_kernel(model.get_layer(name)))
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]).astype(np.float64))
        norms = flat.sum(0) if p == 1 else np.sqrt((flat ** 2).sum(0))
        score += norms / (norms.mean() or 1.0) if len(target.producers) > 1 else norms
    return _descending(score)


def apoz_ranking(model, target: thinning.Prunable, x: np.ndarray) -> np.ndarray:
    """The channels from the fewest zeros after activation to the most, averaged over the group's activation
    layers."""
    zeros = np.zeros(target.channels)
    for name in target.activations:
        act = _activations(model, name, x)
        zeros += (act <= 0).reshape(-1, act.shape[-1]).mean(0) / len(target.activations)
    return _descending(-zeros)


def _grouped(contrib: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Per-input-row contributions [samples, rows] summed per group channel (`origin`: row -> channel or -1;
    every channel has at least one row)."""
    mine = np.flatnonzero(origin >= 0)
    order = mine[np.argsort(origin[mine], kind="stable")]
    starts = np.searchsorted(origin[order], np.arange(int(origin.max()) + 1))
    return np.add.reduceat(contrib[:, order], starts, axis=1)


def _output_size(consumer, size: Tuple[int, int]) -> Tuple[int, int]:
    """A conv's (or a separable conv's depthwise step's) output height and width for input `size`."""
    out = []
    for n, k, s, d in zip(size, consumer.kernel_size, consumer.strides, consumer.dilation_rate):
        out.append(-(-n // s) if consumer.padding == "same" else (n - (k - 1) * d - 1) // s + 1)
    return out[0], out[1]


def _padded(consumer, a: np.ndarray) -> np.ndarray:
    """A conv's input with its "same" padding added (as TF pads: the odd pixel at the end)."""
    if consumer.padding != "same":
        return a
    (kh, kw), (sh, sw) = consumer.kernel_size, consumer.strides
    out_h, out_w = _output_size(consumer, a.shape[1:3])
    pad_h = max((out_h - 1) * sh + kh - a.shape[1], 0)
    pad_w = max((out_w - 1) * sw + kw - a.shape[2], 0)
    return np.pad(a, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))


def _window_source(consumer, a: np.ndarray) -> np.ndarray:
    """What a consumer's windows are cut from: its padded input, or for a separable conv its depthwise step's
    output (float32, as captured)."""
    if isinstance(consumer, keras.layers.SeparableConv2D):
        return keras.ops.convert_to_numpy(keras.ops.depthwise_conv(
            a.astype(np.float32), keras.ops.convert_to_numpy(consumer.depthwise_kernel), strides=consumer.strides,
            padding=consumer.padding, dilation_rate=consumer.dilation_rate))
    return _padded(consumer, a)


def _windows(consumer, source: np.ndarray, n, ys, xs) -> np.ndarray:
    """The consumer's inputs at sampled output positions, [samples, taps, rows] in float64: its kh x kw
    windows for a conv, the depthwise outputs (one tap) for a separable conv."""
    if isinstance(consumer, keras.layers.SeparableConv2D):
        return source[n, ys, xs, :][:, None, :].astype(np.float64)
    (kh, kw), (sh, sw) = consumer.kernel_size, consumer.strides
    return np.stack([source[i, y * sh:y * sh + kh, x * sw:x * sw + kw, :] for i, y, x in zip(n, ys, xs)]
                    ).reshape(len(n), kh * kw, -1).astype(np.float64)


def _points(consumer, a: np.ndarray, rng, samples: int) -> Tuple[np.ndarray, ...]:
    """Sampled outputs of a consumer fed `a`: (image, output) for a dense layer, (image, row, column, output)
    for a conv."""
    n = rng.integers(0, len(a), samples)
    if isinstance(consumer, keras.layers.Dense):
        return n, rng.integers(0, int(consumer.units), samples)
    out_h, out_w = _output_size(consumer, a.shape[1:3])
    ys, xs = rng.integers(0, out_h, samples), rng.integers(0, out_w, samples)
    return n, ys, xs, rng.integers(0, int(thinning.output_kernel(consumer).shape[-1]), samples)


def _contributions(consumer, a: np.ndarray, points: Tuple[np.ndarray, ...], origin: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(X [samples, C], y [samples]): contributions of a group's C channels to a consumer's outputs at the
    sampled `points` (`_points`), and their sums; `origin` maps each consumer input row to its group channel or
    -1 (`thinning.consumer_rows`).  The bias is left out."""
    if isinstance(consumer, keras.layers.SeparableConv2D):
        x = _grouped(_separable_contributions(consumer, a, points)[0], origin)
        return x, x.sum(1)
    w = keras.ops.convert_to_numpy(consumer.kernel).astype(np.float64)
    if isinstance(consumer, keras.layers.Dense):
        a2 = a.reshape(len(a), -1)
        n, o = points
        # In chunks: after a Flatten a row of products is positions x channels long.
        x = np.concatenate([_grouped(a2[n[i:i + 256]].astype(np.float64) * w[:, o[i:i + 256]].T, origin)
                            for i in range(0, len(n), 256)])
        return x, x.sum(1)
    if tuple(consumer.dilation_rate) != (1, 1) or consumer.groups != 1:
        raise TfcError(f"ThiNet handles undilated, ungrouped convs; {consumer.name} is not one")
    n, ys, xs, o = points
    windows = _windows(consumer, _window_source(consumer, a), n, ys, xs)  # [samples, taps, C]
    x = _grouped(np.einsum("stc,tcs->sc", windows, w.reshape(-1, *w.shape[-2:])[:, :, o]), origin)
    return x, x.sum(1)


def _separable_contributions(consumer, a: np.ndarray, points: Tuple[np.ndarray, ...]
                             ) -> Tuple[np.ndarray, np.ndarray]:
    """As `_contributions`, through a separable conv: input channel c reaches pointwise output o only through
    its own depthwise outputs, so its contribution is sum_j depthwise(a)[c*m + j] * pointwise[c*m + j, o] for
    depth multiplier m (the depthwise bias, spread over the channels, is left out as a conv's bias is)."""
    pointwise = keras.ops.convert_to_numpy(consumer.pointwise_kernel).astype(np.float64)[0, 0]
    channels, multiplier = consumer.depthwise_kernel.shape[2], consumer.depthwise_kernel.shape[3]
    n, ys, xs, o = points
    per_output = _windows(consumer, _window_source(consumer, a), n, ys, xs)[:, 0] * pointwise[:, o].T
    x = per_output.reshape(len(n), channels, multiplier).sum(-1)
    return x, x.sum(1)


@dataclasses.dataclass(frozen=True)
class Reference:
    """The unthinned model, whose consumer outputs a thinned one reconstructs (He et al., "Channel Pruning for
    Accelerating Very Deep Neural Networks", ICCV 2017, arXiv:1707.06168, Sec. 3.2: the pruned model's inputs,
    the original model's outputs, so that errors do not accumulate from layer to layer).

    Attributes:
      model: the original model.
      outputs: layer name -> the original output channel of each of its current output channels (layers not
        named keep all of theirs).
    """
    model: object
    outputs: Dict[str, np.ndarray]


def _bias(layer) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer.bias).astype(np.float64) if layer.use_bias else 0.0


def _full_output(consumer, a: np.ndarray, points: Tuple[np.ndarray, ...]) -> np.ndarray:
    """The consumer's linear output (bias included) at the sampled points."""
    rows = np.zeros(int(np.prod(a.shape[1:])) if isinstance(consumer, keras.layers.Dense) else a.shape[-1],
                    np.int64)
    total = _contributions(consumer, a, points, rows)[1]
    bias = _bias(consumer)
    return total + (bias[points[-1]] if np.ndim(bias) else bias)


@dataclasses.dataclass(frozen=True)
class _Block:
    """ThiNet's sampled problem for one consumer: contributions [samples, C] of the group's channels, their
    sums, and the change those channels should add to reach the reference's outputs (0 without one)."""
    consumer: str
    contributions: np.ndarray
    total: np.ndarray
    shortfall: np.ndarray


def _thinet_blocks(model, target: thinning.Prunable, x: np.ndarray, seed: int,
                   reference: Optional[Reference] = None) -> Tuple[Dict[str, np.ndarray], List[_Block]]:
    """(rows, blocks): ThiNet's sampled problem for a group; `rows` is `thinning.consumer_rows`.  With a
    reference, each consumer's target is the reference model's output at the same points."""
    rng = np.random.default_rng(seed)
    rows = thinning.consumer_rows(model, target)
    blocks = []
    for name in target.consumers:
        consumer = model.get_layer(name)
        feeding = consumer._inbound_nodes[0].parent_nodes[0].operation.name  # pylint: disable=protected-access
        # Captured in float32 (half the memory); each sampled product is formed in float64.
        a = _activations(model, feeding, x)
        points = _points(consumer, a, rng, THINET_SAMPLES)
        contrib, total = _contributions(consumer, a, points, rows[name])
        shortfall = np.zeros_like(total)
        if reference is not None:
            original = reference.model.get_layer(name)
            mapped = reference.outputs.get(name, np.arange(int(thinning.output_kernel(consumer).shape[-1])))
            wanted = _full_output(original, _activations(reference.model, feeding, x),
                                  points[:-1] + (mapped[points[-1]],))
            shortfall = wanted - _full_output(consumer, a, points)
        if len(target.consumers) > 1:
            rms = float(np.sqrt(np.mean(total ** 2))) or 1.0
            contrib, total, shortfall = contrib / rms, total / rms, shortfall / rms
        blocks.append(_Block(name, contrib, total, shortfall))
    return rows, blocks


def _greedy_removal(blocks: List[_Block], count: int) -> List[int]:
    """ThiNet's greedy choice of `count` channels to remove: each step takes the channel whose contributions,
    added to those already removed, change the sampled outputs least (with a reference: leave them least
    far from its outputs).  The choice of fewer is a prefix."""
    contrib = np.concatenate([b.contributions for b in blocks])
    removed: List[int] = []
    # The sampled outputs' distance from their targets is ||running + the removed channels' contributions||.
    running = np.concatenate([b.shortfall for b in blocks])
    norms = (contrib ** 2).sum(0)
    for _ in range(count):
        # ||running + X_c||^2 for every candidate c, in one product.
        cost = (running ** 2).sum() + 2 * running @ contrib + norms
        cost[removed] = np.inf
        best = int(np.argmin(cost))
        removed.append(best)
        running += contrib[:, best]
    return removed


def _rescale(blocks: List[_Block], kept: np.ndarray, channels: int) -> Dict[str, np.ndarray]:
    """Each consumer's least-squares factors for the kept channels: consumer -> [channels], 0 where removed."""
    factors = {}
    for block in blocks:
        scale, *_ = np.linalg.lstsq(block.contributions[:, kept], block.total + block.shortfall, rcond=None)
        factors[block.consumer] = np.zeros(channels)
        factors[block.consumer][kept] = scale
    return factors


def _over_rows(per_channel: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Per-channel factors spread over a consumer's input rows (`origin`: row -> channel, or -1 for a row of
    another origin, which keeps factor 1)."""
    return np.where(origin >= 0, per_channel[np.maximum(origin, 0)], 1.0)


def thinet_keep(model, target: thinning.Prunable, keep: int, x: np.ndarray, seed: int,
                reference: Optional[Reference] = None) -> Tuple[np.ndarray, Optional[Dict[str, np.ndarray]]]:
    """ThiNet's greedy channel choice and least-squares rescaling; (kept, {consumer: scales}).

    With several conv/dense consumers (a trunk feeding two heads, or a
    residual group read by every block of a stage), the channels removed
    are those whose summed contributions disturb all the consumers' sampled
    outputs least, each consumer's samples scaled to unit RMS so that none
    dominates; each consumer then gets its own least-squares rescaling.  A
    consumer reached through a Concatenate or a Flatten counts only its rows
    that carry the group's channels (a channel's contribution is the sum
    over its flattened positions); the other rows keep their weights.
    Scales are over each consumer's original input rows.
    """
    rows, blocks = _thinet_blocks(model, target, x, seed, reference)
    removed = _greedy_removal(blocks, target.channels - keep)
    kept = np.array(sorted(set(range(target.channels)) - set(removed)), np.int64)
    scales = {}
    for name, per_channel in _rescale(blocks, kept, target.channels).items():
        per_channel[removed] = 1.0  # (Removed rows: thinning drops them.)
        scales[name] = _over_rows(per_channel, rows[name])
    return kept, scales


def _ranking(model, target: thinning.Prunable, config: FilterConfig, x: np.ndarray) -> np.ndarray:
    """The group's channels from most to least important by a norm, APoZ or random criterion: the kept
    channels at any ratio are a prefix."""
    if config.criterion in ("l1", "l2"):
        return norm_ranking(model, target, 1 if config.criterion == "l1" else 2)
    if config.criterion == "apoz":
        return apoz_ranking(model, target, x)
    rng = np.random.default_rng(config.seed + sum(map(ord, target.name)))
    return rng.permutation(target.channels)


def choose(model, target: thinning.Prunable, config: FilterConfig, x: np.ndarray, ratio: float,
           reference: Optional[Reference] = None) -> Tuple[np.ndarray, Optional[Dict[str, np.ndarray]]]:
    """Kept output channels of `target` at `ratio` (and consumer rescaling for ThiNet)."""
    keep = _keep_count(target.channels, ratio)
    if config.criterion == "thinet":
        return thinet_keep(model, target, keep, x, config.seed, reference)
    return np.sort(_ranking(model, target, config, x)[:keep]), None


def _input_kernel(layer):
    """The kernel whose input-channel axis is -2 (a separable conv's depthwise kernel)."""
    return layer.depthwise_kernel if isinstance(layer, keras.layers.SeparableConv2D) else layer.kernel


def _output_change(reference: List[np.ndarray], outputs: List[np.ndarray]) -> float:
    """Mean over the model's outputs of the squared change relative to that output's spread over the images."""
    terms = []
    for r, o in zip(reference, outputs):
        r = r.reshape(len(r), -1).astype(np.float64)
        o = o.reshape(len(o), -1).astype(np.float64)
        terms.append(((o - r) ** 2).sum() / (((r - r.mean(0)) ** 2).sum() or 1.0))
    return float(np.mean(terms))


def group_sensitivity(model, targets: List[thinning.Prunable], config: FilterConfig, x: np.ndarray
                      ) -> Dict[str, List[float]]:
    """Group name -> 1 - the relative output change (`_output_change`) with that group alone thinned at each
    SENSITIVITY_GRID ratio by the criterion (ThiNet with its rescaling), measured on the first
    SENSITIVITY_IMAGES images.  Thinning is emulated in place by zeroing (and rescaling) the consumers' input
    rows, which gives the thinned model's outputs exactly; the weights are restored after.  A group ThiNet
    cannot handle is left out."""
    from tfcompress.keras.heads import predict_all  # pylint: disable=import-outside-toplevel
    images = x[:SENSITIVITY_IMAGES]
    reference = predict_all(model, images)
    curves = {}
    for target in targets:
        channels = target.channels
        deepest = channels - _keep_count(channels, max(SENSITIVITY_GRID))
        if config.criterion == "thinet":
            try:
                rows, blocks = _thinet_blocks(model, target, x, config.seed)
            except TfcError:
                continue
            removed = _greedy_removal(blocks, deepest)
        else:
            rows = thinning.consumer_rows(model, target)
            ranking = _ranking(model, target, config, x)
        kernels = {n: _input_kernel(model.get_layer(n)) for n in target.consumers}
        saved = {n: keras.ops.convert_to_numpy(k) for n, k in kernels.items()}
        curve = []
        try:
            for ratio in SENSITIVITY_GRID:
                keep = _keep_count(channels, ratio)
                if config.criterion == "thinet":
                    factors = _rescale(blocks, np.setdiff1d(np.arange(channels), removed[:channels - keep]),
                                       channels)
                else:
                    mask = np.zeros(channels)
                    mask[ranking[:keep]] = 1.0
                    factors = {n: mask for n in target.consumers}
                for n, kernel in kernels.items():
                    factor = _over_rows(factors[n], rows[n]).astype(saved[n].dtype)
                    kernel.assign(saved[n] * factor.reshape((1,) * (saved[n].ndim - 2) + (-1, 1)))
                curve.append(1.0 - _output_change(reference, predict_all(model, images)))
        finally:
            for n, kernel in kernels.items():
                kernel.assign(saved[n])
        curves[target.name] = curve
    return curves


def macs_after(model, targets: List[thinning.Prunable]) -> Callable[[Dict[str, float]], float]:
    """A function of per-group ratios giving the model's MACs (`keras.cost.layer_macs`) once each group loses
    that fraction of its channels: a conv's MACs scale with its kept input rows times its kept outputs, a
    depthwise conv's with its kept channels."""
    from tfcompress.keras.cost import layer_macs  # pylint: disable=import-outside-toplevel
    costs = layer_macs(model)
    inputs: Dict[str, List[Tuple[str, float]]] = {}  # layer -> [(group, share of its input channels)]
    outputs: Dict[str, str] = {}                     # layer -> the group it produces
    for target in targets:
        for name, share in thinning.input_shares(model, target).items():
            inputs.setdefault(name, []).append((target.name, share))
        outputs.update({name: target.name for name in target.producers})

    def macs(ratios: Dict[str, float]) -> float:
        total = 0.0
        for name, (in_only, out_only, both) in costs.items():
            kept_in = 1.0 - sum(share * ratios.get(group, 0.0) for group, share in inputs.get(name, ()))
            kept_out = 1.0 - ratios.get(outputs[name], 0.0) if name in outputs else 1.0
            total += in_only * kept_in + out_only * kept_out + both * kept_in * kept_out
        return total
    return macs


def allocate_ratios(model, targets: List[thinning.Prunable], config: FilterConfig, x: np.ndarray
                    ) -> Dict[str, float]:
    """Per-group ratios from `group_sensitivity` that remove `config.ratio` of the model's MACs.

    Raises:
      TfcError: the groups carry too few of the MACs for that.
    """
    from tfcompress.prune.sensitivity import allocate  # pylint: disable=import-outside-toplevel
    curves = group_sensitivity(model, targets, config, x)
    macs = macs_after(model, [t for t in targets if t.name in curves])
    full = macs({})

    def removed(ratios):
        return 1.0 - macs(ratios) / full

    ratios = allocate(SENSITIVITY_GRID, curves, removed, config.ratio) if curves else {}
    if removed(ratios) < config.ratio:
        deepest = removed({n: max(SENSITIVITY_GRID) for n in curves})
        raise TfcError(f"--ratio {config.ratio:g} of the MACs cannot be removed: thinning every prunable channel "
                       f"group by {max(SENSITIVITY_GRID)} removes {deepest:.0%}")
    return ratios


@dataclasses.dataclass
class FilterResult:
    model: object
    pruned: Dict[str, Tuple[int, int]]  # layer -> (channels before, after)
    skipped: Dict[str, str]             # layer -> why it was left whole


def prune_filters(model, config: FilterConfig, x: np.ndarray,
                  finetune: Optional[Callable[[object, int], None]] = None) -> FilterResult:
    """Thins every prunable channel group (or those of config.layers) one at a time, fine-tuning after each.

    Args:
      model: the functional Keras model (not modified).
      config: criterion and ratio.
      x: images for APoZ and ThiNet statistics (float NHWC).
      finetune: called as finetune(model, group_index) after each group is thinned.

    Returns:
      The thinned model; `pruned` and `skipped` name every producer of a group.

    Raises:
      TfcError: nothing to prune, or a named layer cannot be pruned.
    """
    opaque: Dict[str, str] = {}
    targets = [t for t in thinning.plan(model, untracked_reach=opaque)
               if config.residual_groups or len(t.producers) == 1]
    names = [t.name for t in targets]
    if config.layers:
        producers = {p for t in targets for p in t.producers}
        unknown = [n for n in config.layers if n not in producers]
        if unknown:
            why = "; ".join(f"{n}: {opaque[n]}" for n in unknown if n in opaque)
            raise TfcError(f"cannot thin {', '.join(unknown)}: not a conv/dense layer whose channel group reaches "
                           "only conv/dense layers (model inputs and outputs keep their channels)"
                           + (f" ({why})" if why else ""))
        names = [t.name for t in targets if set(t.producers) & set(config.layers)]
        opaque = {n: why for n, why in opaque.items() if n in config.layers}
    if not names:
        untracked_note = f"; {'; '.join(f'{n}: {why}' for n, why in opaque.items())}" if opaque else ""
        raise TfcError("the model has no prunable conv/dense layer (every channel group reaches a model input, "
                       f"an output or a layer thinning does not track{untracked_note})")
    ratios = {name: config.ratio for name in names}
    if config.allocation == "sensitivity":
        ratios = allocate_ratios(model, [t for t in targets if t.name in names], config, x)
    current = copy_model(model)
    reference = Reference(model, {}) if config.criterion == "thinet" and config.to_original else None
    pruned, skipped = {}, dict(opaque)
    for i, name in enumerate(names):
        target = next(t for t in thinning.plan(current) if t.name == name)
        ratio = ratios.get(name, config.ratio)  # (A group sensitivity left out: ThiNet's choice says why.)
        if _keep_count(target.channels, ratio) == target.channels:
            skipped.update({p: ("among the most sensitive: the allocation keeps every channel"
                                if config.allocation == "sensitivity" else f"ratio {ratio:g} removes no channel")
                            for p in target.producers})
            continue
        try:
            kept, scales = choose(current, target, config, x, ratio, reference)
        except TfcError as e:
            if config.criterion != "thinet":
                raise
            skipped.update({p: str(e) for p in target.producers})
            continue
        if reference is not None:
            reconstruct_kernels(current, target, kept, x, config.seed, reference)
            scales = {n: f for n, f in (scales or {}).items()
                      if isinstance(current.get_layer(n), keras.layers.Dense)}
        current = thinning.thin(current, target.keep(kept), scales)
        if reference is not None:
            for p in target.producers:
                reference.outputs[p] = reference.outputs.get(p, np.arange(target.channels))[kept]
        pruned.update({p: (target.channels, len(kept)) for p in target.producers})
        if finetune is not None:
            finetune(current, i)
    return FilterResult(model=current, pruned=pruned, skipped=skipped)


def prune_and_finetune(model, config: FilterConfig, x: np.ndarray, labels: Optional[np.ndarray], train,
                       *, teacher=None, layer_epochs: int = 1) -> FilterResult:
    """The whole schedule: each layer thinned then fine-tuned for `layer_epochs`, then `train.epochs` globally.

    Batch-norm statistics are re-estimated on x after each group is thinned,
    and after the last only if no global fine-tuning follows: a fine-tune's
    own moving averages stand (their momentum lowered, if need be, so that
    they forget the earlier statistics within the run; see
    `trainer.moving_averages_over`).  Re-estimating them from
    the few images afterwards undid much of what distillation recovered, and
    the same pass alone moves an unpruned model away from itself (README,
    "Batch-norm statistics after fine-tuning").  Training uses the shared
    trainer (labels and/or `teacher`); `train` is its `TrainConfig`.
    """
    from tfcompress.keras import train as trainer  # pylint: disable=import-outside-toplevel
    batches = trainer.batches(x, train.batch_size)

    # Reconstructed to the original's outputs, each thinned layer feeds its batch norm what the original's
    # statistics describe: re-estimating them from the few images only moves the model away.
    reestimate = not (config.criterion == "thinet" and config.to_original)

    def finetune(current, _):
        if reestimate:
            trainer.set_bn_statistics(current, batches)
        if layer_epochs:
            trainer.fit(current, x, labels, dataclasses.replace(train, epochs=layer_epochs), teacher=teacher)

    result = prune_filters(model, config, x, finetune=finetune)
    if train.epochs:
        with trainer.moving_averages_over(result.model, train.steps(len(x))):
            trainer.fit(result.model, x, labels, train, teacher=teacher)
    elif reestimate:
        trainer.set_bn_statistics(result.model, batches)
    return result


# Ridge term of the kernel least squares, relative to the mean diagonal of the normal equations.
RIDGE = 1e-3


# Sampled positions per block of the normal equations (bounds the float64 windows held at once).
_CHUNK = 2048


def _taps_kernel(layer) -> np.ndarray:
    """The kernel whose rows a reconstruction solves, as [taps, rows, outputs] in float64."""
    kernel = keras.ops.convert_to_numpy(thinning.output_kernel(layer)).astype(np.float64)
    return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1])


def reconstruct_kernels(model, target: thinning.Prunable, kept: np.ndarray, x: np.ndarray, seed: int,
                        reference: Reference) -> None:
    """Refits, in place, the kernel rows through which each conv or separable consumer of `target` reads the
    kept channels, by ridge least squares on sampled output positions: the model's own inputs (every earlier
    group already thinned) against the reference model's outputs, all of a consumer's output channels at once
    (He et al., arXiv:1707.06168, Sec. 3.2, reconstructing W rather than ThiNet's per-channel scale).  The
    removed channels' rows are zeroed; dense consumers keep ThiNet's scaling.  Rows of other origins stay.
    Activations are held in float32 as captured; the normal equations are summed in float64 over blocks of
    sampled positions."""
    rng = np.random.default_rng(seed + 1)
    rows = thinning.consumer_rows(model, target)
    kept_mask = np.zeros(target.channels, bool)
    kept_mask[kept] = True
    for name in target.consumers:
        consumer = model.get_layer(name)
        if isinstance(consumer, keras.layers.Dense):
            continue
        original = reference.model.get_layer(name)
        multiplier = consumer.depth_multiplier if isinstance(consumer, keras.layers.SeparableConv2D) else 1
        mine = np.repeat(rows[name] >= 0, multiplier)
        solved = mine & np.repeat(kept_mask[np.maximum(rows[name], 0)], multiplier)
        feeding = consumer._inbound_nodes[0].parent_nodes[0].operation.name  # pylint: disable=protected-access
        a = _activations(model, feeding, x)
        out_h, out_w = _output_size(consumer, a.shape[1:3])
        source = _window_source(consumer, a)
        source_ref = _window_source(original, _activations(reference.model, feeding, x))
        del a
        w, w_ref = _taps_kernel(consumer), _taps_kernel(original)
        mapped = reference.outputs.get(name, np.arange(w.shape[-1]))
        w_ref = w_ref[:, :, mapped]
        bias_gap = (_bias(original)[mapped] if original.use_bias else 0.0) - _bias(consumer)
        features = len(w) * int(solved.sum())
        samples = min(len(source) * out_h * out_w, max(THINET_SAMPLES, 8 * features))
        n, ys, xs = np.unravel_index(rng.choice(len(source) * out_h * out_w, samples, replace=False),
                                     (len(source), out_h, out_w))
        gram, moment = np.zeros((features, features)), np.zeros((features, w.shape[-1]))
        for i in range(0, samples, _CHUNK):
            at = slice(i, i + _CHUNK)
            windows = _windows(consumer, source, n[at], ys[at], xs[at])
            wanted = np.einsum("str,tro->so", _windows(original, source_ref, n[at], ys[at], xs[at]), w_ref)
            fixed = np.einsum("str,tro->so", windows[:, :, ~mine], w[:, ~mine])
            f = windows[:, :, solved].reshape(len(windows), -1)
            gram += f.T @ f
            moment += f.T @ (wanted + bias_gap - fixed)
        ridge = RIDGE * float(np.trace(gram)) / max(features, 1)
        w[:, solved] = np.linalg.solve(gram + ridge * np.eye(features), moment).reshape(len(w), int(solved.sum()),
                                                                                         -1)
        w[:, mine & ~solved] = 0.0
        kernel = thinning.output_kernel(consumer)
        kernel.assign(w.reshape(tuple(kernel.shape)).astype(kernel.dtype))
