"""The file-level tasks behind ``cascadev upscale`` and ``cascadev interpolate``: another model's video
made 4x larger or 4x smoother by CascadeV's LDM-VAE, with no fine-tuning (paper, Figure 1).

Upscale: every input frame is resized to the target size (bicubic, antialiased when it shrinks,
clamped to [-1, 1]) and its condition latent is taken at that size: the semantic compressor's
(16, T, H/32, W/32), or, for a model trained with the resize condition (paper Fig. 4b), the SVD-VAE
latent (4, T, H/32, W/32) of the frames at H/4 x W/4, which for ``scale=4`` is the input itself. The
DiT then adds the detail and the SVD decoder makes pixels, exactly as in ``cascadev decode``, on the
trained path (``mode="tiles"``, the default). The DiT's 2x mode (``"2x"``, or ``"auto"``: 2x for DiT
latents of at least twice the trained size per side) is experimental: the released strides hold
[4, 1] cells that a 2x window of lats_per_vid / 4 frames cannot form, so the release never ran or
trained it with these weights.

Interpolate: N input frames give (N - 1) * factor + 1 output frames at factor times the frame rate.
The condition latents of the input frames are computed and those of the frames in between are linear
interpolations of their two neighbours (output frame j lies at input time j / factor); the DiT, whose
3D attention sees a whole window, makes the in-between frames consistent with their neighbours.

Both stream: input frames are read and encoded ``READ_CHUNK`` at a time as sampling reaches them and
are dropped once no segment needs them, segments are sampled and decoded as in ``decode``, and frames
are written as they come, so memory is bounded by the segment, window, tile and chunk sizes, not by
the video's length. The input's audio track is copied to the output (from ``start`` on).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import frame_times
from .atomic import make_folder
from .conditioning import resize_for_encoding
from .errors import CascadeVError
from .frames import from_uint8, pad_to, padded_size, short_side_size
from .latent_io import LATENT_STRIDE
from .overlap import WriteBehind, read_ahead
from .overwrite import check_not_inputs
from .pipeline import MODES, CascadeVPipeline
from .reconstruct import (
    READ_CHUNK,
    PipelineLoader,
    SamplingArgs,
    decode_frames,
    write_frames,
)
from .rules import MAX_FPS, VIDEO_CODEC, VIDEO_CRF, check_choice, check_whole, size_limit_problem
from .video_io import VideoReader, VideoWriter, select_frames

# Condition latent frames [t0, t1) -> (C, t1 - t0, h, w).
LatentRange = Callable[[int, int], torch.Tensor]


def target_size(height: int, width: int, *, scale: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Output (H, W) for an input of (height, width): ``scale`` times it, or short side ``size``.

    With ``size`` the aspect ratio is kept and the long side rounded to the nearest pixel (as
    :func:`cascadev.frames.resize_short_side`); with neither, the input's own size.
    """
    if size is not None:
        out = short_side_size(height, width, check_whole(size, "--size"))
    else:
        scale = check_whole(scale if scale is not None else 1, "--scale")
        out = height * scale, width * scale
    problem = size_limit_problem(min(out))
    if problem:
        raise CascadeVError(f"The output would be {out[1]}x{out[0]} pixels: {problem}.")  # WxH
    return out


def condition_encoder(pipe: CascadeVPipeline, size: tuple[int, int]) -> Callable[[np.ndarray], torch.Tensor]:
    """uint8 frames (n, h, w, 3) -> condition latent (C, n, Hp/32, Wp/32) for an output of ``size`` (H, W).

    (Hp, Wp) is ``size`` padded to multiples of 32 (edge pixels repeated). Semantic models: the frames
    resized to (H, W), padded, through the compressor (C = 16). Resize-condition models: the frames
    resized to (H/4, W/4), rounded, padded to (Hp/4, Wp/4), through the SVD-VAE encoder (C = 4).
    """
    conditioner = pipe.conditioner  # the condition kind's one switch
    low, low_padded = conditioner.input_size(size), conditioner.input_size(padded_size(*size, LATENT_STRIDE))

    def encode(chunk: np.ndarray) -> torch.Tensor:
        x = resize_for_encoding(from_uint8(chunk), low)  # (n, h, w, 3) uint8 -> (n, 3, *low), training's filter
        return conditioner.encode(pad_to(x, *low_padded)).cpu().transpose(0, 1)  # (n, C, h, w) -> (C, n, h, w)

    return encode


class ConditionStream:
    """The condition latents (C, count, h, w) of frames [start, start + count) of a video, on demand.

    ``read(t0, t1)`` encodes frames as far as ``t1`` (``chunk`` at a time) and forgets those before
    ``t0``, so successive reads with non-decreasing ``t0`` (what ``CascadeVPipeline.decode`` does) keep
    only about one segment of latents in memory. A read further back starts again from ``t0``. Frames are
    read a chunk ahead on a background thread; ``close`` stops it.
    """

    def __init__(
        self,
        reader: VideoReader,
        start: int,
        count: int,
        encode: Callable[[np.ndarray], torch.Tensor],
        chunk: int = READ_CHUNK,
    ):
        self.reader, self.start, self.count, self.encode, self.chunk = reader, start, count, encode, chunk
        self._lo = 0
        self._latent: torch.Tensor | None = None  # latents of frames [_lo, _lo + _latent.shape[1])
        self.frames_encoded = 0  # counts re-encodes too; equals ``count`` for one forward pass
        self._frames: Iterator[np.ndarray] | None = None  # chunks from frame _next on, read ahead
        self._next = -1

    def _read_frames(self, first: int, n: int) -> np.ndarray:
        """Input frames [first, first + n) of the selection, uint8 (n, H, W, 3).

        Reads go forward a chunk at a time, so they come from a reader that runs a chunk ahead on a
        background thread (:func:`cascadev.overlap.read_ahead`); a read elsewhere (after a rewind or a
        skip) starts it again there.
        """
        if first != self._next:
            self.close()
            self._frames = read_ahead(self._chunks(first))
        self._next = first + n
        return next(self._frames)  # (n, H, W, 3): _chunks cuts where read() asks, ``chunk`` frames at a time

    def _chunks(self, first: int) -> Iterator[np.ndarray]:
        for lo in range(first, self.count, self.chunk):
            yield self.reader.read(range(self.start + lo, self.start + min(lo + self.chunk, self.count)))

    def close(self) -> None:
        """Stop the reader's background thread (``read`` starts it again when needed)."""
        if self._frames is not None:
            self._frames.close()
        self._frames, self._next = None, -1

    def read(self, t0: int, t1: int) -> torch.Tensor:
        if not 0 <= t0 < t1 <= self.count:
            raise ValueError(f"frames [{t0}, {t1}) are outside [0, {self.count})")
        # Invariant: _latent holds the latents of frames [_lo, hi), contiguous. A read that starts before
        # _lo (a rewind) or past hi (a skip) cannot extend that run, so it starts a new one at t0: the
        # forgotten frames are encoded again, which costs time but never changes a latent.
        if self._latent is None or t0 < self._lo or t0 > self._lo + self._latent.shape[1]:
            self._lo, self._latent = t0, None
        elif t0 > self._lo:
            # decode's reads never go back before t0, so frames before it can go. A slice is a view
            # that keeps the whole old tensor alive (memory would grow with the video); clone frees it.
            self._latent = self._latent[:, t0 - self._lo :].clone()
            self._lo = t0
        parts = [] if self._latent is None else [self._latent]
        hi = self._lo + (0 if self._latent is None else self._latent.shape[1])
        # Whole chunks until t1 is covered, ``chunk`` frames per read: the encoders never hold more than one
        # chunk of pixels, the video reader one more (read ahead). Both encoders work frame by frame (the
        # compressor and the SVD encoder are 2D), so where a chunk starts changes no latent, only memory.
        while hi < t1:
            n = min(self.chunk, self.count - hi)
            parts.append(self.encode(self._read_frames(hi, n)))
            self.frames_encoded += n
            hi += n
        self._latent = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return self._latent[:, t0 - self._lo : t1 - self._lo]  # (C, t1 - t0, h, w), the latent file's layout


def interpolate_in_time(read_inputs: LatentRange, num_inputs: int, factor: int) -> tuple[LatentRange, int]:
    """Condition latents at ``factor`` times the frame rate, linearly interpolated in time.

    Output frame j lies at input time j / factor (:func:`cascadev.frame_times.between_inputs`; exactly an
    input frame when j is a multiple of ``factor``). Returns ``(read, count)`` with
    ``count = (num_inputs - 1) * factor + 1``; ``read(t0, t1)`` reads only the inputs it needs.
    """
    count = (num_inputs - 1) * factor + 1  # factor: checked by interpolate_video, this helper's caller

    def read(t0: int, t1: int) -> torch.Tensor:
        if not 0 <= t0 < t1 <= count:
            raise ValueError(f"frames [{t0}, {t1}) are outside [0, {count})")
        first, last = t0 // factor, -(-(t1 - 1) // factor)
        inputs = read_inputs(first, last + 1)  # (C, last - first + 1, h, w)
        i, after, w = frame_times.between_inputs(torch.arange(t0, t1), factor, last)  # each (t1 - t0,)
        before, after = inputs[:, i - first], inputs[:, after - first]  # (C, t1 - t0, h, w) each
        return before + (after - before) * w[None, :, None, None].to(inputs.dtype)

    return read, count


def _enhance(
    load_pipeline: PipelineLoader,
    video: str | os.PathLike,
    output: str | os.PathLike,
    sampling: SamplingArgs,
    *,
    mode: str,
    start: int,
    num_frames: int | None,
    out_size: Callable[[VideoReader], tuple[int, int]],
    factor: int | None,
    writer_options: dict[str, Any],
    audio: bool,
) -> tuple[tuple[int, int], int]:
    """What upscale and interpolate share: frames [start, start + num_frames) of ``video`` through the
    cascade at ``out_size(reader)``, ``factor`` times as many per second if given (else as many), to
    ``output``, with the audio from the matching time on. Returns the output's (height, width) and frames."""
    check_choice(mode, MODES, "mode")  # before any work (CascadeVPipeline.plan would refuse it only later)
    check_not_inputs({"input video": video}, {"output": output})
    reader = VideoReader(video)
    start, count = select_frames(reader, start, num_frames)
    size = out_size(reader)
    fps, times = reader.output_fps * (factor or 1), frame_times.select(reader.frame_times, start, count)
    if factor is not None:
        if fps > MAX_FPS:
            raise CascadeVError(
                f"--factor {factor} would make {fps:g} frames per second of {video}'s {reader.output_fps:g}; "
                f"the most is {MAX_FPS}"
            )
        times = None if times is None else frame_times.interpolated_times(times, factor)
    if times is not None and len(times) > 1:  # variable frame rate: the frames keep their times
        fps = frame_times.average_fps(times)
    make_folder(Path(output).parent)
    writer = VideoWriter(
        output,
        fps,
        size[0],
        size[1],
        audio_from=reader.path if audio else None,
        audio_start=reader.start_time(start),
        frame_times=times,
        **writer_options,
    )
    with writer, WriteBehind() as behind:
        pipe = load_pipeline()
        latents = ConditionStream(reader, start, count, condition_encoder(pipe, size))
        read, total = (latents.read, count) if factor is None else interpolate_in_time(latents.read, count, factor)
        try:
            for frames in decode_frames(pipe, read, total, sampling, mode=mode):
                behind.submit(write_frames, writer, frames, *size)
        finally:
            latents.close()
    return size, writer.frames_written


def upscale_video(
    load_pipeline: PipelineLoader,
    video: str | os.PathLike,
    output: str | os.PathLike,
    sampling: SamplingArgs,
    *,
    scale: int = 4,
    size: int | None = None,
    mode: str = "tiles",
    start: int = 0,
    num_frames: int | None = None,
    codec: str = VIDEO_CODEC,
    crf: int = VIDEO_CRF,
    pix_fmt: str | None = None,
    audio: bool = True,
) -> tuple[int, int]:
    """Video file -> the same video ``scale`` times larger (or with short side ``size``) at the same fps.

    ``mode``: "tiles" (default, the trained path), or the experimental "2x" / "auto" (2x mode for DiT
    latents of at least twice the trained size per side, else tiles). Frames [start, start + num_frames)
    are used (default all); the audio track is copied from the matching time on. Returns the output's
    (height, width).
    """
    check_whole(scale, "--scale")
    out_size, _ = _enhance(
        load_pipeline,
        video,
        output,
        sampling,
        mode=mode,
        start=start,
        num_frames=num_frames,
        out_size=lambda r: target_size(r.height, r.width, scale=None if size is not None else scale, size=size),
        factor=None,
        writer_options=dict(codec=codec, crf=crf, pix_fmt=pix_fmt),
        audio=audio,
    )
    return out_size


def interpolate_video(
    load_pipeline: PipelineLoader,
    video: str | os.PathLike,
    output: str | os.PathLike,
    sampling: SamplingArgs,
    *,
    factor: int = 4,
    size: int | None = None,
    mode: str = "tiles",
    start: int = 0,
    num_frames: int | None = None,
    codec: str = VIDEO_CODEC,
    crf: int = VIDEO_CRF,
    pix_fmt: str | None = None,
    audio: bool = True,
) -> int:
    """Video file of N frames -> (N - 1) * factor + 1 frames at ``factor`` times its frame rate.

    The frames keep their size (or get short side ``size``). Returns the number of frames written.
    """
    factor = check_whole(factor, "--factor")
    _, frames = _enhance(
        load_pipeline,
        video,
        output,
        sampling,
        mode=mode,
        start=start,
        num_frames=num_frames,
        out_size=lambda r: target_size(r.height, r.width, size=size),
        factor=factor,
        writer_options=dict(codec=codec, crf=crf, pix_fmt=pix_fmt),
        audio=audio,
    )
    return frames
