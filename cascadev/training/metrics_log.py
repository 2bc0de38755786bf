"""``metrics.jsonl``: one JSON record per logged step, with no step twice across interrupts and resumes."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_output
from ..errors import CascadeVError


def read(work_dir: Path) -> list[dict]:
    """The records of a training work dir's ``metrics.jsonl``, in order."""
    path = Path(work_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CascadeVError(f"{work_dir} has no metrics.jsonl: not a training work dir")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keep_until(path: Path, step: int) -> int:
    """Drop the records after ``step`` (steps the resumed run will log again) and unreadable lines (a run
    killed mid-write); the file is rewritten atomically. Returns how many lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            record_step = None
        if record_step is not None and record_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        with atomic_output(path, "metrics log") as tmp:
            tmp.write_text("".join(kept))
    return dropped
