"""Atomic writers: outputs appear whole or not at all.

Every writer stages into a temporary sibling of the destination (same
filesystem, so `os.replace` is atomic) and renames it into place only after
the content is complete.  A failure leaves no partial file or directory.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from tfcompress.errors import TfcError


def check_output_outside_input(output: str, input_path: str) -> None:
    """Raises TfcError if `output` is `input_path` or lies inside it.

    Args:
      output: destination path.
      input_path: the model path being read.
    """
    out = os.path.realpath(output)
    inp = os.path.realpath(input_path)
    if out == inp or out.startswith(inp.rstrip(os.sep) + os.sep):
        raise TfcError(f"output path {output} is inside the input {input_path}; "
                       "choose an output outside the model")


def _staging_dir(dest: str) -> str:
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise TfcError(f"cannot create output directory {parent}: {e.strerror}") from e
    return parent


@contextlib.contextmanager
def atomic_file(dest: str, mode: str = "wb") -> Iterator:
    """Yields a file object whose content replaces `dest` on clean exit."""
    parent = _staging_dir(dest)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(dest: str, data: bytes) -> None:
    """Writes `data` to `dest` atomically."""
    with atomic_file(dest, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(dest: str) -> Iterator[str]:
    """Yields an empty staging directory that replaces `dest` on clean exit.

    An existing `dest` directory is swapped out and deleted only after the new
    one is in place; an existing file at `dest` is an error.
    """
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise TfcError(f"output {dest} exists and is not a directory")
    parent = _staging_dir(dest)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(dest.rstrip(os.sep)) + ".", suffix=".tmp",
                           dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(dest):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(dest.rstrip(os.sep)) + ".", suffix=".old",
                                   dir=parent)
            os.rmdir(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_keras(model, dest: str) -> None:
    """Saves a Keras model to `dest` (.keras) atomically: staged under a temporary .keras name, then renamed.

    Only the model and its weights are saved, never an optimizer's state.
    The same model gives the same bytes (see `_reproducible_zip`).
    """
    if not dest.endswith(".keras"):
        raise TfcError(f"output {dest} must end in .keras")
    if getattr(model, "optimizer", None) is not None:
        # A model left compiled by training would carry its optimizer state: save the weights alone.
        from tfcompress.io.keras_models import copy_model  # pylint: disable=import-outside-toplevel
        model = copy_model(model)
    parent = _staging_dir(dest)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".tmp.keras", dir=parent)
    os.close(fd)
    try:
        model.save(tmp)
        _reproducible_zip(tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _reproducible_zip(path: str) -> None:
    """Rewrites a .keras archive so that it depends on the model only.

    Keras stamps the save time twice: in `metadata.json` ("date_saved") and
    as the zip entry time of `model.weights.h5`.  Both are set to the zip
    epoch (1980-01-01 00:00:00); entry order, contents and compression are
    kept.
    """
    import json  # pylint: disable=import-outside-toplevel
    import zipfile  # pylint: disable=import-outside-toplevel
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                if "date_saved" in meta:
                    meta["date_saved"] = "1980-01-01@00:00:00"
                data = json.dumps(meta).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            archive.writestr(fixed, data)
