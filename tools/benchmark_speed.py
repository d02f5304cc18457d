"""benchmark_speed: what each pruning method buys in LiteRT, in one run, as ratios to the unpruned model.

    python tools/benchmark_speed.py
    python tools/benchmark_speed.py --models=digits --epochs=2

    python tools/benchmark_speed.py --models=zoo --epochs=10

Models:
- digits: the shipped residual CNN (testdata/models/digits_resnet.keras);
- mobilenet_v2: Keras MobileNetV2(alpha=0.35) at --mobilenet_size, trained
  here (seeded, labels) on the 1,397 scikit-learn digits that are not
  shipped, upscaled: no pretrained weights can be fetched offline, and a
  network with random weights has no accuracy to lose;
- zoo (or any zoo model's name): the trained zoo in testdata/zoo, each
  fine-tuned on --zoo_images unlabelled images of its task that testdata
  does not ship (unshipped digits, patches from the photos' top 65%, digits
  placed on canvases) and measured on its shipped held-out folder, with the
  --zoo_methods rows.

Every method starts from the same model and is fine-tuned for --epochs by
distillation from it (no labels) on those 1,397 digits; block dropping uses
the first 500 only (a tiny set, as PRACTISE intends).  Rows:
- magnitude:S  unstructured magnitude pruning to sparsity S (polynomial);
- thinet:R     ThiNet filter thinning removing R of every channel group's
               channels (ThiNet's paper; also thinet_uniform:R), residual
               and SE groups included; thinet_sensitivity:R removes R of
               the MACs with per-group ratios from measured sensitivity
               (`filters.FilterConfig`);
- thinet_inside:R  the same inside blocks only (groups with one producer, as
               ThiNet's paper prunes ResNet-50); modifiers combine
               (thinet_inside_uniform:R);
- lowrank:P    channel SVD of every layer that shrinks, factors at P of the weights;
- blocks:T     PRACTISE block dropping to a LiteRT latency cut of T;
- blocks:T+thinet:R  both, blocks first;
- bn_reset     no compression: the unpruned model with its batch-norm
               statistics re-estimated on the fine-tuning images
               (`set_bn_statistics`), what every row did after its fine-tune
               before the fine-tune's own moving averages were kept.
Any row followed by /fm is fine-tuned by function matching instead (the
unpruned model labels shifted, mixed views as they are drawn, half of each
batch; `tfcompress/keras/views.py`), e.g. thinet:0.5/fm.

Columns: parameters and MACs, float32 .tflite bytes raw and gzip -9, LiteRT
latency (XNNPACK, 1 thread, batch 1, median, all variants of a model timed
interleaved), top-1 accuracy and agreement with the unpruned model on the
held-out images, and for a model with regression heads the mean absolute
difference of those outputs from the unpruned model's, beside the error of
the stock converter's int8 model of the unpruned one (calibrated on the
fine-tuning images) on those heads.  MACs, latency and
sizes are ratios to the unpruned row.  The papers' figures are printed
beside the table: ThiNet's 3.23x fewer FLOPs on VGG-16 (Luo et al.,
arXiv:1707.06342) and PRACTISE's 22% latency cut (Wang & Wu,
arXiv:2202.07861).

With --seeds=0,1,2 every row is measured once per seed (the zoo's fine-tuning
images are drawn by the seed too) and a last table gives each row's mean,
with the range of its agreement and head error: one seed's agreement on a
few hundred held-out images moves by several points from one seed to the
next, so a claim near a threshold needs more than one.

Unstructured sparsity leaves every multiply in a dense kernel: it shrinks the
gzip size and nothing else.  XNNPACK has sparse kernels only for 1x1 convs in
NHWC float models it recognises and does not use them here.
"""

import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # noqa: E402
    import testdata_sources as sources  # noqa: E402
else:
    from . import common  # noqa: E402
    from . import testdata_sources as sources  # noqa: E402

from absl import flags  # noqa: E402

common.define_onednn_training_flag()  # Fine-tuning runs TF's own kernels unless --onednn_training.

_MODELS = flags.DEFINE_list("models", ["digits", "mobilenet_v2"],
                            "digits, mobilenet_v2, zoo (the six zoo models) or zoo model names.")
_METHODS = flags.DEFINE_list("methods", ["magnitude:0.5", "magnitude:0.9", "thinet:0.5", "lowrank:0.5",
                                         "blocks:0.3", "blocks:0.3+thinet:0.5",
                                         "blocks:0.3+thinet:0.6", "blocks:0.5+thinet:0.5"],
                            "Rows (see the module doc).")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Fine-tuning epochs per method.", lower_bound=0)
_MOBILENET_SIZE = flags.DEFINE_integer("mobilenet_size", 64, "MobileNetV2 input side (digits are upscaled).",
                                       lower_bound=32)
_MOBILENET_EPOCHS = flags.DEFINE_integer("mobilenet_epochs", 15, "Epochs to train MobileNetV2 on digits.",
                                         lower_bound=1)
_ZOO_METHODS = flags.DEFINE_list("zoo_methods", ["thinet:0.5", "thinet_inside:0.5", "blocks:0.3+thinet:0.5"],
                                 "Rows for the zoo models.")
_ZOO_IMAGES = flags.DEFINE_integer("zoo_images", 200, "Unlabelled fine-tuning images per zoo model.",
                                   lower_bound=1)
_RUNS = flags.DEFINE_integer("runs", 100, "Timed LiteRT runs per model.", lower_bound=20)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds for training and sampling: every model's rows are measured once "
                          "per seed; with several, a summary gives each row's mean and range over them.")

TINY_SET = 500


def _mobilenet(x, y, size, epochs, seed):
    """MobileNetV2(alpha=0.35) trained on the digits x, y (already at size x size, in [-1, 1])."""
    import keras
    from tfcompress.keras.train import TrainConfig, batches, fit, set_bn_statistics
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35, weights=None, classes=10)
    fit(model, x, y, TrainConfig(epochs=epochs, alpha=1.0, seed=seed, verbose=0))
    set_bn_statistics(model, batches(x))
    return model


def _variant(method, original, x, train):
    """The Keras model one row describes."""
    import dataclasses
    import keras
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.artifacts import KerasLatency
    from tfcompress.lowrank.svd import LowRankConfig, factorize
    from tfcompress.keras.train import batches, fit, set_bn_statistics
    from tfcompress.prune import blocks, filters, magnitude
    method, _, training = method.partition("/")
    if training not in ("", "fm"):
        raise TfcError(f"unknown training {training!r} in --methods (only /fm)")
    train = dataclasses.replace(train, function_matching=training == "fm")
    model = original
    for step in method.split("+"):
        kind, _, value = step.partition(":")
        if kind == "bn_reset":
            source, model = model, keras.models.clone_model(model)
            model.set_weights(source.get_weights())
            set_bn_statistics(model, batches(x))
            continue
        value = float(value)
        if kind == "magnitude":
            schedule = magnitude.schedule_for("polynomial", value, train.steps(len(x)))
            model = magnitude.prune_and_train(model, schedule, x, None,
                                              train, teacher=original)
        elif kind.split("_")[0] in filters.CRITERIA:
            criterion, *modifiers = kind.split("_")
            unknown = set(modifiers) - {"inside", *filters.ALLOCATIONS}
            if unknown:
                raise TfcError(f"unknown filter row modifier {', '.join(sorted(unknown))} in --methods")
            allocation = next((m for m in modifiers if m in filters.ALLOCATIONS), None)
            config = filters.FilterConfig(criterion=criterion, ratio=value, residual_groups="inside" not in modifiers,
                                          **({"allocation": allocation} if allocation else {}))
            model = filters.prune_and_finetune(model, config, x, None, train, teacher=original).model
        elif kind == "lowrank":
            model = factorize(model, LowRankConfig(param_ratio=value)).model
            fit(model, x, None, train, teacher=original)
        elif kind == "blocks":
            model = blocks.drop_blocks(model, x[:TINY_SET], blocks.DropConfig(latency_target=value), train,
                                       latency=KerasLatency(x, runs=40)).model
        else:
            raise TfcError(f"unknown method {kind!r} in --methods")
        if not train.epochs:  # A fine-tune's own moving averages stand (see filters.prune_and_finetune).
            set_bn_statistics(model, batches(x))
    return model


def _rows(name, original, methods, x, held, labels, train):
    """(one table row per method, the same as numbers): the variants of `original`, fine-tuned on x, measured
    on held."""
    import numpy as np
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.artifacts import interleaved_latency
    from tfcompress.evaluate.measure import bytes_size
    from tfcompress.export.tflite import keras_float_flatbuffer
    from tfcompress.keras.cost import count
    from tfcompress.keras.heads import class_head, heads, predict_all
    names, models, failed = ["(unpruned)"], [original], []
    for method in methods:
        try:
            models.append(_variant(method, original, x, train))
            names.append(method)
        except TfcError as e:  # E.g. a latency target no set of blocks reaches: say so in the table.
            failed.append([name, method] + ["-"] * 7 + [f"not possible: {e}"])
    flatbuffers = [keras_float_flatbuffer(m) for m in models]
    latency = interleaved_latency(flatbuffers, held[:1], _RUNS.value)
    head = class_head(original)
    values = [h.index for h in heads(original) if h.kind != "class"]
    reference = predict_all(original, held)
    anchor = None
    if values:  # The stock converter's int8, calibrated on the fine-tuning images: its error on those heads.
        from tfcompress.export.litert import LiteRTRunner
        int8 = common.outputs_by_head(LiteRTRunner(common.stock_int8(original, x)).outputs_by_name(held),
                                      {i: int(np.prod(reference[i].shape[1:])) for i in values})
        anchor = np.mean([np.mean(np.abs(int8[i] - reference[i].reshape(len(held), -1))) for i in values])
    base = bytes_size(flatbuffers[0])
    macs0 = count(original)[1]
    rows, measured = [], []
    for method, model, fb, t in zip(names, models, flatbuffers, latency):
        params, macs = count(model)
        outputs = predict_all(model, held)
        predicted = outputs[head.index].argmax(1)
        size = bytes_size(fb)
        error = np.mean([np.mean(np.abs(outputs[i] - reference[i])) for i in values]) if values else None
        measured.append(dict(model=name, method=method, macs=macs / macs0, raw=size.raw / base.raw,
                             gzip=size.gzip / base.gzip, latency=t / latency[0],
                             accuracy=np.mean(predicted == labels),
                             agreement=np.mean(predicted == reference[head.index].argmax(1)),
                             error=None if error is None else error / anchor))
        error = "-" if error is None else (f"{error:.4f} (stock int8: {anchor:.4f})" if model is original
                                           else f"{error:.4f} ({error / anchor:.1f}x stock int8)")
        rows.append([name, method, params, f"{macs / 1e6:.1f} M ({macs / macs0:.2f}x)",
                     f"{size.raw} ({size.raw / base.raw:.2f}x)", f"{size.gzip} ({size.gzip / base.gzip:.2f}x)",
                     f"{t * 1e6:.0f} us ({t / latency[0]:.2f}x)", f"{measured[-1]['accuracy']:.2%}",
                     f"{measured[-1]['agreement']:.2%}", error])
    return rows + failed, measured


def _summary(measured, seeds):
    """Each (model, method)'s mean over the seeds, and the range of its agreement and head error."""
    import numpy as np
    table = [["model", "method", "seeds", "MACs", ".tflite bytes", "gzip -9 bytes", "LiteRT latency", "accuracy",
              "agreement: mean (min-max)", "regression heads: x stock int8, mean (min-max)"]]
    keys = list(dict.fromkeys((m["model"], m["method"]) for m in measured))
    for key in keys:
        runs = [m for m in measured if (m["model"], m["method"]) == key]
        agreement = [m["agreement"] for m in runs]
        errors = [m["error"] for m in runs if m["error"] is not None]
        table.append([*key, f"{len(runs)} of {len(seeds)}", *(f"{np.mean([m[c] for m in runs]):.2f}x"
                                                            for c in ("macs", "raw", "gzip", "latency")),
                      f"{np.mean([m['accuracy'] for m in runs]):.2%}",
                      f"{np.mean(agreement):.2%} ({min(agreement):.2%}-{max(agreement):.2%})",
                      f"{np.mean(errors):.1f}x ({min(errors):.1f}-{max(errors):.1f}x)" if errors and key[1] !=
                      "(unpruned)" else "-"])
    return table


def _zoo_images(task: str, count: int, seed: int):
    """`count` unlabelled training images of a zoo task that testdata does not ship, as the model takes them."""
    import numpy as np
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import digits_training_set
    rng = np.random.default_rng(seed)
    if task == "digits":
        x = digits_training_set()[0][..., :1]
    elif task == "patches":
        x = (sources.training_patches()[0].astype(np.float32) - 127.5) / 127.5
    elif task == "boxes":
        small, _, (_, _, train) = sources.small_digits()
        x = sources.place_digits(small[train], rng, copies=1)[0][..., None].astype(np.float32) / 255.0
    else:
        raise TfcError(f"no unshipped training images for zoo task {task!r} (digits, patches or boxes)")
    return x[np.sort(rng.choice(len(x), min(count, len(x)), replace=False))]


def main() -> None:
    import keras
    import numpy as np
    import tensorflow as tf
    from tfcompress.data.folders import read_image_set
    from tfcompress.data.images import Preprocessing, iter_batches
    from tfcompress.keras.train import TrainConfig
    from tfcompress.errors import TfcError
    from tfcompress.evaluate.zoo import ZOO, digits_training_set

    tf.config.experimental.enable_op_determinism()
    x, y = digits_training_set()
    held = read_image_set(common.DEFAULT_EVAL)
    xh = np.concatenate(list(iter_batches(held.paths, Preprocessing(height=32, width=32, channels=3), 100)))
    try:
        seeds = [int(s) for s in _SEEDS.value]
    except ValueError as e:
        raise TfcError(f"--seeds takes integers: {e}") from e
    if not seeds:
        raise TfcError("--seeds needs at least one seed")
    table = [["model", "method", "params", "MACs", ".tflite bytes", "gzip -9 bytes", "LiteRT latency",
              "accuracy", "agreement", "regression heads: mean abs diff"]]
    measured = []
    zoo_names = [n for m in _MODELS.value for n in (list(ZOO) if m == "zoo" else [m]) if n in ZOO]
    for seed in seeds:
        train = TrainConfig(epochs=_EPOCHS.value, seed=seed, verbose=0)
        for name in [m for m in _MODELS.value if m != "zoo" and m not in ZOO] + zoo_names:
            keras.utils.set_random_seed(seed)
            label = name if len(seeds) == 1 else f"{name} (seed {seed})"
            if name in ZOO:
                zoo = ZOO[name]
                original = keras.saving.load_model(zoo.path, safe_mode=True, compile=False)
                h, w, c = original.inputs[0].shape[1:]
                zoo_held = read_image_set(zoo.heldout)
                hz = np.concatenate(list(iter_batches(zoo_held.paths, Preprocessing(
                    height=h, width=w, channels=c, mean=zoo.mean, std=zoo.std), 100)))
                xz = _zoo_images(zoo.task, _ZOO_IMAGES.value, seed)
                rows, numbers = _rows(label, original, _ZOO_METHODS.value, xz, hz, zoo_held.labels, train)
            elif name == "digits":
                original = keras.saving.load_model(common.DEFAULT_MODEL, safe_mode=True, compile=False)
                rows, numbers = _rows(label, original, _METHODS.value, x, xh, held.labels, train)
            elif name == "mobilenet_v2":
                size = _MOBILENET_SIZE.value

                def scale(images, size=size):
                    return tf.image.resize(images, (size, size)).numpy() * 2.0 - 1.0

                xs, hs = scale(x), scale(xh)
                original = _mobilenet(xs, y, size, _MOBILENET_EPOCHS.value, seed)
                rows, numbers = _rows(f"mobilenet_v2 ({size}x{size})" + label[len(name):], original, _METHODS.value,
                                      xs, hs, held.labels, train)
            else:
                raise TfcError(f"unknown model {name!r} in --models (digits, mobilenet_v2, zoo, {', '.join(ZOO)})")
            table += rows
            measured += [dict(m, model=name) for m in numbers]
            common.print_table(table)  # Each model's rows as soon as they are measured.
    print(f"\nbenchmark_speed: float32 .tflite, LiteRT XNNPACK 1 thread batch 1 ({_RUNS.value} runs, interleaved); "
          f"fine-tuned {_EPOCHS.value} epochs by distillation on {len(x)} unshipped digits (zoo: {_ZOO_IMAGES.value} "
          "unshipped images of its task); accuracy and agreement on the shipped held-out images")
    print("anchors: ThiNet on VGG-16 (Luo et al.): 3.23x fewer FLOPs (0.31x); PRACTISE (Wang & Wu): 22% latency cut "
          "(0.78x)")
    common.print_table(table)
    if len(seeds) > 1:
        print(f"\nover seeds {', '.join(map(str, seeds))} (ratios to each seed's unpruned row, averaged):")
        common.print_table(_summary(measured, seeds))


def run() -> None:
    common.run_main(main)


if __name__ == "__main__":
    run()
