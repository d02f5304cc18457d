"""Block dropping for residual networks, chosen by recoverability per unit of latency.

PRACTISE (Wang & Wu, "Practical Network Acceleration with Tiny Sets of
Images", CVPR 2023, arXiv:2202.07861) accelerates a network with few images
by removing whole residual blocks rather than filters.  For each candidate
block:

1. the block is dropped (its output is replaced by its input: the identity
   shortcut alone remains);
2. bias-free 1×1 adapters, initialized to the identity, are inserted in front
   of every conv or dense layer that reads the dropped position (directly, or
   through average pooling, zero padding or dropout, which commute with a
   per-position linear map);
3. only the adapters are trained, on the tiny image set, to make the
   network's feature (the classifier's input) mimic the original's (MSE);
4. the feature error that remains is the block's *recoverability*: how hard
   the network is to recover without it.

A block's score is its recoverability divided by the latency its removal
saves, measured with LiteRT on the converted model; the blocks with the
lowest scores are dropped.  The adapters of the final model are trained the
same way, then folded into the layers they feed (exact: a bias-free 1×1 map
commutes with zero padding and is absorbed into the next kernel, see
`fold_adapters`), and the whole network is fine-tuned by feature mimicking.

Only blocks with an identity shortcut can be dropped (an Add whose one input
is the block's own input); blocks with a projection shortcut change the
tensor shape and stay.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from tfcompress.keras.train import TrainConfig, fit, fit_features
from tfcompress.errors import TfcError
from tfcompress.io.keras_models import copy_model
from tfcompress.keras.graph import call_layer, layer_graph, rebuild
from tfcompress.keras.heads import predict_all

# Layers between a dropped block and a conv/dense consumer through which an adapter may move:
# each commutes with a bias-free per-position linear map of the channels.
COMMUTING = ("AveragePooling2D", "GlobalAveragePooling2D", "ZeroPadding2D", "Dropout", "Identity")
# Layers that may end a block right after its Add.
END_ACTIVATIONS = ("ReLU", "Activation")
ADAPTER_SUFFIX = "_adapter"


@dataclasses.dataclass(frozen=True)
class Block:
    """An identity-shortcut residual block.

    Attributes:
      add: the Add layer that merges the shortcut and the residual branch.
      source: the layer whose output enters the block (and is the shortcut).
      end: the layer whose output leaves the block (the Add, or the activation right after it).
      layers: every layer dropped with the block (residual branch, Add, end activation).
    """
    add: str
    source: str
    end: str
    layers: Tuple[str, ...]


def find_blocks(model) -> List[Block]:
    """Identity-shortcut residual blocks of a functional model, in graph order.

    A block is an Add of two inputs where one input is the output of layer s
    and the other is reached from s through a chain of single-input layers
    used nowhere else.
    """
    nodes = layer_graph(model)
    blocks = []
    for node in nodes.values():
        if node.kind != "Add" or len(node.inputs) != 2:
            continue
        for source, branch_end in (node.inputs, node.inputs[::-1]):
            chain, current, ok = [], branch_end, True
            while current != source:
                n = nodes[current]
                if len(n.inputs) != 1 or n.consumers != [chain[-1] if chain else node.name] or n.kind == "InputLayer":
                    ok = False
                    break
                chain.append(current)
                current = n.inputs[0]
            if not ok or not chain:
                continue
            end = node.name
            if len(node.consumers) == 1 and nodes[node.consumers[0]].kind in END_ACTIVATIONS:
                end = node.consumers[0]
            layers = tuple(reversed(chain)) + (node.name,) + ((end,) if end != node.name else ())
            blocks.append(Block(add=node.name, source=source, end=end, layers=layers))
            break
    return blocks


def feature_layer(model) -> str:
    """The layer whose output the last Dense layer reads: the feature PRACTISE mimics."""
    nodes = layer_graph(model)
    dense = [n for n in nodes.values() if n.kind == "Dense"]
    if not dense or len(dense[-1].inputs) != 1:
        raise TfcError("block dropping mimics the classifier's input feature, but the model has no final Dense "
                       "layer with one input; pass --feature_layer")
    return dense[-1].inputs[0]


def _adapter(consumer, channels: int, name: str):
    if isinstance(consumer, keras.layers.Dense):
        return keras.layers.Dense(channels, use_bias=False, kernel_initializer="identity", name=name)
    return keras.layers.Conv2D(channels, 1, use_bias=False, name=name,
                               kernel_initializer=keras.initializers.Constant(np.eye(channels)[None, None]))


def _foldable(layer) -> bool:
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
        return False
    if isinstance(layer, keras.layers.Conv2D):
        return layer.groups == 1
    return isinstance(layer, keras.layers.Dense)


def drop(model, blocks: Sequence[Block], adapters: bool = True):
    """(new model, {adapter name: consumer name}): `model` without `blocks`, optionally with adapters.

    The new model has its own weights (`model` is not changed); the output of
    each dropped block is its source's output.
    """
    clone = copy_model(model)
    nodes = layer_graph(clone)
    skipped = {name for b in blocks for name in b.layers}
    alias = {b.end: b.source for b in blocks}
    outputs = {t._keras_history[0].name for t in clone.outputs}  # pylint: disable=protected-access
    if skipped & outputs:
        raise TfcError("a block that produces a model output cannot be dropped")
    tainted, made = set(), {}

    def build(name, layer, tensors):
        if name in alias:
            source = name
            while source in alias:
                source = alias[source]
            tainted.add(name)
            return tensors[source]
        if name in skipped:
            return None
        node = nodes[name]
        args = [tensors[src] for src in node.inputs]
        if adapters and len(args) == 1 and node.inputs[0] in tainted and _foldable(layer):
            adapter = _adapter(layer, int(args[0].shape[-1]), name + ADAPTER_SUFFIX)
            args = [adapter(args[0])]
            made[adapter.name] = name
        if len(node.inputs) == 1 and node.inputs[0] in tainted and node.kind in COMMUTING:
            tainted.add(name)
        return call_layer(layer, args)

    new = rebuild(clone, nodes, build)
    return copy_model(new), made


def fold_adapters(adapted, adapters: Dict[str, str], plain):
    """Copies `adapted`'s weights into `plain` (the same model built without adapters), folding each adapter.

    An adapter A (1×1, no bias: y = x A) in front of a conv with kernel W
    gives conv(x A, W) = conv(x, W') with W'[.., i, o] = Σ_j A[i, j] W[.., j, o],
    exactly, since zero padding commutes with A.  `plain` is changed in place.
    """
    for layer in plain.layers:
        weights = adapted.get_layer(layer.name).get_weights()
        adapter = next((a for a, c in adapters.items() if c == layer.name), None)
        if adapter is not None:
            a = adapted.get_layer(adapter).get_weights()[0]
            a = a.reshape(a.shape[-2], a.shape[-1])
            weights[0] = np.einsum("ij,...jo->...io", a, weights[0])
        layer.set_weights(weights)
    return plain


# Times Keras models on the target runtime: seconds per image of each, measured in one interleaved run.
# The caller supplies it (for example `evaluate.artifacts.KerasLatency`, LiteRT on the converted model), so
# this module needs no exporter or runtime.
Latency = Callable[[Sequence[keras.Model]], List[float]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DropConfig:
    """Attributes:
      drop_blocks: drop this many blocks (0: use latency_target).
      latency_target: drop blocks until latency falls by at least this fraction, in (0, 1).
      adapter_epochs: epochs of adapter-only training per candidate block and for the final model.
    """
    drop_blocks: int = 0
    latency_target: float = 0.0
    adapter_epochs: int = 10

    def __post_init__(self):
        if (self.drop_blocks > 0) == (self.latency_target > 0):
            raise TfcError("give exactly one of --drop_blocks (>= 1) and --latency_target (a fraction in (0, 1))")
        if not 0.0 <= self.latency_target < 1.0:
            raise TfcError(f"--latency_target must be in (0, 1), got {self.latency_target}")
        if self.drop_blocks < 0 or self.adapter_epochs < 0:
            raise TfcError("--drop_blocks and --adapter_epochs must be >= 0")


@dataclasses.dataclass
class BlockScore:
    block: Block
    recoverability: float   # feature MSE after adapter training, relative to the feature's mean square
    saving: float           # seconds saved per image by dropping it alone
    score: float            # recoverability / saving (lower: drop first)


@dataclasses.dataclass
class DropResult:
    model: object
    scores: List[BlockScore]
    dropped: List[Block]
    latency: Tuple[float, float]   # seconds per image: original, result
    fold_error: float              # max |folded - adapted| output difference


def score_blocks(model, blocks: Sequence[Block], feature: str, x: np.ndarray, target: np.ndarray,
                 config: DropConfig, train: TrainConfig, latency: Latency,
                 progress=None) -> Tuple[List[BlockScore], float]:
    """(scores, the original's seconds per image): recoverability and saving of dropping each block alone.

    `latency` times the original and every single-block drop in one interleaved run.
    """
    scale = float(np.mean(target ** 2)) or 1.0
    recover, candidates = [], [model]
    for block in blocks:
        adapted, adapters = drop(model, [block])
        loss = fit_features(adapted, feature, x, target, dataclasses.replace(train, epochs=config.adapter_epochs,
                                                                                 verbose=0),
                            trainable=list(adapters))
        recover.append(loss / scale)
        candidates.append(drop(model, [block], adapters=False)[0])
        if progress is not None:
            progress(block, recover[-1])
    seconds = latency(candidates)
    scores = []
    for block, rec, t in zip(blocks, recover, seconds[1:]):
        saving = seconds[0] - t
        # A block whose removal saves nothing measurable is never worth dropping first.
        score = rec / saving if saving > 0 else float("inf")
        scores.append(BlockScore(block=block, recoverability=rec, saving=saving, score=score))
    return scores, seconds[0]


def drop_blocks(model, x: np.ndarray, config: DropConfig, train: TrainConfig, *, latency: Latency,
                feature: Optional[str] = None, labels: Optional[np.ndarray] = None, progress=None) -> DropResult:
    """PRACTISE on `model` with images x: score, choose, drop, fold adapters, fine-tune.

    The final fine-tune runs `train.epochs` epochs of feature mimicking; with
    `labels` it uses the shared trainer instead (hard labels mixed with the
    original's soft targets by `train.alpha`).

    Raises:
      TfcError: no droppable block, more blocks asked than exist, or a
        latency target no set of droppable blocks reaches.
    """
    blocks = find_blocks(model)
    if not blocks:
        raise TfcError("the model has no residual block with an identity shortcut to drop")
    if config.drop_blocks > len(blocks):
        raise TfcError(f"--drop_blocks={config.drop_blocks} but the model has only {len(blocks)} droppable blocks")
    feature = feature or feature_layer(model)
    if any(feature in b.layers and feature != b.end for b in blocks):
        raise TfcError(f"feature layer {feature} lies inside a residual block")
    target = model.get_layer(feature).output
    target = keras.Model(model.inputs, target).predict(x, batch_size=64, verbose=0)
    scores, base_latency = score_blocks(model, blocks, feature, x, target, config, train, latency, progress)
    ranked = sorted(scores, key=lambda s: (s.score, s.recoverability))

    def measure(chosen):
        return latency([model, drop(model, chosen, adapters=False)[0]])

    if config.drop_blocks:
        chosen = [s.block for s in ranked[:config.drop_blocks]]
        seconds = measure(chosen)
    else:
        # Blocks join in score order until their summed single-drop savings reach the target; the
        # combination is then measured, and more blocks join while the measurement falls short.  Single-drop
        # savings can understate a combination's, so the full set is measured before giving up.
        chosen, estimate, seconds = [], 0.0, None
        for k, s in enumerate(ranked):
            chosen.append(s.block)
            estimate += max(s.saving, 0.0)
            if estimate < config.latency_target * base_latency and k < len(ranked) - 1:
                continue
            seconds = measure(chosen)
            if seconds[1] <= (1.0 - config.latency_target) * seconds[0]:
                break
        else:
            raise TfcError(f"dropping every droppable block ({len(blocks)}) cuts latency by "
                           f"{1.0 - seconds[1] / seconds[0]:.1%} (measured), not {config.latency_target:.0%}")
    adapted, adapters = drop(model, chosen)
    fit_features(adapted, feature, x, target, dataclasses.replace(train, epochs=config.adapter_epochs),
                 trainable=list(adapters))
    plain = fold_adapters(adapted, adapters, drop(model, chosen, adapters=False)[0])
    fold_error = max(float(np.max(np.abs(p - a))) for p, a in zip(predict_all(plain, x), predict_all(adapted, x)))
    if train.epochs and labels is not None:
        fit(plain, x, labels, train, teacher=model)
    elif train.epochs:
        fit_features(plain, feature, x, target, train)
    return DropResult(model=plain, scores=scores, dropped=chosen, latency=(seconds[0], seconds[1]),
                      fold_error=fold_error)
