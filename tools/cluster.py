"""cluster: k-means weight sharing (Deep Compression), codebooks fine-tuned on labels or by distillation.

    python tools/cluster.py --input=net_pruned.keras --output=net_clustered.keras --clusters=16 \
        --init=linear --epochs=5 --train_images=data/train

Every conv, depthwise, separable and dense kernel gets its own codebook of
--clusters centroids; exact zeros (a pruned model's) stay zero and outside
the codebook.  The codebooks are fine-tuned with the assignments fixed (the
gradient of a centroid is the sum over its members).  The table gives the
real storage: ceil(log2(codewords)) bits per weight plus 32-bit centroids.
`convert --per_tensor` keeps one codebook per layer in the int8 .tflite, and
`pack` stores it with entropy-coded indices.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

_JOB = common.define_training_flags(epochs=5)
_CLUSTERS = flags.DEFINE_integer("clusters", 16, "Centroids per kernel (2..256).")
_INIT = flags.DEFINE_enum("init", "linear", ["linear", "density", "kmeans++"], "Centroid initialization.")
_ITERATIONS = flags.DEFINE_integer("iterations", 50, "Lloyd iterations at most.")
_LAYERS = flags.DEFINE_list("layers", [], "Only these layers (default: every conv and dense layer).")
_EXCLUDE = flags.DEFINE_list("exclude", [], "Layers left float.")


def main() -> None:
    from tfcompress.api.keras_jobs import cluster

    input_path, default_run, kwargs = common.keras_job(_JOB)
    result = cluster(input_path, clusters=_CLUSTERS.value, init=_INIT.value, iterations=_ITERATIONS.value,
                     layers=_LAYERS.value, exclude=_EXCLUDE.value, **kwargs)
    common.print_job("cluster", input_path, _JOB, result)
    common.save_and_report(result, _JOB, default_run)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
