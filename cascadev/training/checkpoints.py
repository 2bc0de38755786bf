"""Training checkpoints in the work dir: ``checkpoint-00001000/`` folders, complete or absent.

A checkpoint is written into ``.checkpoint-00001000.partial/`` and renamed when every file is in it, so a
run killed while saving leaves no folder that looks complete. Each holds accelerate's state (the DiT
as ``model.safetensors`` — loadable by ``cascadev decode --ckpt`` —, optimizer, scheduler, RNG states),
``ema.safetensors`` when EMA is on, and ``trainer_state.json`` (step, epoch, counters).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"


def checkpoint_dir(work_dir: Path, step: int) -> Path:
    return work_dir / f"checkpoint-{step:08d}"


def partial_dir(work_dir: Path, step: int) -> Path:
    return work_dir / f".checkpoint-{step:08d}.partial"


def list_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not work_dir.is_dir():
        return []
    found = []
    for path in work_dir.iterdir():
        match = PATTERN.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(work_dir: Path) -> Path | None:
    found = list_checkpoints(work_dir)
    return found[-1][1] if found else None


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def finish(work_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write the trainer state into the partial folder, rename it into place, prune old ones (main process)."""
    tmp, final = partial_dir(work_dir, step), checkpoint_dir(work_dir, step)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    if final.exists():  # the same step saved twice (end of a run that just saved): replace it
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for _, old in list_checkpoints(work_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in work_dir.glob(".checkpoint-*.partial"):  # left by runs killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    return final
