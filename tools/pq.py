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
    from tfcompress.cluster import pq
    config = pq.PQConfig(block_size=_BLOCK.value, centroids=_CENTROIDS.value, iterations=_ITERATIONS.value,
                         max_rows=_MAX_ROWS.value, layers=tuple(_LAYERS.value), exclude=tuple(_EXCLUDE.value),
                         seed=_JOB["seed"].value)
    job = common.KerasJob(_JOB)

    def progress(q):
        if job.config.verbose:
            print(f"  {q.name}: {len(q.codebook)} codewords of {q.d}, relative output error {q.error:.4f}",
                  flush=True)

    result = pq.product_quantize(job.original, config, job.x, job.labels, job.config, teacher=job.teacher,
                                 layer_epochs=_LAYER_EPOCHS.value, progress=progress)
    rows = [["layer", "subvector", "codewords", "indices", "index bits", "codebook bits", "output error (EM)"]]
    for q in result.layers:
        rows.append([q.name, q.d, len(q.codebook), q.assignment.size, q.index_bits, q.codebook_bits,
                     f"{q.error:.4f}"])
    rows += [[name, "-", f"left float: {why}", "", "", "", ""] for name, why in result.skipped.items()]
    print(f"\npq: {job.input_path} -> {_JOB['output'].value} ({job.training_note()})")
    common.print_table(rows)
    print(f"storage: {result.float_bits // 8} bytes float32 -> {-(-result.compressed_bits // 8)} bytes "
          f"(indices + codebooks + every uncompressed parameter): {result.float_bits / result.compressed_bits:.1f}x")
    job.save_and_report(result.model)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
