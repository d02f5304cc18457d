"""What every command-line tool shares: quiet TF start-up, error handling, defaults, table printing.

Import this before anything that imports TensorFlow.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(os.path.dirname(TOOLS_DIR), "testdata")
DEFAULT_MODEL = os.path.join(TESTDATA, "models", "digits_resnet.keras")
DEFAULT_CALIBRATION = os.path.join(TESTDATA, "images", "calibration")
DEFAULT_EVAL = os.path.join(TESTDATA, "images", "heldout")


def define_model_flags():
    """Flags naming the input model and how to read it; returns the FlagHolders."""
    return dict(
        input=flags.DEFINE_string("input", None, "Model: SavedModel dir, .keras, .h5 or frozen .pb. "
                                  "Default: the digits model shipped in testdata/."),
        signature=flags.DEFINE_string("signature", "serving_default", "SavedModel signature key."),
        input_names=flags.DEFINE_list("input_names", None, "Frozen .pb only: input tensor names."),
        output_names=flags.DEFINE_list("output_names", None, "Frozen .pb only: output tensor names."),
        allow_unsafe_ops=flags.DEFINE_boolean("allow_unsafe_ops", False,
                                              "Accept graphs with file or exec ops (ReadFile, PyFunc, …)."),
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
        input_mean=flags.DEFINE_float("input_mean", 0.0, "Input normalization: (pixel - mean) / std."),
        input_std=flags.DEFINE_float("input_std", 255.0, "Input normalization: (pixel - mean) / std."),
        batch_size=flags.DEFINE_integer("batch_size", 32, "Images per calibration batch.", lower_bound=1),
    )


def define_normalization_flags():
    """--input_mean/--input_std for tools that run finished models: default from the model's metadata."""
    return dict(
        input_mean=flags.DEFINE_float("input_mean", None, "Input normalization (pixel - mean) / std.  Default: "
                                      "the .tflite metadata's, else 0."),
        input_std=flags.DEFINE_float("input_std", None, "Input normalization (pixel - mean) / std.  Default: "
                                     "the .tflite metadata's, else 255."),
    )


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
                                              "Accept graphs with file or exec ops (ReadFile, PyFunc, …)."),
    )


def normalization(norm_flags, model_path: str):
    """(mean, std): the flags if given, else the .tflite metadata's, else (0, 255)."""
    from tfcompress.errors import TfcError
    mean, std = norm_flags["input_mean"].value, norm_flags["input_std"].value
    if model_path.lower().endswith(".tflite") and (mean is None or std is None) and os.path.isfile(model_path):
        from tfcompress.export.flatbuffer import read_metadata
        with open(model_path, "rb") as f:
            meta = read_metadata(f.read())
        if meta is not None:
            norm = meta["input_normalization"]
            if len(set(norm["mean"])) != 1 or len(set(norm["std"])) != 1:
                raise TfcError(f"{model_path}: per-channel normalization in the metadata is not supported here; "
                               "pass --input_mean and --input_std")
            mean = norm["mean"][0] if mean is None else mean
            std = norm["std"][0] if std is None else std
    return (0.0 if mean is None else mean), (255.0 if std is None else std)


def open_artifact_from_flags(path: str, norm_flags, run_flags, xnnpack=None):
    """(artifact, preprocessing) for a finished model, from the normalization and runtime flags."""
    from tfcompress.calibrate.images import Preprocessing
    from tfcompress.evaluate.artifacts import QuantizedIO, open_artifact
    mean, std = normalization(norm_flags, path)
    artifact = open_artifact(path, threads=run_flags["threads"].value,
                             quantized_io=QuantizedIO(run_flags["quantized_io"].value),
                             xnnpack=run_flags["xnnpack"].value if xnnpack is None else xnnpack,
                             allow_unsafe_ops=run_flags["allow_unsafe_ops"].value, mean=mean, std=std)
    return artifact, Preprocessing.for_input(artifact.input_shape, mean=mean, std=std)


def resolve_paths(model_flags, cal_flags, output: str):
    """(input model, calibration images, whether this is the default run) for a tool writing `output`.

    With no --input the shipped model and its calibration images are used.

    Raises:
      TfcError: no --output, or an --output inside the input.
    """
    from tfcompress.errors import TfcError
    from tfcompress.io.atomic import check_output_outside_input
    if not output:
        raise TfcError("--output is required")
    default_run = model_flags["input"].value is None
    input_path = model_flags["input"].value or DEFAULT_MODEL
    images = cal_flags["calibration_images"].value or (DEFAULT_CALIBRATION if default_run else None)
    check_output_outside_input(output, input_path)
    return input_path, images, default_run


def calibrator_from_flags(cal_flags):
    from tfcompress.calibrate.calibrators import CalibratorConfig
    from tfcompress.errors import TfcError
    if cal_flags["calibrator"].value == "auto":
        raise TfcError("--calibrator=auto is only for convert (it compares quantized TFLite outputs)")
    return CalibratorConfig(method=cal_flags["calibrator"].value, percentile=cal_flags["percentile"].value)


def load_model_from_flags(f):
    """Loads the model named by define_model_flags() holders (default: the shipped model)."""
    from tfcompress.io.loaders import load_model
    return load_model(f["input"].value or DEFAULT_MODEL, signature=f["signature"].value,
                      input_names=f["input_names"].value, output_names=f["output_names"].value,
                      allow_unsafe_ops=f["allow_unsafe_ops"].value)


BENCHMARK_MODELS = ("digits", "digits_outliers", "mobilenet_v2")


def benchmark_model(name: str, mobilenet_size: int = 224):
    """(optimized float model, preprocessing, calibration image paths) for a benchmark model.

    digits: the shipped model; digits_outliers: the same function with one
    outlier channel (`zoo.digits_with_outliers`); mobilenet_v2: Keras
    MobileNetV2(alpha=0.35) with seeded weights, BN statistics set from images.
    """
    from tfcompress.calibrate.images import Preprocessing, list_images
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


def print_table(rows, out=sys.stdout) -> None:
    """Prints rows (lists of cells) as an aligned text table; the first row is the header."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def run_main(main) -> None:
    """absl's app.run, with TfcError turned into one line on stderr and exit status 1."""
    def wrapped(argv):
        # Under `bazel run`, relative paths mean the user's directory, not the runfiles tree.
        if os.environ.get("BUILD_WORKING_DIRECTORY"):
            os.chdir(os.environ["BUILD_WORKING_DIRECTORY"])
        if len(argv) > 1:
            print(f"error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
            sys.exit(2)
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
        from absl import logging
        logging.set_verbosity(logging.WARNING)  # The TFLite converter logs routine INFO lines.
        from tfcompress.errors import TfcError
        try:
            main()
        except TfcError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    app.run(wrapped)
