"""prune: magnitude pruning or filter thinning of a Keras 3 model, trained on labels or by distillation.

    python tools/prune.py --input=net.keras --output=net_pruned.keras --method=magnitude \
        --sparsity=0.8 --schedule=polynomial --epochs=4 --train_images=data/train
    python tools/prune.py --input=net.keras --output=net_thin.keras --method=thinet --ratio=0.5 \
        --layer_epochs=1 --epochs=4 --train_images=data/unlabelled

--method=l1|l2|apoz|thinet|random removes whole channels (the saved model has
fewer parameters and MACs): one layer at a time, each followed by
--layer_epochs of fine-tuning, then --epochs of global fine-tuning.

With labelled --train_images (DIR/<label>/*) the loss mixes hard labels and
the original model's soft targets (--alpha); with an unlabelled folder it
distils from the original alone (--distill_from=original, the default then).
The output holds plain layers with exact zeros; batch-norm statistics are
re-estimated on the training images after pruning.  With no --input, the
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

_INPUT = flags.DEFINE_string("input", None, "Keras 3 model (.keras).  Default: the shipped digits model.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .keras file.")
_METHOD = flags.DEFINE_enum("method", "magnitude", ["magnitude", "l1", "l2", "apoz", "thinet", "random"],
                            "magnitude: zero small weights; l1/l2/apoz/thinet/random: remove channels.")
_RATIO = flags.DEFINE_float("ratio", 0.5, "Filter methods: fraction of each prunable layer's channels removed.")
_LAYERS = flags.DEFINE_list("layers", [], "Filter methods: only these layers (default: every prunable one).")
_LAYER_EPOCHS = flags.DEFINE_integer("layer_epochs", 1, "Filter methods: fine-tuning epochs after each layer.",
                                     lower_bound=0)
_SPARSITY = flags.DEFINE_float("sparsity", 0.5, "Final fraction of zero weights per layer, in [0, 1).")
_SCHEDULE = flags.DEFINE_enum("schedule", "polynomial", ["constant", "polynomial"],
                              "constant: the final sparsity from the first step; polynomial: rising from 0 "
                              "(Zhu & Gupta) over the first --ramp fraction of training.")
_RAMP = flags.DEFINE_float("ramp", 0.6, "Polynomial schedule: fraction of the steps over which sparsity rises.")
_FREQUENCY = flags.DEFINE_integer("frequency", 10, "Update the masks every N steps.", lower_bound=1)
_SPARSITY_MAP = flags.DEFINE_list("sparsity_map", [], "Per-layer final sparsity: name=0.8,name2=0.5.")
_EXCLUDE = flags.DEFINE_list("exclude", [], "Layers left unpruned.")
_M_BY_N = flags.DEFINE_string("m_by_n", None, "Structured N:M sparsity, e.g. 2:4 (keep 2 of every 4 inputs).")
_TRAIN = flags.DEFINE_string("train_images", None, "Training images: DIR/<label>/* (labelled) or a flat folder "
                             "(distillation only).  Default: the shipped calibration images.")
_LABELS = flags.DEFINE_string("labels", None, "Labels file for --train_images (one name per line, output order).")
_DISTILL = flags.DEFINE_enum("distill_from", None, ["original", "none"], "Teacher: the original model, or none "
                             "(labels only).  Default: original.")
_EVAL = flags.DEFINE_string("eval_images", None, "Images for the agreement/accuracy report (default: the shipped "
                            "held-out digits when pruning the shipped model).")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per step.", lower_bound=1)
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Distillation temperature.")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Weight of the hard-label loss for labelled images.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for weights order, shuffling and TF.")
_MEAN = flags.DEFINE_float("input_mean", 0.0, "Input normalization: (pixel - mean) / std.")
_STD = flags.DEFINE_float("input_std", 255.0, "Input normalization: (pixel - mean) / std.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show progress bars.")


def _parse_map(items):
    from tfcompress.errors import TfcError
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError as e:
            raise TfcError(f"--sparsity_map entry {item!r} is not name=fraction") from e
    return out


def _parse_m_by_n(text):
    from tfcompress.errors import TfcError
    if not text:
        return None
    try:
        keep, group = (int(v) for v in text.split(":"))
    except ValueError as e:
        raise TfcError(f"--m_by_n must look like 2:4, got {text!r}") from e
    if not 0 < keep < group:
        raise TfcError(f"--m_by_n {text}: need 0 < N < M")
    return keep, group


def _magnitude(original, x, labels, config, teacher, magnitude):
    """Magnitude pruning along the chosen schedule; (stripped model, training steps)."""
    from tfcompress.distill.trainer import fit
    steps = config.epochs * -(-len(x) // config.batch_size)
    if _SCHEDULE.value == "constant":
        schedule = magnitude.ConstantSparsity(_SPARSITY.value, 0, -1, _FREQUENCY.value)
    else:
        end = max(1, int(steps * _RAMP.value))
        schedule = magnitude.PolynomialDecay(0.0, _SPARSITY.value, 0, end, frequency=min(_FREQUENCY.value, end))
    pruned = magnitude.prune_low_magnitude(original, schedule, sparsity_map=_parse_map(_SPARSITY_MAP.value),
                                           exclude=_EXCLUDE.value, m_by_n=_parse_m_by_n(_M_BY_N.value))
    fit(pruned, x, labels, config, teacher=teacher, callbacks=[magnitude.UpdatePruningStep()])
    return magnitude.strip_pruning(pruned), steps


def main() -> None:
    import dataclasses
    import tempfile
    import numpy as np
    import tensorflow as tf
    import keras
    from tfcompress.calibrate.images import Preprocessing, iter_batches
    from tfcompress.distill.data import load_training_images
    from tfcompress.distill.trainer import TrainConfig, fit, set_bn_statistics
    from tfcompress.errors import TfcError
    from tfcompress.calibrate.dataset import read_image_set
    from tfcompress.evaluate.measure import path_size
    from tfcompress.io.atomic import check_output_outside_input, save_keras
    from tfcompress.io.loaders import detect_format
    from tfcompress.prune import filters, magnitude, thinning

    if not _OUTPUT.value:
        raise TfcError("--output is required")
    default_run = _INPUT.value is None
    input_path = _INPUT.value or common.DEFAULT_MODEL
    check_output_outside_input(_OUTPUT.value, input_path)
    if _METHOD.value == "magnitude" and not 0.0 <= _SPARSITY.value < 1.0:
        raise TfcError(f"--sparsity must be in [0, 1), got {_SPARSITY.value}")
    if _METHOD.value != "magnitude" and not 0.0 < _RATIO.value < 1.0:
        raise TfcError(f"--ratio must be in (0, 1), got {_RATIO.value}")
    fmt = detect_format(input_path)
    if fmt != "keras":
        raise TfcError(f"prune takes a Keras 3 .keras model; {input_path} is {fmt} (tf_keras .h5 models need "
                       "tensorflow-model-optimization, which this install does not provide)")
    keras.utils.set_random_seed(_SEED.value)
    tf.config.experimental.enable_op_determinism()
    try:
        original = keras.saving.load_model(input_path, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for a bad file.
        raise TfcError(f"cannot load {input_path} as a Keras model: {str(e).splitlines()[0][:200]}") from e
    _, h, w, c = original.input_shape
    prep = Preprocessing(height=int(h), width=int(w), channels=int(c), mean=_MEAN.value, std=_STD.value)
    classes = int(original.output_shape[-1])
    distill = (_DISTILL.value or "original") == "original"
    x, labels, _ = load_training_images(_TRAIN.value or common.DEFAULT_CALIBRATION, prep, labels_file=_LABELS.value,
                                        require_labels=not distill, num_classes=classes)

    config = TrainConfig(epochs=_EPOCHS.value, batch_size=_BATCH.value, learning_rate=_LR.value,
                         temperature=_TEMPERATURE.value, alpha=_ALPHA.value, seed=_SEED.value,
                         verbose=1 if _PROGRESS.value else 0)
    teacher = original if distill else None
    batches = [x[i:i + _BATCH.value] for i in range(0, len(x), _BATCH.value)]
    if _METHOD.value == "magnitude":
        result, steps = _magnitude(original, x, labels, config, teacher, magnitude)
        set_bn_statistics(result, batches)
        rows = [["layer", "zero weights", "kernel size", "sparsity"]]
        zeros = total = 0
        for name, (z, n) in magnitude.sparsity_of(result).items():
            rows.append([name, z, n, f"{z / n:.1%}"])
            zeros, total = zeros + z, total + n
        rows.append(["total", zeros, total, f"{zeros / total:.1%}"])
        what = f"magnitude, {_SCHEDULE.value} to {_SPARSITY.value:g}"
    else:
        filter_config = filters.FilterConfig(criterion=_METHOD.value, ratio=_RATIO.value, layers=tuple(_LAYERS.value),
                                             seed=_SEED.value)

        def finetune(model, _):
            set_bn_statistics(model, batches)
            if _LAYER_EPOCHS.value:
                fit(model, x, labels, dataclasses.replace(config, epochs=_LAYER_EPOCHS.value), teacher=teacher)

        thinned = filters.prune_filters(original, filter_config, x, finetune=finetune)
        result = thinned.model
        fit(result, x, labels, config, teacher=teacher)
        set_bn_statistics(result, batches)
        rows = [["layer", "channels before", "channels after"]]
        rows += [[name, a, b] for name, (a, b) in thinned.pruned.items()]
        rows += [[name, "-", f"left whole: {why}"] for name, why in thinned.skipped.items()]
        what = f"{_METHOD.value} filters, ratio {_RATIO.value:g}"
        steps = None
    save_keras(result, _OUTPUT.value)

    print(f"\nprune: {input_path} -> {_OUTPUT.value} ({what}, "
          f"{'distilled from the original' if distill else 'labels only'}"
          f"{' and labels' if distill and labels is not None else ''}, {len(x)} images"
          f"{f', {steps} steps' if steps else ''})")
    common.print_table(rows)
    before_cost, after_cost = thinning.count(original), thinning.count(result)
    common.print_table([["model", "params", "MACs"], ["original", *before_cost], ["pruned", *after_cost],
                        ["ratio", f"{after_cost[0] / before_cost[0]:.2f}", f"{after_cost[1] / before_cost[1]:.2f}"]])
    # The input file may carry optimizer state; the original is re-saved the way the output is, so the
    # sizes compare weights with weights.
    with tempfile.TemporaryDirectory() as tmp:
        save_keras(original, os.path.join(tmp, "original.keras"))
        before = path_size(os.path.join(tmp, "original.keras"))
    after = path_size(_OUTPUT.value)
    common.print_table([["size (.keras)", "raw bytes", "gzip -9 bytes"], ["original", before.raw, before.gzip],
                        ["pruned", after.raw, after.gzip]])
    eval_dir = _EVAL.value or (common.DEFAULT_EVAL if default_run else None)
    if eval_dir:
        images = read_image_set(eval_dir)
        xe = np.concatenate(list(iter_batches(images.paths, prep, 64)))
        a, b = original.predict(xe, verbose=0), result.predict(xe, verbose=0)
        line = f"top-1 agreement with the original on {len(xe)} images: {np.mean(a.argmax(1) == b.argmax(1)):.2%}"
        if images.labelled:
            line += (f"; accuracy {np.mean(a.argmax(1) == images.labels):.2%} -> "
                     f"{np.mean(b.argmax(1) == images.labels):.2%}")
        print(line)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
