"""No command destroys user data: outputs never overlap inputs, never replace a foreign file or folder,
replace their own only with --overwrite, and leave nothing behind when killed."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import CALIBRATION, KERAS_MODEL, ROOT, run_tool_in_process
from tfcompress.errors import TfcError
from tfcompress.io import atomic

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _tool(name, *args):
    """The command run in this process (see conftest.run_tool_in_process): the refusals come before any work."""
    return run_tool_in_process(name, *(() if name == "calibrate" else ("--noprogress",)), *args)


def _digest(path):
    """SHA-256 over every file under `path` (names and bytes), or of the file itself."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode() + b"\0")
                with open(full, "rb") as f:
                    h.update(f.read())
    else:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _one_error_line(proc, fragment):
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def user_folder(tmp_path):
    """A user's folder holding their model and an unrelated file."""
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(KERAS_MODEL, folder / "m.keras")
    (folder / "notes.txt").write_text("mine\n")
    return folder


# --- the four reproductions from the reliability issue, through the real commands -------------------------------

def test_quantize_graph_output_containing_its_input_is_refused(user_folder):
    before = _digest(user_folder)
    proc = _tool("quantize_graph", f"--input={user_folder}/m.keras", f"--output={user_folder}", "--mode=weights")
    _one_error_line(proc, "contains the input")
    assert _digest(user_folder) == before
    proc = _tool("quantize_graph", f"--input={user_folder}/m.keras", f"--output={user_folder}", "--mode=weights",
                 "--overwrite")
    _one_error_line(proc, "contains the input")
    assert _digest(user_folder) == before


def test_compress_output_containing_its_input_is_refused(user_folder):
    before = _digest(user_folder)
    proc = _tool("compress", f"--input={user_folder}/m.keras", f"--output={user_folder}", "--runs=0")
    _one_error_line(proc, "contains the input")
    assert _digest(user_folder) == before


def test_existing_user_folder_is_never_replaced(user_folder, tmp_path):
    before = _digest(user_folder)
    for extra in ([], ["--overwrite"]):
        proc = _tool("quantize_graph", f"--output={user_folder}", "--mode=weights", *extra)
        _one_error_line(proc, "tfcompress did not create")
        assert _digest(user_folder) == before
    assert sorted(os.listdir(tmp_path)) == ["v"]  # No staging folder left beside it.


def test_calibration_cache_naming_the_model_is_refused(user_folder):
    before = _digest(user_folder)
    model = f"{user_folder}/m.keras"
    proc = _tool("calibrate", f"--input={model}", f"--calibration_cache={model}", "--recalibrate",
                 f"--calibration_images={CALIBRATION}")
    _one_error_line(proc, "is inside the input")
    assert _digest(user_folder) == before
    # Another file of the user's, not an input: still never overwritten by a cache.
    proc = _tool("calibrate", f"--input={model}", f"--calibration_cache={user_folder}/notes.txt", "--recalibrate",
                 f"--calibration_images={CALIBRATION}")
    _one_error_line(proc, "not a tfcompress calibration cache")
    assert _digest(user_folder) == before


def test_second_run_needs_overwrite_and_then_replaces_atomically(tmp_path):
    out = tmp_path / "q8"
    first = _tool("quantize_graph", f"--output={out}", "--mode=weights")
    assert first.returncode == 0, first.stderr[-2000:]
    assert os.path.isfile(out / atomic.MARKER)
    written = _digest(out)
    again = _tool("quantize_graph", f"--output={out}", "--mode=weights_rounded")
    _one_error_line(again, "exists; pass --overwrite")
    assert _digest(out) == written
    replaced = _tool("quantize_graph", f"--output={out}", "--mode=weights_rounded", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert _digest(out) != written and os.path.isfile(out / "saved_model.pb")
    assert sorted(os.listdir(tmp_path)) == ["q8"]


def test_killed_prune_leaves_no_output_and_the_next_run_cleans_its_staging(tmp_path):
    """SIGKILL mid-run (fine-tuning started): no output; the next writer removes the dead process's staging."""
    out = tmp_path / "pruned.keras"
    args = [sys.executable, os.path.join(ROOT, "tools", "prune.py"), "--noprogress", f"--output={out}",
            "--sparsity=0.5", "--epochs=200"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    try:
        time.sleep(12)  # Past TF's start-up and loading; 200 epochs take far longer.
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    # A staging file as a killed save would leave it, with the dead pid in its name.
    stale = tmp_path / f".pruned.keras.tfcompress-{proc.pid}.abcd.tmp.keras"
    stale.write_bytes(b"partial")
    atomic.write_bytes(str(tmp_path / "pruned.keras"), b"x")
    assert sorted(os.listdir(tmp_path)) == ["pruned.keras"]


# --- the library rules behind them (no TF) ------------------------------------------------------------------------

def test_check_output_rules(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"model")
    with pytest.raises(TfcError, match="is inside the input"):
        atomic.check_output(str(model), [str(model)])
    with pytest.raises(TfcError, match="contains the input"):
        atomic.check_output(str(tmp_path), [str(model)], overwrite=True)
    with pytest.raises(TfcError, match="is inside the input"):
        atomic.check_output(str(tmp_path / "images" / "out"), [str(tmp_path / "images")])
    with pytest.raises(TfcError, match="exists; pass --overwrite"):
        atomic.check_output(str(model), [])
    atomic.check_output(str(model), [], overwrite=True)  # An existing file may be replaced on request.
    with pytest.raises(TfcError, match="is a directory; name a file"):
        atomic.check_output(str(_owned_dir(tmp_path / "d")), [], overwrite=True, directory=False)
    with pytest.raises(TfcError, match="--output is required"):
        atomic.check_output("", [])
    atomic.check_output(str(tmp_path / "new"), [str(model), None])


def _owned_dir(path):
    with atomic.atomic_dir(str(path)) as staging:
        open(os.path.join(staging, "f"), "w").close()
    return path


def test_atomic_dir_replaces_only_its_own_folders(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep").write_text("x")
    with pytest.raises(TfcError, match="did not create"):
        with atomic.atomic_dir(str(mine), overwrite=True):
            pass
    assert (mine / "keep").read_text() == "x"
    owned = _owned_dir(tmp_path / "owned")
    with pytest.raises(TfcError, match="exists; pass --overwrite"):
        with atomic.atomic_dir(str(owned)):
            pass
    with atomic.atomic_dir(str(owned), overwrite=True) as staging:
        open(os.path.join(staging, "g"), "w").close()
    assert sorted(os.listdir(owned)) == sorted([atomic.MARKER, "g"])
    assert sorted(os.listdir(tmp_path)) == ["mine", "owned"]


def test_failed_write_leaves_nothing_and_maps_os_errors(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(str(tmp_path / "f.bin")) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(TfcError, match="cannot create output directory"):
        atomic.write_bytes(str(blocker / "sub" / "x.bin"), b"x")
    if os.geteuid() != 0:  # root writes through permission bits.
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(TfcError, match="permission denied"):
            atomic.write_bytes(str(ro / "x.bin"), b"x")


def test_outputs_get_the_modes_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_bytes(str(tmp_path / "f.bin"), b"x")
        owned = _owned_dir(tmp_path / "d")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640
    assert owned.stat().st_mode & 0o777 == 0o750


def test_stale_staging_of_live_processes_is_kept(tmp_path):
    live = tmp_path / f".out.bin.tfcompress-{os.getppid()}.zz.tmp"
    live.write_bytes(b"another writer, still running")
    foreign = tmp_path / ".out.bin.user-file"
    foreign.write_bytes(b"not ours")
    atomic.write_bytes(str(tmp_path / "out.bin"), b"x")
    assert live.exists() and foreign.exists()


def test_cache_save_replaces_only_a_cache(tmp_path):
    from tfcompress.calibrate import cache as cache_lib
    from tfcompress.calibrate.calibrators import CalibratorConfig
    cache = cache_lib.CalibrationCache(model_fingerprint="a" * 64, preprocessing={}, stats={},
                                       calibrator=CalibratorConfig(method="minmax"))
    path = tmp_path / "c.json"
    cache_lib.save(cache, str(path))
    cache_lib.save(cache, str(path))  # Its own cache: replaced (that is what --recalibrate asks for).
    assert json.loads(path.read_text())["format"] == cache_lib.FORMAT
    for content in (b"PK\x03\x04zip", b'{"format": "something else"}', b"[1, 2]"):
        other = tmp_path / "other.json"
        other.write_bytes(content)
        with pytest.raises(TfcError, match="not a tfcompress calibration cache"):
            cache_lib.save(cache, str(other))
        assert other.read_bytes() == content


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
