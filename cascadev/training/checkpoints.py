"""Training checkpoints in the work dir: ``checkpoint-00001000/`` folders, complete or absent.

A checkpoint is written into ``.checkpoint-00001000.partial/`` and renamed when every file is in it, so a
run killed while saving leaves no folder that looks complete. Each holds the DiT as a ``save_pretrained``
folder ``dit/`` (config.json + safetensors: ``CascadeDiT.from_pretrained``, ``cascadev decode --ckpt``),
accelerate's state (optimizer, scheduler, RNG states; checkpoints of the previous layout hold the DiT as
a top-level ``model.safetensors`` instead, and still resume), the EMA weights when EMA is on (``dit_ema/``,
a second ``save_pretrained`` folder, what inference loads; ``ema.safetensors`` for a network that is no
diffusers model), ``trainer_state.json`` (step, epoch, counters) and, written last, ``manifest.json``:
every other file's relative path, size and sha256. A checkpoint counts as complete only through a
manifest its files match; a damaged one is moved aside (never deleted) and the previous
one is used. Old checkpoints are pruned by renaming them to ``.checkpoint-N.deleting`` first, a name the
checkpoint pattern never matches, so an interrupted prune cannot leave a half-deleted "checkpoint".
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import time
import warnings
from pathlib import Path

from ..atomic import disk_full_error, is_disk_full, publish_mode, write_error
from ..errors import CascadeVError
from ..rules import is_whole

PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"  # accelerate's: networks that are no diffusers model, and the previous layout's DiT
MODEL_DIR = "dit"  # the DiT's save_pretrained folder
MODEL_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' weights file in it
EMA_FILE = "ema.safetensors"  # the EMA weights of a network that is no diffusers model (its own is MODEL_DIR + "_ema")
MANIFEST_FILE = "manifest.json"
# accelerate writes these with torch.save (pickles): optimizer.bin, scheduler.bin, random_states_0.pkl, ...
ACCELERATE_PICKLES = (".bin", ".pkl", ".pt", ".pth")
_HASH_CHUNK = 8 << 20


def checkpoint_dir(work_dir: Path, step: int) -> Path:
    return work_dir / f"checkpoint-{step:08d}"


def partial_dir(work_dir: Path, step: int) -> Path:
    return work_dir / f".checkpoint-{step:08d}.partial"


def _numbered(work_dir: Path) -> list[tuple[int, Path]]:
    """Folders named like a checkpoint, complete or not, oldest first."""
    if not work_dir.is_dir():
        return []
    found = []
    for path in work_dir.iterdir():
        match = PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints (those with a manifest), oldest first; :func:`verify` checks their files."""
    return [(step, path) for step, path in _numbered(work_dir) if (path / MANIFEST_FILE).is_file()]


# The loop's counters in trainer_state.json: whole numbers (older checkpoints may lack all but the step).
STATE_COUNTERS = ("step", "micro_step", "epoch", "batch_in_epoch", "skipped")


def read_state(path: Path) -> dict:
    """The checkpoint's ``trainer_state.json``; ValueError when it is not a JSON object of counters."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        state = None
    if not (
        isinstance(state, dict) and "step" in state and all(is_whole(state[k]) for k in STATE_COUNTERS if k in state)
    ):
        raise ValueError(f"{STATE_FILE} is damaged (not a JSON object of the loop's counters)")
    return state


def held_model(path: Path) -> str | None:
    """Which network a checkpoint holds: its state's ``model`` (the trainer's ``model_folder``: dit, vae or
    compressor), else for older checkpoints the ``save_pretrained`` folder in it, else None (unknown)."""
    model = read_state(path).get("model")
    if model is None:
        model = next((name for name in (MODEL_DIR, "vae") if (path / name).is_dir()), None)
    return model


# ------------------------------------------------------------------ manifest


def sha256_of(path: Path) -> str:
    """Streamed: a multi-GB optimizer state is hashed without holding it in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """Record every file of ``folder`` (size and sha256); the manifest is the folder's last file."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        rel = path.relative_to(folder).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    out = folder / MANIFEST_FILE
    with open(out, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return out


def _read_manifest(folder: Path) -> dict[str, dict]:
    """The manifest's file table; raises ValueError naming what is wrong with it."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = manifest["files"]
        for rel, entry in files.items():
            # Paths stay inside the folder; sizes and hashes have the right types.
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(rel)
            int(entry["size"]), str(entry["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{MANIFEST_FILE} is damaged") from None
    if STATE_FILE not in files:
        raise ValueError(f"{MANIFEST_FILE} does not list {STATE_FILE}")
    return files


def _plain_tensor_file(path: Path) -> str | None:
    """Why a torch pickle cannot be loaded weights-only (the way accelerate will load it), or None."""
    from accelerate.utils import load

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols
            try:  # mmap: only the pickle itself is read, not the tensors' bytes
                load(str(path), map_location="cpu", mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                load(str(path), map_location="cpu")
    except pickle.UnpicklingError:  # the weights-only unpickler refused it: code or an unknown object
        return "is not a plain tensor checkpoint and was not loaded"
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError/... for damaged files
        return f"is corrupt ({type(exc).__name__})"
    return None


def verify(folder: Path) -> str | None:
    """None if ``folder`` is a complete, intact checkpoint; else one phrase naming the damaged file."""
    name = folder.name
    if not (folder / MANIFEST_FILE).is_file():
        return f"{name}/{MANIFEST_FILE} is missing (the checkpoint was never finished)"
    try:
        files = _read_manifest(folder)
    except ValueError as exc:
        return f"{name}/{exc}"
    for rel, entry in files.items():  # sizes first: cheap, and they name truncation plainly
        path = folder / rel
        if not path.is_file():
            return f"{name}/{rel} is missing"
        size = path.stat().st_size
        if size != int(entry["size"]):
            return f"{name}/{rel} is damaged ({size} bytes, the manifest says {entry['size']})"
    for rel, entry in files.items():
        if sha256_of(folder / rel) != entry["sha256"]:
            return f"{name}/{rel} is damaged (its sha256 differs from the manifest's)"
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in ACCELERATE_PICKLES:
            problem = _plain_tensor_file(path)
            if problem:
                return f"{name}/{path.relative_to(folder).as_posix()} {problem}"
    try:  # a manifest written over a bad state (or a state edited with it) still cannot be resumed from
        read_state(folder)
    except ValueError as exc:
        return f"{name}/{exc}"
    return None


def move_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint out of the pattern (kept for inspection, never deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = folder.with_name(f"{folder.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.damaged-{stamp}-{n}")
    folder.rename(target)
    return target


def resume_point(work_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint, and one message per damaged newer one (each moved aside)."""
    messages = []
    for _, folder in reversed(_numbered(work_dir)):
        problem = verify(folder)
        if problem is None:
            return folder, messages
        aside = move_aside(folder)
        messages.append(f"{problem}; moved it aside to {aside.name}")
    if messages:
        messages.append("no complete checkpoint is left; starting fresh")
    return None, messages


# ------------------------------------------------------------------ writing, pruning, leftovers


def remove_leftovers(work_dir: Path) -> None:
    """Folders of runs killed while saving (``.partial``) or pruning (``.deleting``): never checkpoints."""
    for pattern in (".checkpoint-*.partial", ".checkpoint-*.deleting"):
        for stale in work_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _delete(folder: Path) -> None:
    """Rename first, then delete: an interrupted delete leaves a name no resume ever considers."""
    doomed = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    folder.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def finish(work_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write the trainer state and manifest into the partial folder, rename it into place, prune (main process)."""
    tmp, final = partial_dir(work_dir, step), checkpoint_dir(work_dir, step)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    publish_mode(tmp)  # accelerate's files come out 0600; checkpoints are shared like outputs
    write_manifest(tmp)
    if final.exists():  # the same step saved twice (end of a run that just saved): replace it
        _delete(final)
    tmp.rename(final)
    if keep > 0:
        for _, old in list_checkpoints(work_dir)[:-keep]:
            _delete(old)
    remove_leftovers(work_dir)
    return final


def save_failed(exc: BaseException, work_dir: Path, step: int) -> CascadeVError | None:
    """Remove the partial folder of a failed save; the one-line error for a write failure (else None)."""
    shutil.rmtree(partial_dir(work_dir, step), ignore_errors=True)
    where = checkpoint_dir(work_dir.resolve(), step)
    if is_disk_full(exc):
        return disk_full_error(where)
    if isinstance(exc, OSError):
        return write_error(where, exc)
    return None
