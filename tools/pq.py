"""pq: product quantization of conv and dense weights by activation reconstruction ("And the Bit Goes Down").

    python tools/pq.py --input=net.keras --output=net_pq.keras --block_size=4 --centroids=256 \
        --layer_epochs=1 --epochs=2 --train_images=data/train

k x k convs are split into their k*k spatial slices; 1x1 convs and dense
layers into blocks of --block_size input channels (which must divide the
input width).  Each layer's codebook is learned bottom-up with an EM that
minimizes the error of the layer's outputs on the training images, its
codewords are fine-tuned by distillation from the original after each layer
(--layer_epochs), then all codebooks together (--epochs), and batch-norm
statistics are re-estimated.  The table reports the real storage: indices,
codebooks and every parameter left uncompressed.  The .keras holds the
reconstructed weights (it converts and runs like any model).
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_JOB = common.define_training_flags(epochs=2)
_BLOCK = flags.DEFINE_integer("block_size", 4, "Subvector length for 1x1 convs and dense layers (k x k convs: k*k).")
_CENTROIDS = flags.DEFINE_integer("centroids", 256, "Codewords per layer.")
_ITERATIONS = flags.DEFINE_integer("iterations", 20, "EM iterations per layer.")
_LAYER_EPOCHS = flags.DEFINE_integer("layer_epochs", 1, "Codeword fine-tuning epochs after each layer.",
                                     lower_bound=0)
_MAX_ROWS = flags.DEFINE_integer("max_rows", 8192, "Activation rows sampled per layer for the EM.")
_LAYERS = flags.DEFINE_list("layers", [], "Only these layers (default: every Conv2D and Dense with more subvectors "
                            "than codewords).")
_EXCLUDE = flags.DEFINE_list("exclude", [], "Layers left float.")


def main() -> None:
    from tfcompress.api.keras_jobs import pq

    input_path, default_run, kwargs = common.keras_job(_JOB)

    def progress(q):
        if _JOB["progress"].value:
            print(f"  {q.name}: {len(q.codebook)} codewords of {q.d}, relative output error {q.error:.4f}",
                  flush=True)

    result = pq(input_path, block_size=_BLOCK.value, centroids=_CENTROIDS.value, iterations=_ITERATIONS.value,
                layer_epochs=_LAYER_EPOCHS.value, max_rows=_MAX_ROWS.value, layers=_LAYERS.value,
                exclude=_EXCLUDE.value, progress=progress, **kwargs)
    common.print_job("pq", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
