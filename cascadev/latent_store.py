"""A sharded latent store: a video data set encoded into clip-level semantic latents, for training a base
text-to-video model in CascadeV's 1/32 latent space.

``cascadev encode LIST -o STORE --shards`` writes into the folder STORE

* ``shard-<run>-<process>-<n>.safetensors``: clips until the next one would pass ``--shard-size`` MB
  (a single larger clip gets a shard of its own). Each clip is a tensor ``(16, T, h, w)`` named by its
  position in the shard; the shard's ``__metadata__["records"]`` (JSON) describes every clip: video id,
  clip number and count, start frame, frame count, fps, content and source sizes, latent shape and the
  caption when the list gives one (a JSON list of ``{"path": ..., "caption": ...}``).
* ``index.jsonl``: one line per clip (its shard and record), rebuilt from the shards after every run.
* ``manifest.jsonl``: one line per video (as for every batch command).

Why safetensors shards rather than WebDataset tars: it is already the format of this project's latent
files and of every model weight it loads; it runs no code when loaded; a clip is read by name through
memory mapping without reading the rest of the shard, so a map-style ``Dataset`` with random access
(any sampler, any DataLoader shuffling) needs no tar streaming and no extra dependency. Shards are
written atomically (temporary name, then rename), so a shard that exists is complete; a video is done
when all its clips are in shards, and a restarted run encodes only the others. Clips of a video cut
off by a crash are encoded again in full; the index keeps one copy of each clip.

Read it with :class:`LatentStore` (a torch ``Dataset``)::

    from torch.utils.data import DataLoader
    from cascadev.latent_store import LatentStore

    store = LatentStore("store/")
    for batch in DataLoader(store, batch_size=8, shuffle=True, num_workers=4):
        batch["latent"]  # (8, 16, T, h, w); batch["caption"], batch["video"], batch["start"], batch["fps"], ...
"""

from __future__ import annotations

import fnmatch
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .errors import CascadeVError, first_line
from .inputs import expand_inputs, read_json_list, resolve_entry
from .rules import SHARD_MB

if TYPE_CHECKING:
    from .pipeline import CascadeVPipeline

INDEX = "index.jsonl"
FORMAT = "cascadev_latent_store_v1"
SHARD_GLOB = "shard-*.safetensors"


def clip_starts(start: int, count: int, clip_frames: int | None) -> list[tuple[int, int]]:
    """(first frame, frames) of each clip of ``count`` frames from ``start``: back to back, whole clips
    only (the tail shorter than a clip is left out), or the whole range when it is shorter than one clip."""
    if not clip_frames or count <= clip_frames:
        return [(start, count)]
    return [(s, clip_frames) for s in range(start, start + count - clip_frames + 1, clip_frames)]


def read_captions(items: Sequence[str]) -> dict[str, str]:
    """Captions of the videos named by JSON list files among ``items``: resolved path -> caption."""
    captions: dict[str, str] = {}
    for item in items:
        path = Path(item).expanduser()
        if not (path.is_file() and path.suffix.lower() == ".json"):
            continue
        for i, (entry, caption) in enumerate(read_json_list(path)):
            if caption is None:
                continue
            if not isinstance(caption, str):
                raise CascadeVError(
                    f"Entry {i} of the video list {path} has a caption that is not a string: {caption!r}."
                )
            captions[str(Path(resolve_entry(entry, path.resolve().parent)).resolve())] = caption
    return captions


class ShardWriter:
    """Collects clip latents and writes them as safetensors shards of at most ``max_bytes`` each."""

    def __init__(self, root: Path, prefix: str, max_bytes: int) -> None:
        self.root, self.prefix, self.max_bytes = root, prefix, max_bytes
        self.count = 0
        self._tensors: dict[str, Any] = {}
        self._records: list[dict[str, Any]] = []
        self._bytes = 0

    @property
    def current(self) -> str:
        return f"shard-{self.prefix}-{self.count:05d}.safetensors"

    def add(self, record: dict[str, Any], latent: torch.Tensor) -> str:
        """Queue one clip; returns the name of the shard it will be in."""
        nbytes = latent.numel() * latent.element_size()
        if self._tensors and self._bytes + nbytes > self.max_bytes:
            self.flush()
        key = f"{len(self._tensors):06d}"
        self._tensors[key] = latent.contiguous()
        self._records.append({"key": key, **record})
        self._bytes += nbytes
        return self.current

    def flush(self) -> None:
        from safetensors.torch import save_file

        from .atomic import atomic_output

        if not self._tensors:
            return
        metadata = {"format": FORMAT, "records": json.dumps(self._records)}
        with atomic_output(self.root / self.current, "shard") as tmp:
            try:
                save_file(self._tensors, str(tmp), metadata=metadata)
            except OSError as exc:
                raise CascadeVError(f"Writing the shard {self.root / self.current} failed: {exc.strerror or exc}.")
        self.count += 1
        self._tensors, self._records, self._bytes = {}, [], 0


def scan_shards(root: Path) -> list[dict[str, Any]]:
    """Every clip record of every shard in ``root`` (with its ``shard``), shards in name order."""
    from safetensors import safe_open

    clips = []
    for shard in sorted(root.glob(SHARD_GLOB)):
        try:
            with safe_open(str(shard), framework="pt") as f:
                records = json.loads((f.metadata() or {})["records"])
        except Exception as exc:
            raise CascadeVError(f"The shard {shard} is not a readable latent-store shard.") from exc
        clips.extend({"shard": shard.name, **r} for r in records)
    return clips


def complete_videos(clips: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """video id -> its clips in order, for the videos whose every clip is stored (first copy of each)."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for clip in clips:
        found.setdefault(clip["video"], {}).setdefault(clip["clip"], clip)
    return {
        video: [got[i] for i in sorted(got)]
        for video, got in found.items()
        if len(got) == next(iter(got.values()))["num_clips"]
    }


def write_index(root: Path) -> int:
    """Rebuild ``index.jsonl`` from the shards (complete videos only); returns the number of clips."""
    from .atomic import atomic_output

    videos = complete_videos(scan_shards(root))
    lines = [json.dumps(clip) + "\n" for clips in videos.values() for clip in clips]
    with atomic_output(root / INDEX, "index") as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def encode_store(
    videos: Sequence[str],
    root: str | os.PathLike,
    load_pipeline: Callable[[], CascadeVPipeline],
    *,
    size: int | None = None,
    start: int = 0,
    num_frames: int | None = None,
    clip_frames: int | None = None,
    shard_mb: float | None = None,
    preset: str = "default",
    progress: bool = True,
) -> None:
    """``cascadev encode INPUTS -o STORE --shards``: every input video (paths, folders, lists, globs) ->
    latents of clips of ``clip_frames`` (default: the whole video) in shards of ``shard_mb`` MB under
    ``root``; videos the store holds already are skipped."""
    import functools

    from . import batch
    from .presets import PRESETS
    from .reconstruct import prepare_frames
    from .rules import check_choice
    from .video_io import VideoReader, frames_used, select_frames

    state = batch.distributed_state()
    recipe = PRESETS[check_choice(preset, PRESETS, "preset")]
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise CascadeVError(f"The latent store {root} must be a folder, but it is a file.")
    sources = expand_inputs(videos)
    captions = read_captions(videos)
    jobs = [batch.Job(s, str(s), root, ()) for s in sources]
    load = functools.cache(load_pipeline)
    stored = set(complete_videos(scan_shards(root))) if root.is_dir() else set()
    writer = ShardWriter(root, f"{uuid.uuid4().hex[:8]}-{state.process_index:03d}", int((shard_mb or SHARD_MB) * 2**20))

    def encode(job: batch.Job) -> list[str]:
        reader = VideoReader(job.source)
        first, count = select_frames(reader, start, num_frames)
        clips = clip_starts(first, count, clip_frames)
        pipe = load()
        shards = []
        for i, (s0, n) in enumerate(clips):
            frames, (height, width) = prepare_frames(reader.read(range(s0, s0 + n)), size, recipe)
            latent = pipe.encode(frames)
            record = {
                "video": job.name,
                "clip": i,
                "num_clips": len(clips),
                "start": s0,
                "frames": n,
                "fps": reader.output_fps,
                "height": height,
                "width": width,
                "source_height": reader.height,
                "source_width": reader.width,
                "latent_shape": list(latent.shape),
                "caption": captions.get(str(job.source.resolve())),
            }
            shards.append(str(root / writer.add(record, latent)))
        return sorted(set(shards))

    result = batch.run_batch(
        jobs,
        encode,
        root,
        done=lambda job: job.name in stored,
        finish=writer.flush,
        frames_limit=functools.partial(frames_used, start=start, num_frames=num_frames),
        progress=progress,
        desc="encoding",
    )
    if state.is_main_process:
        write_index(root)
    state.wait_for_everyone()
    batch.report(result, root)


class LatentStore(torch.utils.data.Dataset):
    """The clips of a latent store as a map-style torch ``Dataset``.

    ``store[i]`` is a dict: ``latent`` float32 (16, T, h, w), ``video`` (id), ``clip``, ``start``,
    ``frames``, ``fps``, ``height``, ``width``, ``source_height``, ``source_width`` and ``caption``
    ("" when none). Shards are opened lazily (memory-mapped) in each DataLoader worker.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        index = self.root / INDEX
        if not index.is_file():
            raise CascadeVError(
                f"{self.root} is not a latent store: {index} is missing (run cascadev encode --shards)."
            )
        self.clips = [self._record(index, n, line) for n, line in enumerate(self._lines(index), 1) if line.strip()]
        self._open: dict[str, Any] = {}

    @staticmethod
    def _lines(index: Path) -> list[str]:
        try:
            return index.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CascadeVError(f"The latent store index {index} cannot be read as text ({first_line(exc)}).") from None

    @staticmethod
    def _record(index: Path, n: int, line: str) -> dict[str, Any]:
        """Line ``n`` of the index: a clip record naming a shard file of this store (a bare name)."""
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        ok = isinstance(record, dict) and all(k in record for k in ("shard", "key"))
        if not ok or not fnmatch.fnmatch(str(record["shard"]), SHARD_GLOB) or "/" in str(record["shard"]):
            raise CascadeVError(f"Line {n} of the latent store index {index} is not a clip record of this store.")
        return record

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from safetensors import safe_open

        clip = self.clips[i]
        path = self.root / clip["shard"]
        try:
            shard = self._open.get(clip["shard"])
            if shard is None:
                shard = self._open[clip["shard"]] = safe_open(str(path), framework="pt")
            latent = shard.get_tensor(clip["key"]).float()
        except Exception as exc:  # safetensors' SafetensorError, OSError for a missing or damaged shard
            raise CascadeVError(
                f"Clip {i} of the latent store {self.root} cannot be read from {path} ({first_line(exc)})."
            ) from None
        item = {k: v for k, v in clip.items() if k not in ("shard", "key", "latent_shape", "num_clips")}
        item["caption"] = item.get("caption") or ""
        item["latent"] = latent
        return item

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}
