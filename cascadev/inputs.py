"""Naming inputs: the paths, folders, list files and globs that a command or a training config gives,
turned into the files they mean.

* :func:`expand_inputs`: a batch command's inputs (``cascadev recon a.mp4 clips/ more.txt 'x*.mp4'``);
* :func:`read_video_list`: the list files of training's ``video_list`` (text, one path per line, or JSON);
* :func:`list_folder`: a folder's files of some kinds, in natural order (``2.mp4`` before ``10.mp4``);
* :func:`by_name`: files keyed by their stem, the name their outputs or pairs go by, each name once.
"""

from __future__ import annotations

import glob
import json
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import CascadeVError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm")
LATENT_SUFFIXES = (".safetensors",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # a training entry may be a folder of frames
LIST_SUFFIXES = (".txt", ".list", ".json")
_GLOB_CHARS = "*?["


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``2.mp4`` before ``10.mp4`` (digit runs compare as numbers, case aside)."""
    parts = re.split(r"(\d+)", name)
    return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)] + [name]


def is_batch(items: Sequence[str]) -> bool:
    """True unless ``items`` is one existing file that is not a list file (today's single-input call)."""
    if len(items) != 1:
        return True
    path = Path(items[0])
    kind = _kind(path)
    return (
        kind == "dir"
        or (kind == "file" and path.suffix.lower() in LIST_SUFFIXES)
        or (kind is None and any(c in items[0] for c in _GLOB_CHARS))
    )


def _kind(path: Path) -> str | None:
    """What ``path`` is: "dir", "file", "other" (a FIFO, a device) or None when nothing is there. A folder
    we may not look into (EACCES, which pathlib's is_dir() raises rather than answers) is one line."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as exc:
        raise CascadeVError(f"The input {path} cannot be looked at ({exc.strerror or exc}).") from None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def expand_inputs(items: Sequence[str], suffixes: Sequence[str] = VIDEO_SUFFIXES) -> list[Path]:
    """Paths, folders (their files with ``suffixes``), list files (one path per line or a JSON list, as
    training lists) and globs -> the input files, each once, in the order given (folders and globs sorted)."""
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        kind = _kind(path)
        if kind == "dir":
            files = list_folder(path, suffixes)
            if not files:
                raise CascadeVError(f"The input folder {path} holds no {' or '.join(suffixes)} files.")
            found.extend(files)
        elif kind == "file" and path.suffix.lower() in LIST_SUFFIXES:
            found.extend(Path(p) for p in read_video_list([str(path)]))
        elif kind == "file":
            found.append(path)
        elif any(c in item for c in _GLOB_CHARS):
            files = sorted(
                (Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()),
                key=lambda p: natural_key(str(p)),
            )
            if not files:
                raise CascadeVError(f"The pattern {item} matches no files.")
            found.extend(files)
        else:
            raise CascadeVError(f"The input {item} does not exist.")
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    return [Path(p) for p in unique]


def list_folder(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """The files of ``folder`` (not its subfolders) whose suffix is one of ``suffixes`` (any case), hidden
    ones aside, in natural name order."""
    try:
        files = [p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith(".")]
    except OSError as exc:
        raise CascadeVError(f"The folder {folder} cannot be listed ({exc.strerror or exc}).") from None
    return sorted((p for p in files if p.is_file()), key=lambda p: natural_key(p.name))


def by_name(paths: Iterable[Path], where: str = "") -> dict[str, Path]:
    """``{stem: path}`` in the order given. Two paths with one stem are an error, as their outputs (or the
    videos they pair with) would be one; ``where`` says where they came from (``"of --ref refs/"``)."""
    found: dict[str, Path] = {}
    for path in paths:
        name = path.stem
        if name in found:
            raise CascadeVError(
                f"Two inputs{' ' + where if where else ''} are named {name} ({found[name]} and {path}); "
                "their names must differ (outputs and pairs are named after them)."
            )
        found[name] = path
    return found


def resolve_entry(entry: str, base: Path) -> str:
    """A list file's entry as a path: ``~`` expanded, a relative one taken from ``base`` (the list's folder)."""
    p = Path(entry).expanduser()
    return str(p if p.is_absolute() else base / p)


def read_json_list(path: Path) -> list[tuple[str, Any]]:
    """The entries of a ``.json`` video list, as (path as written, its ``"caption"`` as stored, or None);
    only the latent store reads captions, and checks them."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CascadeVError(f"The video list {path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, list):
        raise CascadeVError(f"The video list {path} must hold a JSON list of paths or of objects with a 'path' key.")
    entries = []
    for i, item in enumerate(data):
        caption = None
        if isinstance(item, dict):
            caption = item.get("caption")
            item = item.get("path", item.get("video"))
        if not isinstance(item, str) or not item.strip():
            raise CascadeVError(
                f"Entry {i} of the video list {path} is neither a path nor an object with a 'path' (or 'video') string."
            )
        entries.append((item.strip(), caption))
    return entries


def _read_text_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CascadeVError(f"The video list {path} cannot be read as text ({exc}).") from exc
    entries = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line)
    return entries


def read_video_list(paths: str | Sequence[str]) -> list[str]:
    """The videos named by one or more list files, in order.

    A ``.json`` file holds a list of path strings or of objects with a ``"path"`` (or ``"video"``) key;
    any other file is text with one path per line (blank lines and lines starting with ``#`` are
    skipped). Each path is a video file or a folder of JPEG/PNG frames; relative paths are taken
    relative to the folder of the list file that names them, ``~`` is expanded. Entries are not
    opened here (unusable ones are skipped by :class:`VideoClipDataset`).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise CascadeVError("The video_list option names no list file.")
    videos: list[str] = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            why = "is not a file" if path.exists() else "does not exist"  # e.g. a folder, /dev/null
            raise CascadeVError(f"The video list {path} {why} (option video_list).")
        if path.suffix.lower() == ".json":
            entries = [entry for entry, _ in read_json_list(path)]
        else:
            entries = _read_text_list(path)
        base = path.resolve().parent
        videos.extend(resolve_entry(e, base) for e in entries)
    if not videos:
        raise CascadeVError(f"The video lists {', '.join(map(str, paths))} name no videos.")
    return videos
