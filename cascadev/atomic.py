"""Writing outputs atomically: a temporary file beside the destination, renamed when complete.

A failed or interrupted run never leaves a half-written file under the name the user asked for.
Temporary files are named ``.NAME.partial-PID.HOST-XXXXXXXX.SUFFIX`` and registered while they exist, so
a signal handler can remove this process's (:func:`remove_partials`) and a later run can tell the ones
left by a run that died (:func:`sweep_stale_partials`).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import CascadeVError

# Files made by mkstemp are private (0600); finished outputs get the usual 0666 & ~umask.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Partial files this process has made and not yet renamed or removed (see remove_partials).
_LIVE: set[Path] = set()
# A short tag of this machine's name, so that a PID in a shared (network) folder is only judged here.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_PARTIAL = re.compile(r"^\..+\.partial-(?:(?P<pid>\d+)\.(?P<host>[0-9a-f]{8})-)?[^/]*$")
_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


# A full disk or quota shows up as an OSError, or only as text: safetensors' Rust "StorageFull", torch's
# "PytorchStreamWriter failed writing file ... file write failed" / "unexpected pos".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXT = (
    "No space left on device",
    "Disk quota exceeded",
    "StorageFull",
    "file write failed",
    "unexpected pos",
)


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
    return CascadeVError(
        f"The disk is full: writing {path} failed (no space left on the device, or the disk "
        "quota is used up); free some space and run again."
    )


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
    try:
        mode = path.stat().st_mode  # follows symlinks: a link to /dev/null is refused like /dev/null
    except OSError:
        return path  # a new path (or a dangling link, which the rename replaces)
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
        raise CascadeVError(f"Cannot write {path}: it is {kind}; outputs go only to regular files or new paths.")
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
    prefix = f".{path.name}.partial-{os.getpid()}.{HOST_TAG}-"
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    except OSError as exc:  # a folder that takes no files: /proc, a read-only mount, a full disk
        raise write_error(path, exc) from exc
    _LIVE.add(Path(name))
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    return Path(name)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temporary file into place, with a finished output's mode (:func:`publish_mode`)."""
    publish_mode(tmp)
    os.replace(tmp, path)
    _LIVE.discard(Path(tmp))


def publish_mode(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and all it holds) the mode of a finished output: 0666 & ~umask for
    files, 0777 & ~umask for folders. Temporary files and folders are private (mkstemp, mkdtemp), and so is
    what some writers make anew in their place (safetensors' ``save_file``, accelerate's ``save_state``)."""
    path = Path(path)
    for item in (path, *path.rglob("*")) if path.is_dir() else (path,):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~_UMASK)


def remove_quietly(path: str | os.PathLike | None) -> None:
    if path is not None:
        _LIVE.discard(Path(path))
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass


def remove_partials() -> int:
    """Remove every partial file this process still has (on SIGTERM/SIGINT); returns how many."""
    live = list(_LIVE)
    for tmp in live:
        remove_quietly(tmp)
    return len(live)


def remove_own_partials(folder: str | os.PathLike, name: str | None = None) -> None:
    """Remove this process's partial files in ``folder`` (only those of output ``name`` when given).

    Found by name, not only from the registry: a signal can land between a temporary file's creation
    and its registration, or inside a writer's constructor, before any ``with`` could abort it.
    """
    stem = "*" if name is None else glob.escape(name)
    for tmp in Path(folder).glob(f".{stem}.partial-{os.getpid()}.{HOST_TAG}-*"):
        remove_quietly(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def sweep_stale_partials(folder: str | os.PathLike) -> str | None:
    """Remove partial files in ``folder`` left by dead cascadev runs on this machine; say what was done.

    A partial file is removed only when its name carries this machine's tag and the PID of a process
    that no longer exists. Others that are not a live run's (older names without a PID, other machines)
    are reported and left. Returns one sentence, or None when there was nothing to say.
    """
    folder = Path(folder)
    removed, unknown = [], []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = match.group("pid")
        if pid is None or match.group("host") != HOST_TAG:
            unknown.append(entry.name)
        elif int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                unknown.append(entry.name)
    parts = []
    if removed:
        parts.append(
            f"removed {len(removed)} partial file(s) left in {folder} by runs that died ({', '.join(removed[:3])})"
        )
    if unknown:
        parts.append(
            f"{len(unknown)} partial file(s) in {folder} may belong to another run and were left "
            f"({', '.join(unknown[:3])})"
        )
    return "; ".join(parts) + "." if parts else None


@contextmanager
def atomic_output(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """``with atomic_output(p) as tmp:`` write ``tmp``; it becomes ``p`` only if the block succeeds."""
    path = check_output_path(path, what)
    tmp = temp_path(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException as exc:
        remove_quietly(tmp)
        if isinstance(exc, OSError):  # a full disk, or a place that takes no files (/proc, a read-only mount)
            raise write_error(path, exc) from exc
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
