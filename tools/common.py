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
        calibrator=flags.DEFINE_enum("calibrator", "minmax", ["minmax", "percentile"], "Range calibrator."),
        percentile=flags.DEFINE_float("percentile", 99.99, "Percentile kept by --calibrator=percentile."),
        input_mean=flags.DEFINE_float("input_mean", 0.0, "Input normalization: (pixel - mean) / std."),
        input_std=flags.DEFINE_float("input_std", 255.0, "Input normalization: (pixel - mean) / std."),
        batch_size=flags.DEFINE_integer("batch_size", 32, "Images per calibration batch.", lower_bound=1),
    )


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
    return CalibratorConfig(method=cal_flags["calibrator"].value, percentile=cal_flags["percentile"].value)


def load_model_from_flags(f):
    """Loads the model named by define_model_flags() holders (default: the shipped model)."""
    from tfcompress.io.loaders import load_model
    return load_model(f["input"].value or DEFAULT_MODEL, signature=f["signature"].value,
                      input_names=f["input_names"].value, output_names=f["output_names"].value,
                      allow_unsafe_ops=f["allow_unsafe_ops"].value)


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
        from tfcompress.errors import TfcError
        try:
            main()
        except TfcError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    app.run(wrapped)
