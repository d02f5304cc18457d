"""The command line, through subprocesses: end to end, cache reuse and determinism (bad input: test_bad_inputs)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import CALIBRATION, HELDOUT, MODELS, ROOT

TOOL = os.path.join(ROOT, "tools", "quantize_graph.py")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _run(*args, tool=TOOL):
    return subprocess.run([sys.executable, tool, "--progress=false", *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)


def _tree_bytes(path):
    return {os.path.relpath(os.path.join(r, f), path): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(path) for f in fs}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    cache = str(out / "ranges.json")
    proc = _run(f"--input={MODELS}/digits_resnet_savedmodel", f"--output={out}/q8", f"--calibration_images={CALIBRATION}",
                f"--calibration_cache={cache}", f"--eval_images={HELDOUT}")
    assert proc.returncode == 0, proc.stderr
    return out, cache, proc


def test_end_to_end_table_and_fresh_process_load(first_run):
    out, cache, proc = first_run
    assert "100 images read" in proc.stdout and "QuantizedConv2D" in proc.stdout
    # 10 of 11, per kind: the depthwise conv stays float with the reference kernels.
    assert "conv, depthwise and matmul ops quantized: 91% (Conv2D 8/8, DepthwiseConv2dNative 0/1, MatMul 2/2)" \
        in proc.stdout, proc.stdout
    assert "gzip -9 bytes" in proc.stdout and "top-1" in proc.stdout
    check = ("import sys, numpy as np, tensorflow as tf\n"
             "m = tf.saved_model.load(sys.argv[1]); f = m.signatures['serving_default']\n"
             "print(sorted(f.structured_input_signature[1]), sorted(f.structured_outputs))\n"
             "y = f(image=tf.constant(np.random.default_rng(0).random((2, 32, 32, 3), np.float32)))['output_0']\n"
             "print(y.dtype.name, y.shape, bool(np.allclose(np.sum(y.numpy(), 1), 1, atol=1e-3)))\n")
    res = subprocess.run([sys.executable, "-c", check, f"{out}/q8"], capture_output=True, text=True, env=ENV)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["['image'] ['output_0']", "float32 (2, 10) True"]


def test_second_run_reuses_cache_and_writes_identical_bytes(first_run, tmp_path):
    out, cache, _ = first_run
    # The ranges come from the cache; bias correction reads the images (it needs pixels), the same bytes result.
    proc = _run(f"--input={MODELS}/digits_resnet_savedmodel", f"--output={tmp_path}/q8",
                f"--calibration_images={CALIBRATION}", f"--calibration_cache={cache}", f"--eval_images={HELDOUT}")
    assert proc.returncode == 0, proc.stderr
    assert "reused cache, 0 images read; empirical bias correction on 10 layers (from 100 images)" in proc.stdout
    assert _tree_bytes(f"{out}/q8") == _tree_bytes(f"{tmp_path}/q8")
    # Without bias correction a reused cache reads no image: the folder given does not even exist.
    proc = _run(f"--input={MODELS}/digits_resnet_savedmodel", f"--output={tmp_path}/q8_plain",
                f"--calibration_images={tmp_path}/no_such_folder", f"--calibration_cache={cache}",
                f"--eval_images={HELDOUT}", "--bias_correction=none")
    assert proc.returncode == 0, proc.stderr
    assert "reused cache, 0 images read" in proc.stdout


def test_frozen_pb_output(tmp_path):
    proc = _run(f"--input={MODELS}/digits_resnet.pb", f"--output={tmp_path}/q8.pb", "--output_format=frozen_pb",
                "--mode=weights")
    assert proc.returncode == 0, proc.stderr
    assert os.path.getsize(f"{tmp_path}/q8.pb") < os.path.getsize(f"{MODELS}/digits_resnet.pb") / 3


CONVERT = os.path.join(ROOT, "tools", "convert.py")


def test_convert_every_mode_from_one_cache(tmp_path):
    """int8 then uint8 from one cache: no image read, same bytes on rerun.

    Empirical bias correction and the leave-one-out vector ranges measure on pixels, which a cache does not
    hold, so these runs use the analytic correction (from the cache's channel means) and the calibrated ranges.
    """
    cache = tmp_path / "ranges.json"
    first = _run(f"--output={tmp_path / 'a.tflite'}", f"--calibration_cache={cache}", "--bias_correction=analytic",
                 "--vector_ranges=calibrated", tool=CONVERT)
    assert first.returncode == 0, first.stderr
    assert "100 images read" in first.stdout
    for mode in ("uint8", "int8"):
        out = tmp_path / f"{mode}.tflite"
        again = _run(f"--output={out}", f"--calibration_cache={cache}", f"--quantize={mode}",
                     "--calibration_images=/nonexistent", "--bias_correction=analytic", "--vector_ranges=calibrated",
                     tool=CONVERT)
        assert again.returncode == 0, again.stderr
        assert "reused cache, 0 images read" in again.stdout
    assert (tmp_path / "int8.tflite").read_bytes() == (tmp_path / "a.tflite").read_bytes()
    assert (tmp_path / "a.tflite").stat().st_size < os.path.getsize(os.path.join(MODELS, "digits_resnet.keras")) / 4


def test_convert_bad_mode_writes_nothing(tmp_path):
    out = tmp_path / "x.tflite"
    proc = _run(f"--output={out}", "--quantize=int4", tool=CONVERT)
    assert proc.returncode == 1 and not out.exists()  # absl refuses the flag value: exit 1, not a crash.


def test_convert_layer_report_fallback_target_and_metadata(tmp_path):
    out = tmp_path / "fallback.tflite"
    proc = _run(f"--output={out}", "--layer_report=3", "--float_layers=dense_1", "--min_agreement=1.0",
                f"--labels_from={HELDOUT}", "--target=hexagon-dsp", tool=CONVERT)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "per-layer quantization error" in proc.stdout
    report = proc.stdout.split("per-layer quantization error")[1].split("\n\n")[0]
    assert len([l for l in report.splitlines() if "CONV" in l or "FULLY" in l or "ADD" in l]) == 3
    assert "float layers: dense_1; size cost +" in proc.stdout
    # The float layer is what a DSP cannot take; without --strict the preflight only reports it.
    assert "constraint: not fully 8-bit quantized: float outputs from DEQUANTIZE, FULLY_CONNECTED" in proc.stdout
    assert "10 labels" in proc.stdout
    from tfcompress.export.metadata import read
    meta = read(out.read_bytes())
    assert meta.labels == tuple(str(i) for i in range(10))
    assert meta.mean == (0.0,) * 3 and meta.std == (255.0,) * 3


def test_auto_calibrator_is_for_convert_only(tmp_path):
    proc = _run(f"--output={tmp_path}/q8", "--calibrator=auto")
    assert proc.returncode == 1 and "--calibrator=auto is only for convert" in proc.stderr


def test_every_command_help_lists_its_own_flags():
    """`tfcompress CMD --help` exits 0 and lists every flag the command's module defines (read from its source)."""
    import re
    from tools.main import COMMANDS
    for command, module in sorted(COMMANDS.items()):
        with open(os.path.join(ROOT, "tools", f"{module}.py"), encoding="utf-8") as f:
            own = re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', f.read())
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{module}.py"), "--help"],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 0, (command, proc.stderr[-1000:])
        listed = set(re.findall(r"^  --(\w+):", proc.stdout, re.M))
        assert listed and set(own) <= listed, (command, sorted(set(own) - listed))
        assert "input" in listed, command  # --input names the model everywhere (old names stay as aliases).
        assert "--helpfull" not in listed and "--flagfile" not in listed  # absl's own stay out of the way.
    listing = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['tfcompress']; "
                              "from tools.main import run; run()"], capture_output=True, text=True, env=ENV,
                             cwd=ROOT, timeout=120)
    assert listing.returncode == 0
    assert all(re.search(rf"^  {c} +\S", listing.stdout, re.M) for c in COMMANDS), listing.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
