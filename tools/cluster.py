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
    from tfcompress.cluster import kmeans
    config = kmeans.ClusterConfig(clusters=_CLUSTERS.value, init=_INIT.value, iterations=_ITERATIONS.value,
                                  layers=tuple(_LAYERS.value), exclude=tuple(_EXCLUDE.value), seed=_JOB["seed"].value)
    job = common.KerasJob(_JOB)
    result, clustered = kmeans.cluster_and_finetune(job.original, config, job.x, job.labels, job.config,
                                                    teacher=job.teacher)
    rows = [["layer", "weights", "zeros kept", "codewords", "bits", "vs float32"]]
    for k in clustered:
        rows.append([f"{k.layer}/{k.variable}", k.size, k.zeros, k.codewords, k.bits, f"{k.bits / (32 * k.size):.3f}"])
    bits, size = sum(k.bits for k in clustered), sum(k.size for k in clustered)
    rows.append(["total", size, sum(k.zeros for k in clustered), "", bits, f"{bits / (32 * size):.3f}"])
    print(f"\ncluster: {job.input_path} -> {_JOB['output'].value} ({config.clusters} clusters, {config.init} init, "
          f"{job.training_note()})")
    common.print_table(rows)
    job.save_and_report(result)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
