"""Shared fixtures: the shipped testdata and helpers to build small Keras graphs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(ROOT, "testdata")
MODELS = os.path.join(TESTDATA, "models")
CALIBRATION = os.path.join(TESTDATA, "images", "calibration")
HELDOUT = os.path.join(TESTDATA, "images", "heldout")
KERAS_MODEL = os.path.join(MODELS, "digits_resnet.keras")

# Tolerances, named once.  Float rewrites must not change outputs beyond float
# round-off; int8 results are compared in quantization steps.
FLOAT_RTOL = 1e-6
FLOAT_ATOL = 1e-5
# Filter pruning keeps whole channels: a MACs target may be missed by this share of the model's MACs.
MACS_ROUNDING = 0.02


@pytest.fixture(scope="session")
def float_model():
    """The shipped digits model, loaded and optimized."""
    from tfcompress.graph.passes import optimize
    from tfcompress.io.loaders import load_model
    model, _ = optimize(load_model(KERAS_MODEL))
    return model


@pytest.fixture(scope="module")
def digits():
    """(the shipped digits model loaded by Keras 3, 400 unshipped digits as float NHWC) for Keras-side transforms."""
    import keras
    from tfcompress.evaluate.zoo import digits_training_set
    model = keras.saving.load_model(KERAS_MODEL, safe_mode=True, compile=False)
    x, _ = digits_training_set(400)
    return model, x


def assert_close(actual, expected, rtol=FLOAT_RTOL, atol=FLOAT_ATOL):
    """np.testing.assert_allclose with the mean and mean-absolute error in the message."""
    import numpy as np
    diff = np.asarray(actual, np.float64) - np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                               err_msg=f"mean error {diff.mean():.3g}, mean abs error {np.abs(diff).mean():.3g}")


def run_tool(tool: str, *args, timeout: int = 900, env=None):
    """Runs tools/<tool>.py with `args` (and `env` over this process's environment); the CompletedProcess
    (text output)."""
    import subprocess
    import sys
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{tool}.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


class ToolResult:
    """What a command did: its exit status and output, as `subprocess.CompletedProcess` names them."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


_TOOL = {}


def _tool_module(tool: str):
    """tools/<tool>.py imported with its flags; another tool's flags are removed first (names overlap)."""
    import importlib
    import sys
    from absl import flags
    if _TOOL.get("name") != tool:
        for name in list(flags.FLAGS):
            defined_by = flags.FLAGS.find_module_defining_flag(name) or ""
            if defined_by.startswith("tools."):
                delattr(flags.FLAGS, name)
        sys.modules.pop(f"tools.{tool}", None)
        _TOOL.update(name=tool, module=importlib.import_module(f"tools.{tool}"))
    return _TOOL["module"]


def run_tool_in_process(tool: str, *args) -> ToolResult:
    """Runs tools/<tool>.py's main in this process as its command line would: flags parsed, a TfcError printed
    as one `error:` line with exit status 1.  For bad-input cases, where a process adds only TF's start-up.
    Any other exception propagates, so a crash fails the test instead of passing as a non-zero exit."""
    import contextlib
    import io
    import sys
    from absl import flags
    from tfcompress.errors import TfcError
    module = _tool_module(tool)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        flags.FLAGS.unparse_flags()
        try:
            rest = flags.FLAGS([f"tfcompress {tool}", *args])[1:]
        except flags.Error as e:
            print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
            return ToolResult(1, out.getvalue(), err.getvalue())
        try:
            module.main(rest) if rest else module.main()  # Arguments after the flags: only tools that take them.
            code = 0
        except TfcError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 1
    return ToolResult(code, out.getvalue(), err.getvalue())


def write_digits(root, x, y) -> str:
    """Writes float images (NHWC in [0, 1], first channel) as DIR/<label>/NNNN.png; returns DIR."""
    import numpy as np
    from PIL import Image
    for k, (img, label) in enumerate(zip(x, y)):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        Image.fromarray((img[..., 0] * 255).round().astype(np.uint8)).save(os.path.join(root, str(label), f"{k:04d}.png"))
    return str(root)


def error_lines(proc):
    """The `error:` lines a failed tool printed (TF's own start-up logging aside)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def zeroed_reference(model, removed, scales=None):
    """An independent float reference for thinning: a copy of `model` whose consumers are blind to removed
    channels.

    removed: consumer layer name -> input-channel indices (of the consumer's input) whose kernel rows are zeroed.
    scales: consumer layer name -> per-input-channel factors applied to its kernel rows first (ThiNet's
      least-squares rescaling), or None.
    """
    import keras
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, rows in removed.items():
        weights = copy.get_layer(name).get_weights()
        if scales is not None and name in scales:
            weights[0] = weights[0] * scales[name].reshape((1,) * (weights[0].ndim - 2) + (-1, 1))
        weights[0][..., rows, :] = 0.0
        copy.get_layer(name).set_weights(weights)
    return copy


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a few bytes): a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))
