"""lowrank: factorize dense and conv layers by truncated SVD, then optionally fine-tune.

    python tools/lowrank.py --input=net.keras --output=net_lowrank.keras --energy=0.9 --conv_mode=channel
    python tools/lowrank.py --input=net.keras --output=net_lowrank.keras --param_ratio=0.5 --epochs=5 \
        --train_images=data/train

Each chosen layer becomes two: `<layer>_svd` (the first factor) and the layer
itself (the second factor, with its bias and activation).  The rank keeps
--energy of the squared singular values, or fits --param_ratio of the
layer's weights, or is --rank.  With --epochs > 0 the factorized model is
fine-tuned (labels and/or distillation from the original, as prune does).
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_JOB = common.define_training_flags(epochs=0)
_ENERGY = flags.DEFINE_float("energy", 0.9, "Fraction of squared singular values kept.")
_PARAM_RATIO = flags.DEFINE_float("param_ratio", None, "Factors hold at most this fraction of a layer's weights "
                                  "(overrides --energy).")
_RANK = flags.DEFINE_integer("rank", None, "A fixed rank for every chosen layer (overrides both).")
_CONV_MODE = flags.DEFINE_enum("conv_mode", "channel", ["channel", "spatial"],
                               "channel: kxk conv with r filters then 1x1; spatial: kx1 then 1xk.")
_LAYERS = flags.DEFINE_list("layers", [], "Only these layers (default: every dense and conv that gets smaller).")


def main() -> None:
    from tfcompress.keras.train import fit, set_bn_statistics
    from tfcompress.lowrank.svd import LowRankConfig, factorize

    config = LowRankConfig(energy=_ENERGY.value, param_ratio=_PARAM_RATIO.value, rank=_RANK.value,
                           conv_mode=_CONV_MODE.value, layers=tuple(_LAYERS.value))
    job = common.KerasJob(_JOB)
    result = factorize(job.original, config)
    model = result.model
    if job.config.epochs:
        fit(model, job.x, job.labels, job.config, teacher=job.teacher)
        set_bn_statistics(model, job.batches)
    print(f"\nlowrank: {job.input_path} -> {_JOB['output'].value} ({config.conv_mode} SVD for convs"
          + (f", fine-tuned: {job.training_note()}" if job.config.epochs else ", not fine-tuned") + ")")
    common.print_table([["layer", "rank", "full rank"]] + [[n, r, f] for n, (r, f) in result.ranks.items()]
                       + [[n, "-", f"left whole: {why}"] for n, why in result.skipped.items()])
    job.save_and_report(model)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
