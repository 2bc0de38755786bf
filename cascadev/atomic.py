"""Writing outputs atomically: a temporary file beside the destination, renamed when complete.

A failed or interrupted run never leaves a half-written file under the name the user asked for.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CascadeVError

# Files made by mkstemp are private (0600); finished outputs get the usual 0666 & ~umask.
_UMASK = os.umask(0)
os.umask(_UMASK)


# A full disk or quota shows up as an OSError, or only as text: safetensors' Rust "StorageFull", torch's
# "PytorchStreamWriter failed writing file ... file write failed" / "unexpected pos".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull", "file write failed",
                   "unexpected pos")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk or the quota is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: str | os.PathLike) -> CascadeVError:
    return CascadeVError(f"The disk is full: writing {path} failed (no space left on the device, or the disk "
                         "quota is used up); free some space and run again.")


def write_error(path: str | os.PathLike, exc: BaseException) -> CascadeVError:
    """The one-line error for a failed write of ``path``: a full disk says so."""
    if is_disk_full(exc):
        return disk_full_error(path)
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return CascadeVError(f"Writing {path} failed: {detail}.")


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail early, with one sentence, when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent
    if path.name in ("", ".", ".."):
        raise CascadeVError(f"The {what} path {path} does not name a file.")
    if not parent.is_dir():
        raise CascadeVError(f"Cannot write {path}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CascadeVError(f"Cannot write {path}: the folder {parent} is not writable.")
    if path.is_dir():
        raise CascadeVError(f"Cannot write {path}: it is a folder.")
    return path


def make_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and its parents if missing (every command does, like ``mkdir -p``)."""
    folder = Path(folder)
    blocker = next((f for f in (folder, *folder.parents) if f.exists() and not f.is_dir()), None)
    if blocker is not None:
        raise CascadeVError(f"cannot create output folder {folder}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CascadeVError(f"cannot create output folder {folder}: {exc.strerror or exc}")
    if not os.access(folder, os.W_OK):
        raise CascadeVError(f"output folder {folder} is not writable")
    return folder


def temp_path(path: str | os.PathLike) -> Path:
    """Create (empty) and return a unique temporary file beside ``path`` with the same suffix."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", suffix=path.suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(name)


def remove_quietly(path: str | os.PathLike | None) -> None:
    if path is not None:
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass


@contextmanager
def atomic_output(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """``with atomic_output(p) as tmp:`` write ``tmp``; it becomes ``p`` only if the block succeeds."""
    path = check_output_path(path, what)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        remove_quietly(tmp)
        if not isinstance(exc, CascadeVError) and is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise


class AtomicWriter:
    """Base of the streaming writers: the output appears only when ``close()`` succeeds.

    Used as a context manager it closes on success and aborts (removing its temporary file) when the
    block raises; a writer dropped without being closed aborts too. Subclasses implement ``close`` and
    ``abort`` and set ``_closed``.
    """

    _closed = True

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.abort()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
