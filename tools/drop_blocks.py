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

# A folded model must reproduce the adapted one to this absolute error (float32 rounding only).
FOLD_TOLERANCE = 1e-4


def main() -> None:
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.artifacts import KerasLatency
    from tfcompress.keras.train import set_bn_statistics
    from tfcompress.prune import blocks

    config = blocks.DropConfig(drop_blocks=_DROP.value, latency_target=_TARGET.value,
                               adapter_epochs=_ADAPTER_EPOCHS.value)
    job = common.KerasJob(_JOB)

    def progress(block, recoverability):
        if job.config.verbose:
            print(f"scored block {block.add}: recoverability {recoverability:.4f}", flush=True)

    latency = KerasLatency(job.x, runs=_RUNS.value, threads=_THREADS.value)
    result = blocks.drop_blocks(job.original, job.x, config, job.config, latency=latency, feature=_FEATURE.value,
                                labels=None if job.distill else job.labels, progress=progress)
    if result.fold_error > FOLD_TOLERANCE:
        raise TfcError(f"folding the adapters changed the outputs by {result.fold_error:.2e} "
                       f"(> {FOLD_TOLERANCE:g}); nothing written")
    set_bn_statistics(result.model, job.batches)
    dropped = {b.add for b in result.dropped}
    rows = [["block (Add)", "layers", "recoverability", "LiteRT saving", "score", "dropped"]]
    before, after = result.latency
    for s in sorted(result.scores, key=lambda s: s.score):
        rows.append([s.block.add, len(s.block.layers), f"{s.recoverability:.4f}",
                     f"{s.saving * 1e6:.0f} us ({s.saving / before:.1%})", f"{s.score:.4g}",
                     "yes" if s.block.add in dropped else ""])
    print(f"\ndrop_blocks: {job.input_path} -> {_JOB['output'].value} ({len(dropped)} of {len(result.scores)} "
          f"blocks dropped; {job.training_note()})")
    common.print_table(rows)
    print(f"LiteRT float32 latency per image: {before * 1e6:.0f} us -> {after * 1e6:.0f} us "
          f"({after / before:.2f}x, a {1 - after / before:.1%} cut); adapter fold max error {result.fold_error:.1e}")
    job.save_and_report(result.model)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
