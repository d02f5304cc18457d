"""benchmark_prune: filter-pruning criteria compared at equal compression, in one run.

    python tools/benchmark_prune.py
    python tools/benchmark_prune.py --ratio=0.5 --epochs=2 --layer_epochs=1

On the shipped digits model, every criterion (ThiNet, APoZ, L1, L2, random)
thins the same layers by the same ratio: the convs ThiNet can handle (one
conv or dense consumer through per-channel layers), so all rows have the
same parameters and MACs.  Each is fine-tuned by distillation from the
original on the 1,397 scikit-learn digits that are not shipped (no labels
used), and measured on the 300 shipped held-out digits: top-1 agreement with
the original right after thinning and after fine-tuning, and LiteRT latency
(float32, XNNPACK, 1 thread, batch 1) as a ratio to the unpruned model.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
else:
    from . import common  # noqa: E402

from absl import flags  # noqa: E402

common.define_onednn_training_flag()  # Fine-tuning runs TF's own kernels unless --onednn_training.

_RATIO = flags.DEFINE_float("ratio", 0.5, "Fraction of channels removed from each thinned layer.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Global fine-tuning epochs.", lower_bound=0)
_LAYER_EPOCHS = flags.DEFINE_integer("layer_epochs", 1, "Fine-tuning epochs after each layer.", lower_bound=0)
_CRITERIA = flags.DEFINE_list("criteria", ["thinet", "apoz", "l1", "l2", "random"], "Criteria to compare.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for sampling, random choice and training.")
_RUNS = flags.DEFINE_integer("runs", 100, "Timed LiteRT runs per model.", lower_bound=50)


def _latency(models, sample):
    """Median seconds per invoke of each Keras model's float32 flatbuffer (see interleaved_latency)."""
    from tfcompress.evaluate.artifacts import interleaved_latency
    from tfcompress.export.tflite import keras_float_flatbuffer
    return interleaved_latency([keras_float_flatbuffer(m) for m in models], sample, _RUNS.value)


def main() -> None:
    import numpy as np
    import keras
    from tfcompress.data.images import Preprocessing, iter_batches, list_images
    from tfcompress.keras.train import TrainConfig, batches, set_bn_statistics
    from tfcompress.evaluate.zoo import digits_training_set
    from tfcompress.keras.cost import count
    from tfcompress.prune import filters, thinning

    keras.utils.set_random_seed(_SEED.value)
    original = keras.saving.load_model(common.DEFAULT_MODEL, safe_mode=True, compile=False)
    x, _ = digits_training_set()
    prep = Preprocessing(height=32, width=32, channels=3)
    held = np.concatenate(list(iter_batches(list_images(common.DEFAULT_EVAL), prep, 100)))
    reference = original.predict(held, verbose=0).argmax(1)
    layers = tuple(t.name for t in thinning.plan(original)
                   if isinstance(original.get_layer(t.name), keras.layers.Conv2D) and len(t.consumers) == 1
                   and not any(type(original.get_layer(p)).__name__ in ("Concatenate", "Flatten") for p in t.path))
    config = TrainConfig(epochs=_EPOCHS.value, seed=_SEED.value, verbose=0)
    bn_batches = batches(x)
    rows, models = [], [original]
    for criterion in _CRITERIA.value:
        filter_config = filters.FilterConfig(criterion=criterion, ratio=_RATIO.value, layers=layers, seed=_SEED.value)
        bare = filters.prune_filters(original, filter_config, x).model
        set_bn_statistics(bare, bn_batches)
        before = float(np.mean(bare.predict(held, verbose=0).argmax(1) == reference))

        tuned = filters.prune_and_finetune(original, filter_config, x, None, config, teacher=original,
                                           layer_epochs=_LAYER_EPOCHS.value).model
        after = float(np.mean(tuned.predict(held, verbose=0).argmax(1) == reference))
        rows.append([criterion, before, after, *count(tuned)])
        models.append(tuned)
    latency = _latency(models, held[:1])
    params0, macs0 = count(original)
    table = [["criterion", "agreement, thinned only", "agreement, fine-tuned", "params", "MACs",
              "LiteRT latency / unpruned"]]
    table.append(["(unpruned)", "100.00%", "100.00%", params0, macs0, "1.00x"])
    for (criterion, before, after, params, macs), lat in zip(rows, latency[1:]):
        table.append([criterion, f"{before:.2%}", f"{after:.2%}", params, macs, f"{lat / latency[0]:.2f}x"])
    print(f"\nbenchmark_prune: digits model, layers {', '.join(layers)} thinned by {_RATIO.value:g}; fine-tuned by "
          f"distillation on {len(x)} unshipped digits ({_LAYER_EPOCHS.value} epoch(s) per layer, {_EPOCHS.value} "
          f"global); agreement on the {len(held)} shipped held-out digits")
    common.print_table(table)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
