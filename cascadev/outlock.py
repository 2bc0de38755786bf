"""One writer per output: an exclusive lock held for the whole run.

The lock is ``fcntl.flock`` on a small file holding the owner's PID: ``OUT/.cascadev.lock`` for a folder
output (recon), ``.NAME.lock`` beside a file output. The kernel drops a flock when its process dies, so a
killed run never leaves a lock that blocks the next one; a leftover lock file is simply reused.
"""

from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .atomic import check_output_path, make_folder, remove_own_partials, sweep_stale_partials
from .errors import CascadeVError

FOLDER_LOCK = ".cascadev.lock"


def lock_path(output: str | os.PathLike, folder: bool = False) -> Path:
    output = Path(output)
    return output / FOLDER_LOCK if folder else output.parent / f".{output.name}.lock"


def _acquire(path: Path, output: Path) -> int:
    """Open and flock ``path``; retry if another run removed the file between our open and our lock."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CascadeVError(f"Cannot lock {output}: {exc.strerror or exc}.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CascadeVError(
                f"{output} is being written by another cascadev run (PID {owner}); "
                "wait for it or choose another output."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file the previous owner had just unlinked


@contextmanager
def output_lock(output: str | os.PathLike, folder: bool = False) -> Iterator[Path]:
    """Hold the lock of ``output`` (a file, or with ``folder`` an existing folder) for the block.

    A second writer gets a one-line error naming the first one's PID. Once the lock is held, partial
    files left in the output's folder by runs that died are removed (and reported in one line). When the
    block raises, this run's own partial files of the output go before the lock is released.
    """
    output = Path(output)
    created = None
    if not folder:
        # Like every command, create a missing output folder; a run that fails removes what it created.
        created = next((f for f in reversed([output.parent, *output.parent.parents]) if not f.exists()), None)
        make_folder(output.parent)
        try:
            check_output_path(output)  # the usual one-line errors before a lock file is made
        except CascadeVError:
            _remove_created(created, output)
            raise
    path = lock_path(output, folder)
    try:
        fd = _acquire(path, output)
    except BaseException:
        _remove_created(created, output)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        note = sweep_stale_partials(output if folder else output.parent)
        if note:
            print(f"cascadev: {note}", file=sys.stderr)
        yield path
    except BaseException:
        # A failed or interrupted run takes its partial files with it now, while it holds the lock and
        # before the folders it made are removed (which only works when they are empty).
        if folder:
            remove_own_partials(output)
        else:
            remove_own_partials(output.parent, output.name)
        raise
    finally:
        try:
            os.unlink(path)  # still locked, so no other run is using this file
        except OSError:
            pass
        os.close(fd)
        _remove_created(created, output)


def _remove_created(created: Path | None, output: Path) -> None:
    """Remove the folders this run created for ``output`` when it did not write it (empty ones only)."""
    if created is None or output.exists():
        return
    folder = output.parent
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent
