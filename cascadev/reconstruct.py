"""The file-level tasks behind ``cascadev encode``, ``decode`` and ``recon``.

Each task opens and checks its inputs and outputs first, then asks ``load_pipeline`` for the models
(so a bad path fails in a second, not after loading 456M parameters), then streams: frames are read,
encoded, sampled, decoded and written a chunk at a time. Reading runs a chunk ahead and writing a chunk
behind, on background threads (:mod:`cascadev.overlap`), while the models work.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from . import frame_times
from .atomic import make_folder, remove_quietly
from .errors import CascadeVError
from .frames import frames_to_uint8, from_uint8, pad_to_multiple, resize_short_side
from .latent_io import LATENT_CHANNELS, LATENT_STRIDE, LatentMeta, LatentReader, LatentWriter
from .outlock import output_lock
from .overlap import WriteBehind, read_ahead
from .overwrite import check_not_inputs
from .pictures import contact_sheet, save_image, side_by_side
from .pipeline import CascadeVPipeline
from .presets import PRESETS, Preset
from .rules import SCHEDULERS, VIDEO_CODEC, VIDEO_CRF, check_choice, check_seed, check_whole
from .video_io import VideoReader, VideoWriter, check_encoder_options, select_frames

PipelineLoader = Callable[[], CascadeVPipeline]
READ_CHUNK = 16  # frames read and encoded at a time
RECON_FILES = ("latent.safetensors", "original.mp4", "preview.mp4", "recon.mp4", "compare.mp4", "compare.png")
COMPARE_TITLES = ("original", "preview (no LDM)", "reconstruction")


def recon_outputs(out_dir: str | os.PathLike) -> dict[str, Path]:
    """The files ``reconstruct_video`` writes into ``out_dir``, by name."""
    return {name: Path(out_dir) / name for name in RECON_FILES}


@dataclass
class SamplingArgs:
    """How the DiT samples in a file-level task: ``scheduler`` (euler_a, ddim or dpm_solver), ``steps``,
    the noise ``seed`` (the same seed gives the same video), a ``progress`` bar, and the ``preset``
    ("default", or "release": the release's exact behaviour, :mod:`cascadev.presets`)."""

    scheduler: str = "euler_a"
    steps: int = 8
    seed: int = 0
    progress: bool = True
    preset: Preset = PRESETS["default"]

    def decode_options(self) -> dict:
        """Keyword arguments of ``CascadeVPipeline.decode``."""
        return dict(
            scheduler=self.preset.scheduler(self.scheduler), steps=self.steps, seed=self.seed, progress=self.progress
        )

    def __post_init__(self) -> None:
        # The library's check of each sampling option (the CLI's types and the config schema use the same rules).
        check_choice(self.scheduler, SCHEDULERS, "scheduler")
        check_whole(self.steps, "The number of sampling steps")
        check_seed(self.seed)
        if isinstance(self.preset, str):  # a preset's name, as --preset takes it
            self.preset = PRESETS[check_choice(self.preset, PRESETS, "preset")]
        if not isinstance(self.preset, Preset):
            raise CascadeVError(f"preset must be a Preset or one of {', '.join(PRESETS)}, got {self.preset!r}")


def prepare_frames(
    frames: np.ndarray, size: int | None = None, preset: Preset = PRESETS["default"]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 (n, H, W, 3) -> model frames (n, 3, H', W') in [-1, 1], padded to multiples of 32, and (h, w):
    what ``CascadeVPipeline.encode`` takes.

    (h, w) is the content size after resizing (short side ``size``), before padding. The release
    preset crops the centre square and blurs and resizes in uint8 with OpenCV first.
    """
    frames, size = preset.preprocess(frames, size)
    x = resize_short_side(from_uint8(frames), size)  # (n, H, W, 3) uint8 -> (n, 3, h, w) in [-1, 1]
    return pad_to_multiple(x, LATENT_STRIDE)


def decode_frames(
    pipe: CascadeVPipeline, read: Callable[[int, int], torch.Tensor], total: int, sampling: SamplingArgs, **options
) -> Iterator[torch.Tensor]:
    """``pipe.decode`` under one progress bar over output frames ("decoding", frames/s).

    Counting frames, not sampling steps, keeps the rate steady: the time a frame takes includes its
    share of condition encoding, sampling, SVD decoding and writing, whichever of them a chunk needs.
    The preset may set the SVD decoder's chunk for this length (the release's 4 or 5 frames).
    """
    options = dict(
        sampling.decode_options(), progress=False, vae_chunk=sampling.preset.vae_chunk(total, None), **options
    )
    with tqdm(total=total, desc="decoding", unit="frame", disable=not sampling.progress, leave=False) as bar:
        for frames in pipe.decode(read, total, **options):
            yield frames
            bar.update(frames.shape[0])
        bar.refresh()  # show 100% even when the last update came within tqdm's refresh interval


def write_frames(writer: VideoWriter, frames: torch.Tensor, height: int, width: int, truncate: bool = False) -> None:
    """Model frames (n, 3, H', W') in [-1, 1], padded -> uint8 (n, height, width, 3) into ``writer``.

    The conversion is part of the write, so that it too runs on the writer's thread (``WriteBehind``).
    """
    writer.write(frames_to_uint8(frames, height, width, truncate))


def _iter_model_frames(
    reader: VideoReader, start: int, count: int, size: int | None, preset: Preset = PRESETS["default"]
) -> Iterator[tuple[torch.Tensor, tuple[int, int]]]:
    for chunk in reader.iter_chunks(start, count, READ_CHUNK):
        yield prepare_frames(chunk, size, preset)


def encode_video(
    load_pipeline: PipelineLoader,
    video: str | os.PathLike,
    output: str | os.PathLike,
    *,
    size: int | None = None,
    start: int = 0,
    num_frames: int | None = None,
    progress: bool = True,
    preset: Preset = PRESETS["default"],
) -> LatentMeta:
    """Video file -> semantic latent file (16, T, H/32, W/32) with fps and sizes in its metadata."""
    check_not_inputs({"input video": video}, {"output": output})
    reader = VideoReader(video)
    start, count = select_frames(reader, start, num_frames)
    first, (height, width) = prepare_frames(reader.read([start]), size, preset)
    times = frame_times.select(reader.frame_times, start, count)  # variable frame rate: kept in the latent
    try:
        meta = LatentMeta(
            fps=reader.output_fps if times is None else frame_times.average_fps(times),
            height=height,
            width=width,
            source_height=reader.height,
            source_width=reader.width,
            start=start,
            frame_times=None if times is None else tuple(times),
        )
    except CascadeVError as exc:  # e.g. a frame rate no latent may hold: the input's
        raise CascadeVError(f"{video}: {exc}") from None
    shape = (LATENT_CHANNELS, count, first.shape[-2] // LATENT_STRIDE, first.shape[-1] // LATENT_STRIDE)
    make_folder(Path(output).parent)
    with LatentWriter(output, shape, meta) as writer:
        pipe = load_pipeline()
        done = 0
        with tqdm(total=count, desc="encoding", unit="frame", disable=not progress, leave=False) as bar:
            # Chunk k+1 is decoded and resized on the reader's thread while the compressor encodes chunk k.
            for frames, _ in read_ahead(_iter_model_frames(reader, start, count, size, preset)):
                writer.write(done, pipe.encode(frames))
                done += frames.shape[0]
                bar.update(frames.shape[0])
            bar.refresh()  # show 100% even when the last update came within tqdm's refresh interval
    return meta


def decode_latent(
    load_pipeline: PipelineLoader,
    latent: str | os.PathLike,
    output: str | os.PathLike,
    sampling: SamplingArgs,
    sampled: Callable[[int], torch.Tensor] | None = None,
    **writer_options,
) -> None:
    """Semantic latent file -> video: DiT refinement and SVD decoding, streamed to ``output``.

    ``sampled(k)``, when given, returns segment k as other processes sampled it (:mod:`cascadev.segments`).
    """
    check_not_inputs({"input latent": latent}, {"output": output})
    with LatentReader(latent) as reader:
        _decode_latent(load_pipeline, reader, output, sampling, sampled, writer_options)


def _decode_latent(
    load_pipeline: PipelineLoader,
    reader: LatentReader,
    output: str | os.PathLike,
    sampling: SamplingArgs,
    sampled: Callable[[int], torch.Tensor] | None,
    writer_options: dict,
) -> None:
    meta = reader.meta
    make_folder(Path(output).parent)
    with (
        VideoWriter(
            output, meta.fps, meta.height, meta.width, frame_times=meta.frame_times, **writer_options
        ) as writer,
        WriteBehind() as behind,
    ):
        pipe = load_pipeline()
        for frames in decode_frames(pipe, reader.read, reader.num_frames, sampling, sampled=sampled):
            behind.submit(write_frames, writer, frames, meta.height, meta.width, sampling.preset.truncate)


def reconstruct_video(
    load_pipeline: PipelineLoader,
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    sampling: SamplingArgs,
    *,
    size: int | None = None,
    start: int = 0,
    num_frames: int | None = None,
    compare_frames: int = 4,
    share_segments: Callable[[Path], Callable[[int], torch.Tensor]] | None = None,
    **writer_options,
) -> dict[str, Path]:
    """Video -> OUTDIR/{latent.safetensors, original.mp4, preview.mp4, recon.mp4, compare.mp4, compare.png}.

    ``original.mp4`` holds the frames the model saw (resized to ``size``, so ``cascadev eval`` needs no
    ``--resize``), ``preview.mp4`` the previewer's decoding of the latent ("without LDM"),
    ``recon.mp4`` the LDM-VAE's, with the input's audio from ``start`` on; the comparison shows
    original | preview | reconstruction side by side, and the PNG ``compare_frames`` evenly spaced
    frames of it, titled and numbered. ``writer_options`` (codec, crf, pix_fmt) go to the videos' writers.
    ``share_segments(latent_path)``, when given, has the latent's segments sampled elsewhere (by other
    processes) and returns ``pipe.decode``'s ``sampled``.
    """
    out_dir = Path(out_dir)
    paths = recon_outputs(out_dir)
    check_not_inputs({"input video": video}, {"output folder": out_dir, "output": paths.values()})
    source = VideoReader(video)
    select_frames(source, start, num_frames)  # a bad input fails before the folder is made
    # So do bad output options.
    check_encoder_options(
        writer_options.get("codec", VIDEO_CODEC), writer_options.get("crf", VIDEO_CRF), writer_options.get("pix_fmt")
    )
    made_dir = not out_dir.exists()
    make_folder(out_dir)
    try:
        with output_lock(out_dir, folder=True):  # two runs into one folder would mix their outputs
            # An earlier run's outputs wait under hidden names: a run that fails or is stopped puts them
            # back whole, instead of leaving its new latent beside the old videos. Hidden ones left by a run
            # that was killed (this run holds the folder's lock: no live run owns them) come back first.
            for path in paths.values():
                if (aside := path.with_name(f".{path.name}.previous")).exists():
                    os.replace(aside, path)
            previous = {path: path.with_name(f".{path.name}.previous") for path in paths.values() if path.exists()}
            for path, aside in previous.items():
                os.replace(path, aside)
            try:
                _reconstruct(
                    load_pipeline,
                    source,
                    paths,
                    sampling,
                    size=size,
                    start=start,
                    num_frames=num_frames,
                    compare_frames=compare_frames,
                    writer_options=writer_options,
                    share_segments=share_segments,
                )
            except BaseException:
                # Nothing half-done: the files this run made go (a failed recon leaves no latent without videos).
                for path in paths.values():
                    remove_quietly(path)
                for path, aside in previous.items():
                    os.replace(aside, path)
                raise
            for aside in previous.values():
                remove_quietly(aside)
    except BaseException:
        if made_dir:  # after the lock file is gone
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    return paths


def _reconstruct(
    load_pipeline: PipelineLoader,
    source: VideoReader,
    paths: dict[str, Path],
    sampling: SamplingArgs,
    *,
    size: int | None,
    start: int,
    num_frames: int | None,
    compare_frames: int,
    writer_options: dict,
    share_segments: Callable[[Path], Callable[[int], torch.Tensor]] | None,
) -> None:
    """``reconstruct_video``'s work, in its locked folder: encode, then decode into the four videos and
    the comparison picture at once (the preview and the source frames chunk by chunk beside the decode)."""
    load_once = functools.cache(load_pipeline)  # encode and decode share one pipeline

    preset = sampling.preset
    meta = encode_video(
        load_once,
        source.path,
        paths["latent.safetensors"],
        size=size,
        start=start,
        num_frames=num_frames,
        progress=sampling.progress,
        preset=preset,
    )
    pipe = load_once()
    sampled = share_segments(paths["latent.safetensors"]) if share_segments is not None else None
    with LatentReader(paths["latent.safetensors"]) as latent:
        count = latent.num_frames
        picks = sorted(set(np.linspace(0, count - 1, min(compare_frames, count)).round().astype(int).tolist()))
        picked: list[np.ndarray] = []
        h, w = meta.height, meta.width
        audio = {"audio_from": source.path, "audio_start": source.start_time(meta.start)}
        outs = ("original.mp4", "preview.mp4", "recon.mp4", "compare.mp4")
        writers = {
            n: VideoWriter(
                paths[n],
                meta.fps,
                h,
                w * (3 if n == "compare.mp4" else 1),
                frame_times=meta.frame_times,
                **writer_options,
                **(audio if n in ("original.mp4", "recon.mp4") else {}),
            )
            for n in outs
        }

        def write_chunk(done: int, frames: torch.Tensor, preview: torch.Tensor) -> None:
            """On the writer's thread: the chunk's source frames read and prepared, four videos written."""
            n = frames.shape[0]
            recon = frames_to_uint8(frames, h, w, preset.truncate)
            preview = frames_to_uint8(preview, h, w, preset.truncate)
            source_frames = source.read(range(meta.start + done, meta.start + done + n))
            original = frames_to_uint8(prepare_frames(source_frames, size, preset)[0], h, w)
            row = side_by_side(original, preview, recon)
            for name, video in zip(outs, (original, preview, recon, row)):
                writers[name].write(video)
            picked.extend(row[i - done] for i in picks if done <= i < done + n)

        with contextlib.ExitStack() as stack:
            for writer in writers.values():
                stack.enter_context(writer)
            behind = stack.enter_context(WriteBehind())  # entered last: its writes finish before any writer closes
            done = 0
            for frames in decode_frames(pipe, latent.read, count, sampling, sampled=sampled):
                n = frames.shape[0]
                preview = pipe.preview(latent.read(done, done + n), frames.shape[-2:])  # (n, 3, 32h, 32w)
                behind.submit(write_chunk, done, frames, preview)
                done += n
        save_image(paths["compare.png"], contact_sheet(picked, COMPARE_TITLES, [meta.start + i for i in picks]))
