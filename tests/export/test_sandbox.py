"""User flatbuffers run in LiteRT in a child process first: a hang or a crash there is an error line here, and
the child comes back for the next file."""

import os
import signal
import sys
import threading

import pytest

from tests.conftest import TESTDATA, run_tool_in_process
from tfcompress.errors import TfcError
from tfcompress.export import flatbuffer as fb
from tfcompress.export import litert

SEED = os.path.join(TESTDATA, "fuzz", "digits_int8.tflite")


@pytest.fixture(scope="module")
def valid():
    with open(SEED, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def slow(valid):
    """The same model with its input declared 8,192x wider: consistent, but about 13 s of compute to check."""
    model = fb.parse(valid)
    subgraph = model.subgraphs[0]
    tensor = subgraph.tensors[subgraph.inputs[0]]
    tensor.shape = [int(d) * (8192 if i == 2 else 1) for i, d in enumerate(tensor.shape)]
    return fb.serialize(model)


def test_a_valid_file_passes_and_the_child_is_reused(valid):
    sandbox = litert.Sandbox(timeout=30)
    try:
        sandbox.check(valid, "m.tflite")
        child = sandbox._proc.pid  # pylint: disable=protected-access
        sandbox.check(valid, "m.tflite")
        assert sandbox._proc.pid == child  # pylint: disable=protected-access
    finally:
        sandbox.close()


def test_a_file_litert_refuses_is_an_error_line(valid):
    damaged = bytearray(valid)
    damaged[-200:] = bytes(200)  # The root tables are at the end: LiteRT's verifier refuses the file.
    with pytest.raises(TfcError, match="LiteRT cannot load m.tflite: "):
        litert.Sandbox(timeout=30).check(bytes(damaged), "m.tflite")


def test_a_hang_is_cut_off_and_the_next_file_runs(valid, slow):
    assert fb.parse(slow)  # Our own reader has no reason to refuse it: only running it shows the cost.
    sandbox = litert.Sandbox(timeout=2)
    try:
        with pytest.raises(TfcError, match=r"LiteRT did not finish loading and running slow.tflite within 2 s"):
            sandbox.check(slow, "slow.tflite")
        sandbox.timeout = 30
        sandbox.check(valid, "m.tflite")  # A fresh child.
    finally:
        sandbox.close()


def test_a_crash_in_the_child_is_an_error_line(valid, slow):
    """A segfault of the interpreter (sent to the child while it runs) ends the child, not this process."""
    sandbox = litert.Sandbox(timeout=60)
    try:
        sandbox.check(valid, "m.tflite")
        child = sandbox._proc.pid  # pylint: disable=protected-access
        threading.Timer(1.0, os.kill, (child, signal.SIGSEGV)).start()
        with pytest.raises(TfcError, match=r"LiteRT crashes on slow.tflite \(SIGSEGV\)"):
            sandbox.check(slow, "slow.tflite")
        sandbox.check(valid, "m.tflite")
        assert sandbox._proc.pid != child  # pylint: disable=protected-access
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def crashing(tmp_path_factory):
    """A float16 model whose dequantized conv weight is declared 524,291 rows tall (a mutation the fuzzer found):
    our reader has nothing to object to, and LiteRT itself dies of it (SIGSEGV) when run in a process of its own."""
    import subprocess
    with open(os.path.join(TESTDATA, "fuzz", "digits_float16.tflite"), "rb") as f:
        model = fb.parse(f.read())
    subgraph = model.subgraphs[0]
    op = next(op for op in subgraph.operators
              if fb.op_name(model, op) == "DEQUANTIZE" and len(subgraph.tensors[op.outputs[0]].shape) == 4)
    tensor = subgraph.tensors[op.outputs[0]]
    tensor.shape = [int(d) if i != 1 else 524291 for i, d in enumerate(tensor.shape)]
    path = tmp_path_factory.mktemp("crash") / "crash.tflite"
    path.write_bytes(fb.serialize(model))
    code = ("import sys; from tfcompress.export import litert_child; "
            "litert_child.check(open(sys.argv[1], 'rb').read())")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)), timeout=120)
    assert proc.returncode == -signal.SIGSEGV  # The danger is real.
    return path


def test_an_interpreter_crash_is_an_error_line_and_this_process_lives_on(crashing):
    proc = run_tool_in_process("eval", f"--model={crashing}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: LiteRT crashes on {crashing} (SIGSEGV); the file is " \
                                                   "damaged or hostile"


def test_eval_refuses_a_file_that_would_hang_it(slow, tmp_path, monkeypatch):
    monkeypatch.setattr(litert._SANDBOX, "timeout", 2)  # pylint: disable=protected-access
    path = tmp_path / "slow.tflite"
    path.write_bytes(slow)
    proc = run_tool_in_process("eval", f"--model={path}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"error: LiteRT did not finish loading and running {path} "
                                                    "within 2 s")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
