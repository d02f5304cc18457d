"""drop_blocks: remove whole residual blocks (PRACTISE), chosen by recoverability per unit of LiteRT latency.

    python tools/drop_blocks.py --input=resnet.keras --output=resnet_drop.keras --latency_target=0.25 \
        --train_images=data/tiny_unlabelled
    python tools/drop_blocks.py --input=resnet.keras --output=resnet_drop.keras --drop_blocks=2 --epochs=20

Every residual block with an identity shortcut is scored on the (tiny)
--train_images: the block is dropped, bias-free 1x1 adapters are inserted in
front of the layers that read its position, and only the adapters are trained
(--adapter_epochs) so that the feature the classifier reads mimics the
original's.  The remaining error (relative to the feature's mean square) is
the block's recoverability; divided by the LiteRT latency its removal saves
(float32 .tflite, XNNPACK, batch 1), it is the block's score.  The lowest
scores are dropped: --drop_blocks of them, or as many as it takes to cut the
measured latency by --latency_target.  The adapters are then trained again,
folded into their layers (the fold is checked numerically) and the model is
fine-tuned for --epochs by feature mimicking (or, with labelled images and
--distill_from=none, on the labels).
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
_DROP = flags.DEFINE_integer("drop_blocks", 0, "Drop this many blocks (or give --latency_target).", lower_bound=0)
_TARGET = flags.DEFINE_float("latency_target", 0.0, "Drop blocks until LiteRT latency falls by this fraction.")
_ADAPTER_EPOCHS = flags.DEFINE_integer("adapter_epochs", 10, "Adapter-only training epochs per scored block.",
                                       lower_bound=0)
_FEATURE = flags.DEFINE_string("feature_layer", None, "Layer whose output is mimicked (default: the input of the "
                               "last Dense layer).")
_RUNS = flags.DEFINE_integer("runs", 60, "Timed LiteRT invokes per model.", lower_bound=10)
_THREADS = flags.DEFINE_integer("threads", 1, "LiteRT threads for the latency measurements.", lower_bound=1)

def main() -> None:
    from tfcompress.api.keras_jobs import drop_blocks

    input_path, default_run, kwargs = common.keras_job(_JOB)

    def progress(block, recoverability):
        if _JOB["progress"].value:
            print(f"scored block {block.add}: recoverability {recoverability:.4f}", flush=True)

    result = drop_blocks(input_path, drop=_DROP.value, latency_target=_TARGET.value,
                         adapter_epochs=_ADAPTER_EPOCHS.value, feature_layer=_FEATURE.value, latency_runs=_RUNS.value,
                         threads=_THREADS.value, progress=progress, **kwargs)
    common.print_job("drop_blocks", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
