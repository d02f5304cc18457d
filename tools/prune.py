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

_JOB = common.define_training_flags(epochs=10)
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


def main() -> None:
    from tfcompress.keras.train import set_bn_statistics
    from tfcompress.errors import TfcError
    from tfcompress.prune import filters, magnitude

    if _METHOD.value == "magnitude" and not 0.0 <= _SPARSITY.value < 1.0:
        raise TfcError(f"--sparsity must be in [0, 1), got {_SPARSITY.value}")
    if _METHOD.value != "magnitude" and not 0.0 < _RATIO.value < 1.0:
        raise TfcError(f"--ratio must be in (0, 1), got {_RATIO.value}")
    if _METHOD.value == "magnitude" and _JOB["epochs"].value < 1:
        raise TfcError("magnitude pruning needs --epochs >= 1 (the masks are set while training)")
    job = common.KerasJob(_JOB)
    if _METHOD.value == "magnitude":
        steps = job.config.steps(len(job.x))
        options = dict(sparsity_map=_parse_map(_SPARSITY_MAP.value), exclude=_EXCLUDE.value,
                       m_by_n=_parse_m_by_n(_M_BY_N.value))
        if job.tf_keras:
            from tfcompress.prune.tfmot_prune import prune_tf_keras  # Switches tf.keras to tf_keras: only here.
            result = prune_tf_keras(job.input_path, schedule=_SCHEDULE.value, sparsity=_SPARSITY.value,
                                    ramp=_RAMP.value, frequency=_FREQUENCY.value, x=job.x, labels=job.labels,
                                    config=job.config, teacher=job.teacher, **options)
        else:
            schedule = magnitude.schedule_for(_SCHEDULE.value, _SPARSITY.value, steps, _RAMP.value, _FREQUENCY.value)
            result = magnitude.prune_and_train(job.original, schedule, job.x, job.labels, job.config,
                                               teacher=job.teacher, **options)
        set_bn_statistics(result, job.batches)
        rows = [["layer", "zero weights", "kernel size", "sparsity"]]
        zeros = total = 0
        for name, (z, n) in magnitude.sparsity_of(result).items():
            rows.append([name, z, n, f"{z / n:.1%}"])
            zeros, total = zeros + z, total + n
        rows.append(["total", zeros, total, f"{zeros / total:.1%}"])
        what = f"magnitude, {_SCHEDULE.value} to {_SPARSITY.value:g}, {steps} steps"
        if job.tf_keras:
            what += ", tf_keras model through tensorflow-model-optimization"
    else:
        filter_config = filters.FilterConfig(criterion=_METHOD.value, ratio=_RATIO.value, layers=tuple(_LAYERS.value),
                                             seed=_JOB["seed"].value)
        thinned = filters.prune_and_finetune(job.original, filter_config, job.x, job.labels, job.config,
                                             teacher=job.teacher, layer_epochs=_LAYER_EPOCHS.value)
        result = thinned.model
        rows = [["layer", "channels before", "channels after"]]
        rows += [[name, a, b] for name, (a, b) in thinned.pruned.items()]
        rows += [[name, "-", f"left whole: {why}"] for name, why in thinned.skipped.items()]
        what = f"{_METHOD.value} filters, ratio {_RATIO.value:g}"
    print(f"\nprune: {job.input_path} -> {_JOB['output'].value} ({what}, {job.training_note()})")
    common.print_table(rows)
    job.save_and_report(result)


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
