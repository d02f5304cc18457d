"""What every command-line tool shares: quiet TF start-up, error handling, defaults, table printing.

Import this before anything that imports TensorFlow.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ logs, errors included: ours are error lines

from absl import app, flags  # noqa: E402

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(os.path.dirname(TOOLS_DIR), "testdata")
DEFAULT_MODEL = os.path.join(TESTDATA, "models", "digits_resnet.keras")
DEFAULT_CALIBRATION = os.path.join(TESTDATA, "images", "calibration")
DEFAULT_EVAL = os.path.join(TESTDATA, "images", "heldout")


def use_system_allocator() -> None:
    """For the commands that calibrate and then convert; call it when the tool is imported, before TF starts.

    Where TF runs oneDNN kernels, its own pool allocator keeps the largest working set (a calibration
    batch's activations, 0.3 GB on VGG16 at 256x256) for the life of the process, and the TFLite converter's
    peak then comes on top.  With the system allocator, capped at 2 malloc arenas, that memory goes back
    (`io.memory.release_freed_memory`).  Training commands keep TF's pool: it trains about 9% faster here.
    """
    if "tensorflow" in sys.modules:
        return
    from tfcompress.io.memory import limit_malloc_arenas
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    limit_malloc_arenas()


def define_model_flags():
    """Flags naming the input model and how to read it; returns the FlagHolders."""
    return dict(
        input=flags.DEFINE_string("input", None, "Model: SavedModel dir, .keras, .h5 or frozen .pb. "
                                  "Default: the digits model shipped in testdata/."),
        signature=flags.DEFINE_string("signature", "serving_default", "SavedModel signature key."),
        input_names=flags.DEFINE_list("input_names", None, "Frozen .pb only: input tensor names."),
        output_names=flags.DEFINE_list("output_names", None, "Frozen .pb only: output tensor names."),
        allow_unsafe_ops=flags.DEFINE_boolean("allow_unsafe_ops", False,
                                              "Accept graphs with ops outside the allowlist of pure ops (ReadFile, PyFunc, custom ops, …)."),
    )


def define_calibration_flags():
    return dict(
        calibration_images=flags.DEFINE_string("calibration_images", None,
                                               "Folder of png/jpg/bmp/gif images, read recursively."),
        calibration_cache=flags.DEFINE_string("calibration_cache", None,
                                              "JSON cache of calibration statistics (read if valid, else written)."),
        recalibrate=flags.DEFINE_boolean("recalibrate", False, "Ignore and overwrite an existing cache."),
        calibrator=flags.DEFINE_enum("calibrator", "minmax", ["minmax", "percentile", "kl", "mse", "auto"],
                                     "Range calibrator; auto (convert only): the one whose int8 outputs stay "
                                     "closest to float on the calibration images."),
        percentile=flags.DEFINE_float("percentile", 99.99, "Percentile kept by --calibrator=percentile."),
        batch_size=flags.DEFINE_integer("batch_size", None, "Images per calibration run (default: as many as keep "
                                        "the largest activation within 16 MiB, at most 32).", lower_bound=1),
        equalize=flags.DEFINE_boolean("equalize", True, "Cross-layer equalization of consecutive layers before "
                                      "calibrating; --noequalize turns it off (alike for calibrate, "
                                      "quantize_graph and convert: the cache belongs to the graph it was made on)."),
        **define_normalization_flags(0.0, 255.0),
    )


def define_calibration_data_flag():
    return flags.DEFINE_string("calibration_data", None, "Instead of images: a .npz with one array per model input "
                               "(named by input; first axis = samples), for graphs that do not take one image: "
                               "several inputs, any rank, channel count or dtype.")


class NormParser(flags.ArgumentParser):
    """A number, or comma-separated numbers (one per channel): a float, or a tuple of floats."""
    syntactic_help = "a number, or one per channel: 123.68,116.78,103.94"

    def parse(self, argument):
        values = argument if isinstance(argument, (list, tuple)) else str(argument).split(",")
        try:
            numbers = [float(v) for v in values]
        except ValueError as e:
            raise ValueError(f"not a number or comma-separated numbers: {argument!r}") from e
        return numbers[0] if len(numbers) == 1 else tuple(numbers)

    def flag_type(self):
        return "float or float list"


def define_normalization_flags(mean=None, std=None):
    """--input_mean/--input_std, input normalization (pixel - mean) / std, and --channel_order.

    Each of mean and std is one number, or one per channel in the model's
    order (for example --input_mean=103.939,116.779,123.68 --input_std=1
    --channel_order=bgr for Caffe-style keras.applications models).  With no
    defaults (tools that run finished models) they come from the .tflite
    metadata when not given, else 0 and 255 (see `normalization`).
    """
    later = "  Default: the .tflite metadata's, else {}."
    return dict(
        input_mean=flags.DEFINE(NormParser(), "input_mean", mean, "Input normalization: (pixel - mean) / std; "
                                "one value or one per channel." + (later.format(0) if mean is None else "")),
        input_std=flags.DEFINE(NormParser(), "input_std", std, "Input normalization: (pixel - mean) / std; "
                               "one value or one per channel." + (later.format(255) if std is None else "")),
        channel_order=flags.DEFINE_enum("channel_order", "rgb" if mean is not None else None, ["rgb", "bgr"],
                                        "Channel order the model takes (bgr: Caffe-style models); images are read "
                                        "as RGB." + (later.format("rgb") if mean is None else "")),
    )


def calibration_options(cal_flags):
    """The API's CalibrationOptions from define_calibration_flags() holders."""
    from tfcompress.api.graph_jobs import CalibrationOptions
    return CalibrationOptions(calibrator=cal_flags["calibrator"].value, percentile=cal_flags["percentile"].value,
                              batch_size=cal_flags["batch_size"].value, input_mean=cal_flags["input_mean"].value,
                              input_std=cal_flags["input_std"].value, channel_order=cal_flags["channel_order"].value,
                              equalize=cal_flags["equalize"].value)


def load_options(model_flags):
    """The API's LoadOptions from define_model_flags() holders."""
    from tfcompress.api.models import LoadOptions
    return LoadOptions(signature=model_flags["signature"].value, input_names=model_flags["input_names"].value,
                       output_names=model_flags["output_names"].value,
                       allow_unsafe_ops=model_flags["allow_unsafe_ops"].value)


def define_runtime_flags():
    """How finished models are run: threads, integer I/O, delegate, unsafe graphs."""
    return dict(
        threads=flags.DEFINE_integer("threads", 1, "Threads for LiteRT, TF (intra-op) and onnxruntime.",
                                     lower_bound=1),
        quantized_io=flags.DEFINE_enum("quantized_io", "quantize", ["quantize", "pixels"],
                                       "int8/uint8 TFLite inputs: quantize the float input with the model's own "
                                       "scale and zero point, or feed raw pixels (needs scale 1/std, zero mean)."),
        xnnpack=flags.DEFINE_boolean("xnnpack", True, "LiteRT with XNNPACK; --noxnnpack: builtin kernels only."),
        allow_unsafe_ops=flags.DEFINE_boolean("allow_unsafe_ops", False,
                                              "Accept graphs with ops outside the allowlist of pure ops (ReadFile, PyFunc, custom ops, …)."),
    )


def runtime_options(norm_flags, run_flags, xnnpack=None):
    """The API's RuntimeOptions from the normalization and runtime flags."""
    from tfcompress.api.evaluate import RuntimeOptions
    return RuntimeOptions(
        input_mean=norm_flags["input_mean"].value, input_std=norm_flags["input_std"].value,
        channel_order=norm_flags["channel_order"].value, threads=run_flags["threads"].value,
        quantized_io=run_flags["quantized_io"].value,
        xnnpack=run_flags["xnnpack"].value if xnnpack is None else xnnpack,
        allow_unsafe_ops=run_flags["allow_unsafe_ops"].value)


def open_artifact_from_flags(path: str, norm_flags, run_flags, xnnpack=None):
    """(artifact, preprocessing) for a finished model, from the normalization and runtime flags."""
    from tfcompress.api.evaluate import open_model
    return open_model(path, runtime_options(norm_flags, run_flags, xnnpack))


def define_overwrite_flag():
    return flags.DEFINE_boolean("overwrite", False, "Replace an existing output that tfcompress wrote earlier "
                                "(atomically).  A folder tfcompress did not create is never replaced.")


def default_inputs(model_flags, cal_flags, data_flag=None):
    """(input model, calibration images, whether this is the default run).

    With no --input the shipped model and its calibration images are used; with --calibration_data
    (`data_flag`) no image is read unless --calibration_images names some.
    """
    default_run = model_flags["input"].value is None
    input_path = model_flags["input"].value or DEFAULT_MODEL
    images = cal_flags["calibration_images"].value
    if images is None and default_run and not (data_flag is not None and data_flag.value):
        images = DEFAULT_CALIBRATION
    return input_path, images, default_run


def load_model_from_flags(f):
    """Loads the model named by define_model_flags() holders (default: the shipped model)."""
    from tfcompress.io.loaders import load_model
    return load_model(f["input"].value or DEFAULT_MODEL, signature=f["signature"].value,
                      input_names=f["input_names"].value, output_names=f["output_names"].value,
                      allow_unsafe_ops=f["allow_unsafe_ops"].value)


def define_training_flags(epochs: int, model_flag: str = "input"):
    """Flags of the commands that transform and retrain a Keras model (prune, lowrank, …).

    The model to transform is --input, or --`model_flag` (kept under the key "input").
    """
    return dict(
        input=flags.DEFINE_string(model_flag, None, "Keras model: .keras, or .h5 (Keras 3 or tf_keras).  Default: "
                                  "the shipped digits model."),
        output=flags.DEFINE_string("output", None, "Output .keras file."),
        train_images=flags.DEFINE_string("train_images", None, "Training images: DIR/<label>/* (labelled) or a "
                                         "flat folder (distillation only).  Default: the shipped calibration "
                                         "images."),
        labels=flags.DEFINE_string("labels", None, "Labels file for --train_images (one name per line, output "
                                   "order)."),
        distill_from=flags.DEFINE_enum("distill_from", None, ["original", "none"], "Teacher: the original model, "
                                       "or none (labels only).  Default: original."),
        eval_images=flags.DEFINE_string("eval_images", None, "Images for the agreement/accuracy report (default: "
                                        "the shipped held-out digits when transforming the shipped model)."),
        epochs=flags.DEFINE_integer("epochs", epochs, "Training epochs.", lower_bound=0),
        batch_size=flags.DEFINE_integer("batch_size", 32, "Images per step.", lower_bound=1),
        learning_rate=flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate."),
        temperature=flags.DEFINE_float("temperature", 4.0, "Distillation temperature."),
        alpha=flags.DEFINE_float("alpha", 0.5, "Weight of the hard-label loss for labelled images."),
        seed=flags.DEFINE_integer("seed", 0, "Seed for shuffling, sampling and TF."),
        **define_normalization_flags(0.0, 255.0),
        progress=flags.DEFINE_boolean("progress", True, "Show progress bars."),
        overwrite=define_overwrite_flag(),
        onednn_training=define_onednn_training_flag(),
        distribute=flags.DEFINE_enum("distribute", "none", ["none", "mirrored", "multi_worker"],
                                     "Data-parallel training: mirrored over this machine's devices, or "
                                     "multi_worker over the processes TF_CONFIG lists (every worker runs the same "
                                     "command; the chief writes --output).  --batch_size is the global batch."),
        function_matching=flags.DEFINE_boolean(
            "function_matching", False, "Distilling without labels: batches half of fresh shifted and mixed views "
            "of --train_images, half of the images, labelled by the original as they are drawn, the learning rate "
            "decaying to 0 (give many --epochs: each is len(images) / --batch_size steps)."),
    )


def define_onednn_training_flag():
    """--onednn_training: read by run_main before TensorFlow starts (`tfcompress.keras.kernels`)."""
    return flags.DEFINE_boolean("onednn_training", False, "Train with TF's oneDNN kernels: faster, but TF 2.21's "
                                "crash training (SIGSEGV) on some CPUs and shapes, so TF's own kernels train "
                                "by default.")


def keras_job(f, extra_inputs=()):
    """(input model, whether it is the shipped default, API keyword arguments) for a Keras-transforming command.

    The output is checked first, so a bad --output fails before any training.
    """
    from tfcompress.api.keras_jobs import TrainOptions
    from tfcompress.io.atomic import check_output
    from tfcompress.keras.distribute import cluster_spec
    if f["distribute"].value == "multi_worker":
        cluster_spec()  # A bad TF_CONFIG fails before anything is read.
    default_run = f["input"].value is None
    input_path = f["input"].value or DEFAULT_MODEL
    check_output(f["output"].value, [input_path, f["train_images"].value, f["labels"].value,
                                     f["eval_images"].value, *extra_inputs],
                 overwrite=f["overwrite"].value, directory=False)
    options = TrainOptions(epochs=f["epochs"].value, batch_size=f["batch_size"].value,
                           learning_rate=f["learning_rate"].value, temperature=f["temperature"].value,
                           alpha=f["alpha"].value, seed=f["seed"].value, input_mean=f["input_mean"].value,
                           input_std=f["input_std"].value, channel_order=f["channel_order"].value,
                           progress=f["progress"].value, distribute=f["distribute"].value,
                           function_matching=f["function_matching"].value)
    kwargs = dict(train_images=f["train_images"].value or DEFAULT_CALIBRATION, labels=f["labels"].value,
                  options=options)
    if "distill_from" in f:
        kwargs["distill_from"] = f["distill_from"].value
    return input_path, default_run, kwargs


def print_job(command: str, input_path: str, f, result) -> None:
    """The first lines of a Keras command's report: what was done, then the method's table and notes."""
    print(f"\n{command}: {input_path} -> {f['output'].value} ({result.summary}, {result.training})")
    print_table(result.rows)
    for note in result.notes:
        print(note)


def save_output(model, f) -> bool:
    """Saves `model` atomically to --output, unless this process is a multi_worker worker other than the
    chief (which only says so); whether it saved."""
    from tfcompress.io.atomic import save_keras
    from tfcompress.keras.distribute import cluster_spec, is_chief
    if not is_chief(f["distribute"].value):
        task = cluster_spec()["task"]
        print(f"{task['type']} {task['index']}: trained; the chief writes {f['output'].value}")
        return False
    save_keras(model, f["output"].value, overwrite=f["overwrite"].value)
    return True


def save_and_report(result, f, default_run: bool) -> None:
    """Saves `result.model` atomically, then prints params/MACs, .keras sizes and agreement with the original."""
    import tempfile
    import numpy as np
    from tfcompress.data.source import FolderSource
    from tfcompress.evaluate.measure import path_size
    from tfcompress.io.atomic import save_keras
    from tfcompress.keras.cost import count
    output = f["output"].value
    if not save_output(result.model, f):
        return
    before_cost, after_cost = count(result.original), count(result.model)
    print_table([["model", "params", "MACs"], ["original", *before_cost], ["result", *after_cost],
                 ["ratio", f"{after_cost[0] / before_cost[0]:.2f}", f"{after_cost[1] / before_cost[1]:.2f}"]])
    # The input file may carry optimizer state; the original is re-saved the way the output is.
    with tempfile.TemporaryDirectory() as tmp:
        save_keras(result.original, os.path.join(tmp, "original.keras"))
        before = path_size(os.path.join(tmp, "original.keras"))
    after = path_size(output)
    print_table([["size (.keras)", "raw bytes", "gzip -9 bytes"], ["original", before.raw, before.gzip],
                 ["result", after.raw, after.gzip]])
    eval_dir = f["eval_images"].value or (DEFAULT_EVAL if default_run else None)
    if eval_dir:
        from tfcompress.keras.heads import heads, predict_all
        images = FolderSource(eval_dir)
        xe = images.array(result.prep)
        before, after = predict_all(result.original, xe), predict_all(result.model, xe)
        first_class = True
        for head in heads(result.original):
            a, b = before[head.index], after[head.index]
            named = f" ({head.name})" if len(before) > 1 else ""
            if head.kind != "class":
                print(f"mean abs difference from the original{named} on {len(xe)} images: "
                      f"{np.mean(np.abs(a - b)):.4g} (the original's outputs span {np.ptp(a):.4g})")
                continue
            line = (f"top-1 agreement with the original{named} on {len(xe)} images: "
                    f"{np.mean(a.argmax(1) == b.argmax(1)):.2%}")
            if images.labelled and first_class:
                line += (f"; accuracy {np.mean(a.argmax(1) == images.labels):.2%} -> "
                         f"{np.mean(b.argmax(1) == images.labels):.2%}")
            first_class = False
            print(line)


BENCHMARK_MODELS = ("digits", "digits_outliers", "mobilenet_v2")


def benchmark_model(name: str, mobilenet_size: int = 224):
    """(optimized float model, preprocessing, calibration image paths) for a benchmark model.

    digits: the shipped model; digits_outliers: the same function with one
    outlier channel (`zoo.digits_with_outliers`); mobilenet_v2: Keras
    MobileNetV2(alpha=0.35) with seeded weights, BN statistics set from images.
    """
    from tfcompress.data.images import Preprocessing, list_images
    from tfcompress.errors import TfcError
    from tfcompress.evaluate import zoo
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import freeze_keras_model, load_model
    calibration = list_images(DEFAULT_CALIBRATION)
    if name == "digits":
        model, _ = optimize(load_model(DEFAULT_MODEL))
    elif name == "digits_outliers":
        import keras
        keras_model = keras.saving.load_model(DEFAULT_MODEL, safe_mode=True)
        model, _ = optimize(freeze_keras_model(zoo.digits_with_outliers(keras_model), source=name))
    elif name == "mobilenet_v2":
        keras_model = zoo.mobilenet_v2(calibration[:64], size=mobilenet_size)
        model, _ = optimize(freeze_keras_model(keras_model, source="MobileNetV2(alpha=0.35)"))
        return model, zoo.mobilenet_preprocessing(mobilenet_size), calibration
    else:
        raise TfcError(f"unknown model {name!r} in --models (choose from {', '.join(BENCHMARK_MODELS)})")
    return model, Preprocessing.for_input(model.image_input().shape, mean=0.0, std=255.0), calibration


def stock_int8(model, calibration) -> bytes:
    """The stock TFLiteConverter's default full-integer quantization of a Keras model (Optimize.DEFAULT with
    `calibration` as the representative dataset, float I/O): the benchmarks' int8 anchor."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    return converter.convert()


def outputs_by_head(outputs, sizes):
    """LiteRT outputs (name -> [N, ...]) matched to Keras heads (key -> values per image) by their sizes, as
    [N, size] arrays; the zoo's heads differ in size.

    Raises:
      TfcError: a head matches no output, or several.
    """
    out = {}
    for head, size in sizes.items():
        match = [v.reshape(len(v), -1) for v in outputs.values() if v.reshape(len(v), -1).shape[1] == size]
        if len(match) != 1:
            from tfcompress.errors import TfcError
            raise TfcError(f"cannot match head {head} ({size} values) to the .tflite outputs")
        out[head] = match[0]
    return out


def print_table(rows, out=sys.stdout) -> None:
    """Prints rows (lists of cells) as an aligned text table; the first row is the header."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_help(argv0: str, out=sys.stdout) -> None:
    """The command's own flags (those its module and this one define; not absl's), one block each."""
    from absl.flags import FLAGS
    print(f"usage: {argv0} [--flags]\n", file=out)
    main_module = sys.modules.get("__main__")
    if main_module is not None and main_module.__doc__:
        print(main_module.__doc__.strip() + "\n", file=out)
    for module, holders in sorted(FLAGS.flags_by_module_dict().items()):
        if module.startswith("absl") or not holders:
            continue
        for flag in sorted(holders, key=lambda f: f.name):
            default = "" if flag.default is None else f" (default: {flag.default_as_str})"
            print(f"  --{flag.name}: {flag.help}{default}", file=out)


def run_main(main, positional: bool = False) -> None:
    """absl's app.run, with TfcError turned into one line on stderr and exit status 1.

    `--help` (or -h) prints the command's own flags and exits 0; `--helpfull` also lists absl's.
    With `positional`, main takes the arguments after the flags; otherwise any is an error.
    """
    if any(a in ("--help", "-h", "-?") for a in sys.argv[1:]):
        print_help(sys.argv[0])
        sys.exit(0)

    def wrapped(argv):
        # Under `bazel run`, relative paths mean the user's directory, not the runfiles tree.
        if os.environ.get("BUILD_WORKING_DIRECTORY"):
            os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
        if len(argv) > 1 and not positional:
            print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
            sys.exit(2)
        if "onednn_training" in flags.FLAGS:  # A command that trains: TF reads this once, at import.
            from tfcompress.keras.kernels import set_training_kernels
            set_training_kernels(flags.FLAGS.onednn_training)
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
        from absl import logging
        logging.set_verbosity(logging.WARNING)  # The TFLite converter logs routine INFO lines.
        from tfcompress.errors import TfcError
        try:
            if "distribute" in flags.FLAGS and flags.FLAGS.distribute == "multi_worker":
                # Collectives are set up before TensorFlow runs anything (it refuses them later).
                from tfcompress.keras.distribute import strategy
                strategy("multi_worker")
            main(argv[1:]) if positional else main()
        except TfcError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    app.run(wrapped)
