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
    from tfcompress.api.keras_jobs import lowrank

    input_path, default_run, kwargs = common.keras_job(_JOB)
    result = lowrank(input_path, energy=_ENERGY.value, param_ratio=_PARAM_RATIO.value, rank=_RANK.value,
                     conv_mode=_CONV_MODE.value, layers=_LAYERS.value, **kwargs)
    common.print_job("lowrank", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
