"""Per-layer pruning sensitivity, and per-layer sparsities proposed for a global target.

Each prunable layer is pruned alone, by magnitude and without retraining, at
increasing sparsities; the top-1 agreement with the unpruned model on the
given images traces that layer's curve (the sensitivity analysis of Han et
al., arXiv:1506.02626, Sec. 4, and of TF's pruning guidance).  For a global
target (zero weights over all prunable weights), one agreement level is
found by bisection such that giving every layer the largest sparsity whose
agreement stays at or above that level reaches the target: robust layers are
pruned hard, sensitive ones lightly.
"""

import dataclasses
from typing import Callable, Dict, List, Sequence

import keras
import numpy as np

from tfcompress.errors import TfcError
from tfcompress.keras.heads import class_head, predict_all
from tfcompress.prune.magnitude import PRUNABLE, kernel_names, magnitude_mask

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclasses.dataclass
class Sensitivity:
    """Attributes:
      sparsities: the grid.
      agreement: layer -> top-1 agreement at each grid sparsity (that layer pruned alone).
      weights: layer -> kernel size.
    """
    sparsities: List[float]
    agreement: Dict[str, List[float]]
    weights: Dict[str, int]


def analyze(model, images: np.ndarray, sparsities: Sequence[float] = DEFAULT_SPARSITIES,
            layers: Sequence[str] = ()) -> Sensitivity:
    """Prunes each layer alone at each sparsity and measures top-1 agreement (the model is restored after).

    Raises:
      TfcError: a sparsity outside (0, 1), an unknown or unprunable layer, or no prunable layer.
    """
    grid = sorted(float(s) for s in sparsities)
    if not grid or any(not 0.0 < s < 1.0 for s in grid):
        raise TfcError(f"sensitivity sparsities must be in (0, 1), got {list(sparsities)}")
    chosen = [l for l in model.layers if isinstance(l, PRUNABLE) and (not layers or l.name in layers)]
    missing = sorted(set(layers) - {l.name for l in chosen})
    if missing:
        raise TfcError(f"cannot analyze {', '.join(missing)}: not a prunable layer of the model")
    if not chosen:
        raise TfcError("the model has no prunable layer (Conv2D, DepthwiseConv2D, SeparableConv2D or Dense)")
    head = class_head(model)
    if head is None:
        raise TfcError("sensitivity measures top-1 agreement: the model has no class output")
    reference = np.argmax(predict_all(model, images)[head.index], axis=1)
    agreement, sizes = {}, {}
    for layer in chosen:
        # Every kernel of the layer (a separable conv has two) pruned to the same sparsity, as `prune` does.
        kernels = {name: keras.ops.convert_to_numpy(getattr(layer, name)) for name in kernel_names(layer)}
        sizes[layer.name] = sum(int(k.size) for k in kernels.values())
        curve = []
        for s in grid:
            if any(int(round(s * k.size)) >= k.size for k in kernels.values()):
                curve.append(0.0)
                continue
            for name, kernel in kernels.items():
                getattr(layer, name).assign(kernel * magnitude_mask(kernel, s))
            pred = np.argmax(predict_all(model, images)[head.index], axis=1)
            curve.append(float(np.mean(pred == reference)))
        for name, kernel in kernels.items():
            getattr(layer, name).assign(kernel)
        agreement[layer.name] = curve
    return Sensitivity(sparsities=grid, agreement=agreement, weights=sizes)


def largest_within(grid: Sequence[float], curve: Sequence[float], level: float) -> float:
    """Largest fraction with quality >= level, interpolating linearly between the grid points; quality is 1.0
    at 0 and the curve is made non-increasing."""
    points = [(0.0, 1.0)] + list(zip(grid, np.minimum.accumulate(curve)))
    best = 0.0
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if a1 >= level:
            best = s1
        elif a0 >= level:
            best = s0 + (s1 - s0) * (a0 - level) / (a0 - a1)
            break
        else:
            break
    return best


def allocate(grid: Sequence[float], quality: Dict[str, Sequence[float]],
             reached: Callable[[Dict[str, float]], float], target: float) -> Dict[str, float]:
    """Per-item fractions (at most max(grid)) with `reached(fractions) >= target`, for a `reached` that grows
    with every fraction: one quality level is found by bisection, and each item gets the largest fraction whose
    quality stays at or above it (its curve over `grid`, 1.0 at 0), so robust items go far and sensitive ones
    little.  If even max(grid) everywhere falls short, that is returned."""

    def plan(level):
        return {n: largest_within(grid, c, level) for n, c in quality.items()}

    lo = min(min(c) for c in quality.values()) - 1.0  # Quality levels: lo always reaches the target, hi may not.
    hi = 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if reached(plan(mid)) >= target:
            lo = mid
        else:
            hi = mid
    return plan(lo)


def propose(result: Sensitivity, target: float) -> Dict[str, float]:
    """Per-layer sparsities (rounded down to 0.01) whose weighted mean reaches `target`, if the grid allows.

    Raises:
      TfcError: target outside (0, 1) or beyond the largest analyzed sparsity.
    """
    if not 0.0 < target < 1.0:
        raise TfcError(f"--target_sparsity must be in (0, 1), got {target}")
    if target > max(result.sparsities):
        raise TfcError(f"--target_sparsity {target} is beyond the largest analyzed sparsity "
                       f"{max(result.sparsities)}; add larger --sparsities")
    total = sum(result.weights.values())

    def reached(p):
        return sum(p[n] * result.weights[n] for n in p) / total

    plan = allocate(result.sparsities, result.agreement, reached, target)
    proposal = {n: float(np.floor(s * 100) / 100) for n, s in plan.items()}
    # Rounding down may fall just short: raise the most robust layers by 0.01 until the target is met.
    order = sorted(proposal, key=lambda n: -result.agreement[n][-1])
    i = 0
    while reached(proposal) < target and i < 100 * len(order):
        n = order[i % len(order)]
        if proposal[n] + 0.01 <= max(result.sparsities):
            proposal[n] = round(proposal[n] + 0.01, 2)
        i += 1
    return proposal


def plot(result: Sensitivity, path) -> None:
    """One agreement-vs-sparsity curve per layer, written as a PNG to `path` (a file name or binary file)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    markers = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
    for i, (name, curve) in enumerate(result.agreement.items()):
        # Colours and markers repeat after 10 layers; the line style tells those apart.
        ax.plot([0.0] + result.sparsities, [100.0] + [100 * a for a in curve], marker=markers[i % len(markers)],
                linestyle=("-", "--", ":")[(i // 10) % 3], label=f"{name} ({result.weights[name]} weights)")
    ax.set_xlabel("sparsity of the layer (pruned alone, no retraining)")
    ax.set_ylabel("top-1 agreement with the unpruned model (%)")
    ax.set_title("pruning sensitivity per layer")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
