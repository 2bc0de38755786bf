"""No command may overwrite its own input: one check of every output path against every input path."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from .errors import CascadeVError

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two spellings name one file: symlinks and ``./`` resolved, hard links via the inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # only answers when both exist: hard links, bind mounts
    except OSError:
        return False


def file_id(path: PathLike) -> tuple[int, int] | None:
    """(device, inode) of an existing file: one identity for all its names (what ``same_file`` compares for
    two paths, as a key for many); None when it does not exist."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_not_inputs(
    inputs: Mapping[str, PathLike | Iterable[PathLike] | None],
    outputs: Mapping[str, PathLike | Iterable[PathLike] | None],
) -> None:
    """Refuse, before any work, an output that is one of the inputs.

    ``inputs`` and ``outputs`` map a description (e.g. "input video", "--output") to a path, to several
    paths, or to None (absent). The error names both sides.
    """

    def flat(items: Mapping[str, PathLike | Iterable[PathLike] | None]) -> list[tuple[str, str]]:
        out = []
        for what, value in items.items():
            if value is None:
                continue
            paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            out.extend((what, os.fspath(p)) for p in paths)  # as the user spelled them, for the message
        return out

    for out_what, out_path in flat(outputs):
        for in_what, in_path in flat(inputs):
            if same_file(out_path, in_path):
                same = "is" if out_path == in_path else "is the same file as"
                raise CascadeVError(
                    f"The {out_what} {out_path} {same} the {in_what} {in_path}; writing it would destroy the "
                    "input, so choose another output path."
                )
