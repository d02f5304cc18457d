"""sensitivity: prune each layer alone at increasing sparsity, plot the agreement curves, propose a sparsity map.

    python tools/sensitivity.py --input=net.keras --images=data/sample --output=sensitivity.png \
        --target_sparsity=0.8

Prints a table of top-1 agreement per layer and sparsity, writes the curves
as a PNG, and with --target_sparsity prints per-layer sparsities for that
global target in the form `prune --sparsity_map=` takes.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_INPUT = flags.DEFINE_string("input", None, "Keras 3 model (.keras).  Default: the shipped digits model.")
_OUTPUT = flags.DEFINE_string("output", None, "Output PNG with the curves.")
_OVERWRITE = common.define_overwrite_flag()
_IMAGES = flags.DEFINE_string("images", None, "Images to measure agreement on (default: the shipped "
                              "calibration images).")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.3", "0.5", "0.7", "0.8", "0.9", "0.95"], "Sparsity grid.")
_TARGET = flags.DEFINE_float("target_sparsity", None, "Global target: propose per-layer sparsities for it.")
_LAYERS = flags.DEFINE_list("layers", [], "Only these layers (default: every conv, depthwise conv and dense).")
_NORM = common.define_normalization_flags(0.0, 255.0)


def main() -> None:
    import numpy as np
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.errors import TfcError
    from tfcompress.io.atomic import atomic_file, check_output
    from tfcompress.io.keras_models import load_keras
    from tfcompress.io.loaders import detect_format
    from tfcompress.prune import sensitivity

    if not _OUTPUT.value or not _OUTPUT.value.endswith(".png"):
        raise TfcError("--output must name a .png file")
    input_path = _INPUT.value or common.DEFAULT_MODEL
    check_output(_OUTPUT.value, [input_path, _IMAGES.value], overwrite=_OVERWRITE.value, directory=False)
    if detect_format(input_path) != "keras":
        raise TfcError(f"sensitivity takes a Keras 3 .keras model; {input_path} is not one")
    try:
        sparsities = [float(s) for s in _SPARSITIES.value]
    except ValueError as e:
        raise TfcError(f"--sparsities must be numbers, got {_SPARSITIES.value}") from e
    model = load_keras(input_path)
    _, h, w, c = model.input_shape
    prep = Preprocessing(height=int(h), width=int(w), channels=int(c), mean=_NORM["input_mean"].value,
                         std=_NORM["input_std"].value)
    images = np.concatenate(list(iter_batches(list_images(_IMAGES.value or common.DEFAULT_CALIBRATION), prep, 64)))
    result = sensitivity.analyze(model, images, sparsities, _LAYERS.value)
    proposal = sensitivity.propose(result, _TARGET.value) if _TARGET.value is not None else None
    with atomic_file(_OUTPUT.value, overwrite=_OVERWRITE.value) as f:
        sensitivity.plot(result, f)
    print(f"\nsensitivity of {input_path} on {len(images)} images (top-1 agreement, each layer pruned alone):")
    common.print_table([["layer", "weights"] + [f"{s:g}" for s in result.sparsities]] + [
        [name, result.weights[name]] + [f"{100 * a:.1f}%" for a in curve] for name, curve in result.agreement.items()])
    print(f"curves: {_OUTPUT.value}")
    if proposal is not None:
        total = sum(result.weights.values())
        reached = sum(proposal[n] * result.weights[n] for n in proposal) / total
        print(f"proposal for a global sparsity of {_TARGET.value:g} (reaches {reached:.3f}):")
        print("--sparsity_map=" + ",".join(f"{n}={s:g}" for n, s in proposal.items()))


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
