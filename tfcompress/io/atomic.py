"""Atomic writers that never destroy user data.

Every writer stages into a temporary sibling of the destination (same
filesystem, so `os.replace` is atomic) and renames it into place only after
the content is complete.  A failure leaves no partial file or directory.

Safety rules, enforced here so that every command inherits them:

* an output that is, contains or lies inside an input is refused
  (`check_output`);
* an existing output is replaced only when the caller passes
  `overwrite=True` (the `--overwrite` flag);
* a directory output is only ever a folder tfcompress created: each one holds
  a `MARKER` file, and an existing directory without it is never replaced;
* staging names carry the writer's process id, so a process killed with
  SIGKILL leaves only staging entries that the next writer to the same
  destination recognises as stale and removes.
"""

import contextlib
import errno
import os
import re
import shutil
import tempfile
from typing import Iterable, Iterator, Optional

from tfcompress.errors import TfcError

# Written into every directory output; its presence is what makes a directory replaceable.
MARKER = ".tfcompress-output"
_MARKER_TEXT = "written by tfcompress; --overwrite may replace this folder\n"
_STAGING = ".tfcompress-"


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(output: str, inputs: Iterable[Optional[str]] = (), *, overwrite: bool = False,
                 directory: Optional[bool] = None) -> None:
    """Raises TfcError unless writing `output` leaves every input and every foreign file intact.

    Args:
      output: the destination the command will write.
      inputs: paths the command reads (model, images, cache, recipe); None entries are skipped.
      overwrite: whether an existing output that tfcompress wrote may be replaced.
      directory: True if the output is a directory, False if a file, None if either.

    Raises:
      TfcError: the output overlaps an input, exists without `overwrite`, is a
        directory tfcompress did not create, or is of the wrong kind.
    """
    if not output:
        raise TfcError("--output is required")
    check_no_overlap(output, inputs, what="output path")
    _check_replaceable(output, overwrite=overwrite, directory=directory)


def check_no_overlap(path: str, inputs: Iterable[Optional[str]], what: str = "output path") -> None:
    """Raises TfcError if `path` is, contains or lies inside any of `inputs` (None entries skipped)."""
    real = os.path.realpath(path)
    for input_path in inputs:
        if not input_path:
            continue
        inp = os.path.realpath(input_path)
        if _inside(real, inp):
            raise TfcError(f"{what} {path} is inside the input {input_path}; "
                           "choose a path outside the model and data")
        if _inside(inp, real):
            raise TfcError(f"{what} {path} contains the input {input_path}; "
                           "choose a path outside the model and data")


def _check_replaceable(output: str, *, overwrite: bool, directory: Optional[bool]) -> None:
    if not os.path.lexists(output):
        return
    is_dir = os.path.isdir(output) and not os.path.islink(output)
    if is_dir and not os.path.isfile(os.path.join(output, MARKER)):
        raise TfcError(f"output {output} is an existing folder that tfcompress did not create; "
                       "choose a new path (tfcompress never replaces a folder of yours)")
    if directory is False and is_dir:
        raise TfcError(f"output {output} is a directory; name a file")
    if directory is True and not is_dir:
        raise TfcError(f"output {output} exists and is not a directory")
    if not overwrite:
        raise TfcError(f"output {output} exists; pass --overwrite to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(parent: str, base: str) -> None:
    """Removes staging entries for `base` left by tfcompress processes that no longer run."""
    pattern = re.compile(re.escape("." + base + _STAGING) + r"(\d+)\.")
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _staging_dir(dest: str) -> str:
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise TfcError(f"cannot create output directory {parent}: {e.strerror}") from e
    _clean_stale(parent, _base(dest))
    return parent


def _base(dest: str) -> str:
    return os.path.basename(os.path.abspath(dest))


def _prefix(dest: str) -> str:
    return "." + _base(dest) + _STAGING + f"{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: str, directory: bool) -> None:
    """mkstemp/mkdtemp make 0600/0700 entries; an output gets the modes the user's umask gives new files."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _os_error(e: OSError, dest: str) -> TfcError:
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the filesystem is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.ENOTDIR: "a parent is not a directory", errno.EISDIR: "it is a directory"}.get(
                  e.errno, e.strerror or type(e).__name__)
    return TfcError(f"cannot write {dest}: {reason}")


@contextlib.contextmanager
def atomic_file(dest: str, mode: str = "wb", *, overwrite: bool = False) -> Iterator:
    """Yields a file object whose content becomes `dest` on clean exit.

    Raises:
      TfcError: `dest` exists and `overwrite` is False, `dest` is a directory,
        or the filesystem refuses the write.
    """
    _check_replaceable(dest, overwrite=overwrite, directory=False)
    parent = _staging_dir(dest)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(dest), suffix=".tmp", dir=parent)
    except OSError as e:
        raise _os_error(e, dest) from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish_mode(tmp, directory=False)
        os.replace(tmp, dest)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _os_error(e, dest) from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(dest: str, data: bytes, *, overwrite: bool = False) -> None:
    """Writes `data` to `dest` atomically (see `atomic_file`)."""
    with atomic_file(dest, "wb", overwrite=overwrite) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(dest: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yields an empty staging directory that becomes `dest` on clean exit.

    The directory receives `MARKER`.  An existing `dest` is replaced only if
    `overwrite` and it holds the marker; it is swapped out and deleted only
    after the new one is in place.

    Raises:
      TfcError: `dest` exists and may not be replaced, or the filesystem refuses the write.
    """
    _check_replaceable(dest, overwrite=overwrite, directory=True)
    parent = _staging_dir(dest)
    try:
        tmp = tempfile.mkdtemp(prefix=_prefix(dest), suffix=".tmp", dir=parent)
    except OSError as e:
        raise _os_error(e, dest) from e
    try:
        yield tmp
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            f.write(_MARKER_TEXT)
        _publish_mode(tmp, directory=True)
        old = None
        if os.path.exists(dest):
            _check_replaceable(dest, overwrite=overwrite, directory=True)
            old = tempfile.mkdtemp(prefix=_prefix(dest), suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _os_error(e, dest) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_keras(model, dest: str, *, overwrite: bool = False) -> None:
    """Saves a Keras model to `dest` (.keras) atomically: staged under a temporary .keras name, then renamed.

    Only the model and its weights are saved, never an optimizer's state.
    The same model gives the same bytes (see `_reproducible_zip`).

    Raises:
      TfcError: `dest` does not end in .keras, exists without `overwrite`, or cannot be written.
    """
    if not dest.endswith(".keras"):
        raise TfcError(f"output {dest} must end in .keras")
    _check_replaceable(dest, overwrite=overwrite, directory=False)
    if getattr(model, "optimizer", None) is not None:
        # A model left compiled by training would carry its optimizer state: save the weights alone.
        from tfcompress.io.keras_models import copy_model  # pylint: disable=import-outside-toplevel
        model = copy_model(model)
    parent = _staging_dir(dest)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(dest), suffix=".tmp.keras", dir=parent)
    except OSError as e:
        raise _os_error(e, dest) from e
    os.close(fd)
    try:
        model.save(tmp)
        _reproducible_zip(tmp)
        _publish_mode(tmp, directory=False)
        os.replace(tmp, dest)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _os_error(e, dest) from e
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
