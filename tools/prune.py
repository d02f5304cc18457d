"""prune: magnitude pruning or filter thinning of a Keras 3 model, trained on labels or by distillation.

    python tools/prune.py --input=net.keras --output=net_pruned.keras --method=magnitude \
        --sparsity=0.8 --schedule=polynomial --epochs=4 --train_images=data/train
    python tools/prune.py --input=net.keras --output=net_thin.keras --method=thinet --ratio=0.5 \
        --layer_epochs=1 --epochs=4 --train_images=data/unlabelled

--method=l1|l2|apoz|thinet|random removes whole channels (the saved model has
fewer parameters and MACs) by channel group: the convs tied by a residual
Add or an SE Multiply lose the same channels together (--noresidual_groups:
inside blocks only).  --ratio of every group's channels go, or, with
--allocation=sensitivity, --ratio of the model's MACs, spread over the
groups by how much thinning each alone changes the outputs on the training
images.  ThiNet refits the consumers of each thinned group to the original
model's outputs (--noto_original: ThiNet's own rescaling).  One group at a
time, each followed by --layer_epochs of fine-tuning, then --epochs of
global fine-tuning.

With labelled --train_images (DIR/<label>/*) the loss mixes hard labels and
the original model's soft targets (--alpha); with an unlabelled folder it
distils from the original alone (--distill_from=original, the default then).
Magnitude pruning's output holds plain layers with exact zeros, its
batch-norm statistics re-estimated on the training images; a thinned
model keeps those of its fine-tune (or, refitted by ThiNet and not
fine-tuned, the original's).  With no --input, the
shipped digits model is pruned on the shipped calibration images.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_JOB = common.define_training_flags(epochs=10)
_METHOD = flags.DEFINE_enum("method", "magnitude", ["magnitude", "l1", "l2", "apoz", "thinet", "random"],
                            "magnitude: zero small weights; l1/l2/apoz/thinet/random: remove channels.")
_RATIO = flags.DEFINE_float("ratio", 0.5, "Filter methods: fraction removed: of each channel group's channels "
                            "(--allocation=uniform) or of the model's MACs (--allocation=sensitivity).")
_ALLOCATION = flags.DEFINE_enum("allocation", "uniform", ["uniform", "sensitivity"],
                                "Filter methods: uniform: every channel group loses --ratio of its channels "
                                "(ThiNet's paper); sensitivity: each group's ratio follows its measured effect "
                                "on the outputs, removing --ratio of the model's MACs.")
_LAYERS = flags.DEFINE_list("layers", [], "Filter methods: only these layers (default: every prunable one).")
_LAYER_EPOCHS = flags.DEFINE_integer("layer_epochs", 1, "Filter methods: fine-tuning epochs after each layer.",
                                     lower_bound=0)
_RESIDUAL_GROUPS = flags.DEFINE_bool(
    "residual_groups", True, "Filter methods: also thin channel groups tied by residual Adds and SE Multiplies "
    "(every producer of the group at once); false thins inside blocks only.")
_TO_ORIGINAL = flags.DEFINE_bool(
    "to_original", True, "thinet: refit each thinned layer's consumers (whole kernels, least squares) to the "
    "original model's outputs; false: ThiNet's per-channel rescaling to the current model's outputs.")
_SPARSITY = flags.DEFINE_float("sparsity", 0.5, "Final fraction of zero weights per layer, in [0, 1).")
_SCHEDULE = flags.DEFINE_enum("schedule", "polynomial", ["constant", "polynomial"],
                              "constant: the final sparsity from the first step; polynomial: rising from 0 "
                              "(Zhu & Gupta) over the first --ramp fraction of training.")
_RAMP = flags.DEFINE_float("ramp", 0.6, "Polynomial schedule: fraction of the steps over which sparsity rises.")
_FREQUENCY = flags.DEFINE_integer("frequency", 10, "Update the masks every N steps.", lower_bound=1)
_SPARSITY_MAP = flags.DEFINE_list("sparsity_map", [], "Per-layer final sparsity: name=0.8,name2=0.5.")
_EXCLUDE = flags.DEFINE_list("exclude", [], "Layers left unpruned.")
_M_BY_N = flags.DEFINE_string("m_by_n", None, "Structured N:M sparsity, e.g. 2:4 (keep 2 of every 4 inputs).")


def main() -> None:
    from tfcompress.api.keras_jobs import prune

    input_path, default_run, kwargs = common.keras_job(_JOB)
    result = prune(input_path, method=_METHOD.value, sparsity=_SPARSITY.value, ratio=_RATIO.value,
                   schedule=_SCHEDULE.value, ramp=_RAMP.value, frequency=_FREQUENCY.value,
                   sparsity_map=_SPARSITY_MAP.value, exclude=_EXCLUDE.value, m_by_n=_M_BY_N.value,
                   layers=_LAYERS.value, layer_epochs=_LAYER_EPOCHS.value,
                   residual_groups=_RESIDUAL_GROUPS.value, allocation=_ALLOCATION.value,
                   to_original=_TO_ORIGINAL.value, **kwargs)
    common.print_job("prune", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
