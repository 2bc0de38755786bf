"""Reading, writing and reshaping video frames.

Frames travel in three layouts:

* files on disk, read with decord and written with PyAV (H.264 in mp4 by default);
* uint8 numpy arrays ``(T, H, W, 3)``, RGB in [0, 255], the layout of decoders and encoders;
* float tensors ``(3, T, H, W)`` in [-1, 1], the layout the models take (:func:`to_model_range`,
  :func:`to_uint8`).

Long videos are never held whole: :meth:`VideoReader.iter_chunks` reads a bounded number of frames at a
time and :class:`VideoWriter` encodes frames as they arrive. Every problem with a user's file raises
:class:`~cascadev.errors.CascadeVError` naming that file.
"""

from __future__ import annotations

import ctypes
import math
import numbers
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

from cascadev.atomic import (
    AtomicWriter,
    atomic_output,
    check_output_path,
    commit,
    remove_quietly,
    temp_path,
    write_error,
)
from cascadev.errors import CascadeVError, warn
from cascadev.frame_times import announced_frames, stream_end, variable_times

__all__ = [
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "check_encoder_options",
    "fps_fraction",
    "pad_to_multiple",
    "probe_video",
    "resize_short_side",
    "save_image",
    "select_frames",
    "side_by_side",
    "to_model_range",
    "to_uint8",
    "write_video",
]

# Containers VideoWriter can produce; the container format is taken from the suffix.
_OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
# Audio codecs that mp4/mov/mkv all carry as they are; anything else is re-encoded to AAC.
_COPYABLE_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})
# Encoders that take x264-style constant-quality options.
_CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265"})
# Damaged files already reported in this process (recon opens its input twice).
_LOST_REPORTED: set[str] = set()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video file without decoding it all."""

    num_frames: int
    fps: float
    height: int
    width: int
    has_audio: bool
    path: str = ""


def _unreadable(path: Path, detail: str = "") -> CascadeVError:
    suffix = f" ({detail})" if detail else ""
    return CascadeVError(f"{path} is not a readable video{suffix}.")


def _check_input_file(path: Path) -> None:
    if not path.exists():
        raise CascadeVError(f"{path} is not a readable video (no such file).")
    if not path.is_file():
        raise CascadeVError(f"{path} is not a readable video (it is not a file).")
    if path.stat().st_size == 0:
        raise _unreadable(path, "the file is empty")


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native code (decord's C++ logger, ffmpeg's av_log) prints on file descriptor 2.

    Probing a damaged file makes both print their own lines ("video_reader.cc:83: ERROR opening ...",
    "moov atom not found") before cascadev's one-line error; they neither use Python's sys.stderr nor
    offer a switch, so fd 2 points at /dev/null for the duration and is restored afterwards.
    """
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


AV_LOG_QUIET = -8
_decord_quieted = False


def quiet_decord_ffmpeg() -> None:
    """Set the log level of the ffmpeg copy that decord loaded (its own libavutil) to quiet, once.

    decord decodes ahead in its own threads, so some of ffmpeg's messages about a damaged stream are
    written outside any call of ours; only ffmpeg's own log level reaches them. PyAV's copy is a
    different library (``av.logging``, silent by default). Where decord's libavutil cannot be found
    (not Linux, an unusual build), :func:`quiet_native_stderr` still covers the calls themselves.
    """
    global _decord_quieted
    if _decord_quieted or os.environ.get("CASCADEV_DEBUG"):
        return
    _decord_quieted = True
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "decord" in line and "libavutil" in line}
        for path in paths:
            ctypes.CDLL(path).av_log_set_level(AV_LOG_QUIET)  # already loaded: dlopen returns it
    except (OSError, AttributeError, IndexError):
        pass


def _to_numpy(batch: Any) -> np.ndarray:
    """decord returns its own NDArray, or a torch tensor when someone switched its bridge."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if isinstance(batch, torch.Tensor):
        return batch.cpu().numpy()
    return np.asarray(batch)


class VideoReader:
    """Random-access RGB frames of a video file, decoded with decord on the CPU.

    Only the frames asked for are decoded (decord seeks to the nearest key frame). ``read`` and
    ``iter_chunks`` return uint8 arrays ``(n, H, W, 3)``, RGB in [0, 255].
    """

    def __init__(self, path: str | os.PathLike[str], num_threads: int = 2) -> None:
        self.path = Path(path)
        _check_input_file(self.path)
        try:
            import decord
        except ImportError as exc:  # pragma: no cover - decord is a declared dependency
            raise CascadeVError(
                "Reading videos needs the 'decord' package (pip install decord)."
            ) from exc
        try:
            quiet_decord_ffmpeg()
            with quiet_native_stderr():  # a damaged file's reasons are summed up in one line below
                self._vr = decord.VideoReader(
                    str(self.path), ctx=decord.cpu(0), num_threads=num_threads
                )
                self._num_frames = len(self._vr)
                if self._num_frames <= 0:
                    raise CascadeVError(f"{self.path} is not a readable video (it has no frames).")
                fps = float(self._vr.get_avg_fps())
                first = _to_numpy(self._vr[0])  # decodes one frame: proves the stream decodes at all
                self._vr.seek(0)
        except CascadeVError:
            raise
        except (
            Exception
        ) as exc:  # decord raises DECORDError/RuntimeError for anything it cannot open
            raise _unreadable(self.path) from exc
        if first.ndim != 3:
            raise _unreadable(self.path, f"decoded frames have shape {tuple(first.shape)}")
        self._height, self._width = int(first.shape[0]), int(first.shape[1])
        # decord bug: for some small widths (e.g. 16, 24, 48, 72) each RGB row comes back with its
        # alignment padding, as (H, W, 4) or (H, W, 6), and get_batch fails. Such frames are read one
        # at a time and the padding is cut off, using the true width from the container.
        self._padded_rows = first.shape[2] != 3
        if self._padded_rows:
            self._width = self._container_width()
            if first.shape[1] * first.shape[2] < 3 * self._width:
                raise _unreadable(self.path, f"decoded frames have shape {tuple(first.shape)}")
        self._fps = fps if math.isfinite(fps) and fps > 0 else 0.0
        self._frame_times: np.ndarray | None | bool = False  # not looked at yet
        self._report_lost_frames()

    def _report_lost_frames(self) -> None:
        """One warning (once per file and process) when fewer frames decode than the container announces."""
        announced = announced_frames(self.path)
        key = str(self.path.resolve())
        if announced is None or key in _LOST_REPORTED:
            return
        count, exact = announced
        lost = count - self._num_frames
        if lost > (0 if exact else max(1, round(0.02 * count))):  # estimated counts are good to about a frame
            _LOST_REPORTED.add(key)
            warn(f"{self.path} is damaged: only {self._num_frames} of the {count} frames its container "
                 f"announces could be decoded ({lost} lost); going on with those.")

    def start_time(self, index: int) -> float:
        """Seconds from frame 0 to frame ``index``: its own timestamp for variable frame rate."""
        if self.frame_times is not None:
            return float(self.frame_times[index])
        return index / self.fps if self.fps else 0.0

    @property
    def frame_times(self) -> np.ndarray | None:
        """Variable frame rate: the start of every frame and the end of the last (n + 1 values, seconds
        from frame 0), from the container's timestamps. None for constant-rate video."""
        if self._frame_times is False:
            try:
                starts = self._vr.get_frame_timestamp(list(range(self._num_frames)))[:, 0]
            except Exception:  # no timestamps: the frames are taken as evenly spaced, as before
                starts = []
            times = variable_times(starts, None)
            if times is not None:  # only variable-rate video pays for a pass over the packets
                times = variable_times(starts, stream_end(self.path))
            self._frame_times = times
        return self._frame_times

    def _container_width(self) -> int:
        try:
            with av.open(str(self.path)) as container:
                return int(container.streams.video[0].codec_context.width)
        except Exception as exc:
            raise _unreadable(self.path) from exc

    def _decode(self, idx: list[int]) -> np.ndarray:
        with quiet_native_stderr():  # ffmpeg's complaints about a damaged stream
            return self._decode_frames(idx)

    def _decode_frames(self, idx: list[int]) -> np.ndarray:
        if not self._padded_rows:
            return _to_numpy(self._vr.get_batch(idx))
        row_bytes = 3 * self._width
        frames = []
        for i in idx:
            raw = _to_numpy(self._vr[i]).reshape(self._height, -1)
            frames.append(raw[:, :row_bytes].reshape(self._height, self._width, 3))
        return np.stack(frames)

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        """Average frame rate; 0.0 when the file does not say."""
        return self._fps

    @property
    def height(self) -> int:
        return self._height

    @property
    def width(self) -> int:
        return self._width

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames at ``indices`` (any order, repeats allowed): uint8 (n, H, W, 3) RGB."""
        idx = [int(i) for i in indices]
        if not idx:
            return np.zeros((0, self._height, self._width, 3), dtype=np.uint8)
        bad = [i for i in idx if not 0 <= i < self._num_frames]
        if bad:
            raise CascadeVError(
                f"{self.path} has {self._num_frames} frames; frame {bad[0]} was asked for."
            )
        try:
            frames = self._decode(idx)
        except Exception as exc:
            raise _unreadable(self.path, f"decoding frames {idx[0]}..{idx[-1]} failed") from exc
        if frames.shape != (len(idx), self._height, self._width, 3):
            raise _unreadable(self.path, f"frames changed size to {tuple(frames.shape[1:3])}")
        return np.ascontiguousarray(frames, dtype=np.uint8)

    def iter_chunks(self, start: int, count: int, chunk: int) -> Iterator[np.ndarray]:
        """Yield frames ``[start, start + count)`` in order, at most ``chunk`` at a time.

        Each item is uint8 (n, H, W, 3) with ``n <= chunk``; together they are exactly ``count`` frames.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        start, count = select_frames(self, start, count)
        for first in range(start, start + count, chunk):
            yield self.read(range(first, min(first + chunk, start + count)))

    def __len__(self) -> int:
        return self._num_frames

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, frames={self._num_frames}, fps={self._fps:.4g}, "
            f"size={self._width}x{self._height})"
        )


def _has_audio(path: Path) -> bool:
    try:
        with av.open(str(path)) as container:
            return len(container.streams.audio) > 0
    except Exception as exc:
        raise _unreadable(path) from exc


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count, frame rate, size and audio presence of a video file."""
    reader = VideoReader(path, num_threads=1)
    return VideoInfo(
        num_frames=reader.num_frames,
        fps=reader.fps,
        height=reader.height,
        width=reader.width,
        has_audio=_has_audio(reader.path),
        path=str(reader.path),
    )


def select_frames(info_or_reader: Any, start: int, num_frames: int | None) -> tuple[int, int]:
    """Check a frame range against a video and return it as ``(start, count)``.

    ``info_or_reader`` is a :class:`VideoInfo` or :class:`VideoReader` (anything with ``num_frames``
    and optionally ``path``). ``num_frames=None`` means every frame from ``start`` to the end.
    """
    total = int(info_or_reader.num_frames)
    name = str(getattr(info_or_reader, "path", "") or "the video")
    if start < 0:
        raise CascadeVError(f"The start frame must be 0 or more, got {start} (for {name}).")
    if start >= total:
        raise CascadeVError(f"{name} has {total} frames; start frame {start} is past its end.")
    if num_frames is None:
        return int(start), total - int(start)
    if num_frames < 1:
        raise CascadeVError(
            f"The number of frames must be at least 1, got {num_frames} (for {name})."
        )
    if start + num_frames > total:
        raise CascadeVError(
            f"{name} has {total} frames; frames {start}..{start + num_frames - 1} were asked for."
        )
    return int(start), int(num_frames)


# --------------------------------------------------------------------------------------------
# Geometry and value ranges
# --------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resize_short_side(frames: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize float frames ``(..., H, W)`` (e.g. (T, 3, H, W)) so that ``min(H, W) == size``.

    The aspect ratio is kept (the long side is rounded to the nearest integer); bilinear filtering
    with antialiasing, so downscaling does not alias. ``size=None`` returns ``frames`` unchanged.
    Values keep their range (bilinear interpolation does not overshoot).
    """
    if size is None:
        return frames
    if int(size) != size or size < 1:
        raise CascadeVError(
            f"The resize option must be a positive whole number of pixels, got {size}."
        )
    if not frames.is_floating_point():
        raise TypeError(f"resize_short_side needs a float tensor, got {frames.dtype}")
    if frames.ndim < 2:
        raise ValueError(
            f"resize_short_side needs (..., H, W) frames, got shape {tuple(frames.shape)}"
        )
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    if h <= w:
        new_h, new_w = int(size), max(1, _round_half_up(w * size / h))
    else:
        new_h, new_w = max(1, _round_half_up(h * size / w)), int(size)
    lead = frames.shape[:-2]
    # Every leading index is an independent image: fold them all into channels of one batch item.
    flat = frames.reshape(1, -1, h, w)
    work_dtype = torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype
    out = F.interpolate(
        flat.to(work_dtype),
        size=(new_h, new_w),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return out.to(frames.dtype).reshape(*lead, new_h, new_w)


def pad_to_multiple(frames: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(..., H, W)`` at the bottom and right, repeating the edge pixels, to multiples of ``multiple``.

    Returns ``(padded, (H, W))``; ``padded[..., :H, :W]`` is the input again.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if frames.ndim < 2:
        raise ValueError(
            f"pad_to_multiple needs (..., H, W) frames, got shape {tuple(frames.shape)}"
        )
    h, w = int(frames.shape[-2]), int(frames.shape[-1])
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return frames, (h, w)
    lead = frames.shape[:-2]
    # Replicate padding wants (N, C, H, W); leading dims become channels.
    flat = frames.reshape(1, -1, h, w)
    padded = F.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
    return padded.reshape(*lead, h + pad_h, w + pad_w), (h, w)


def to_model_range(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``(T, H, W, 3)`` in [0, 255] -> float32 tensor ``(3, T, H, W)`` in [-1, 1]."""
    x = torch.as_tensor(frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"to_model_range needs uint8 (T, H, W, 3) frames, got {x.dtype} {tuple(x.shape)}"
        )
    return x.permute(3, 0, 1, 2).contiguous().to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float ``(3, T, H, W)`` in [-1, 1] -> uint8 numpy ``(T, H, W, 3)``; clamps, then rounds."""
    if frames.ndim != 4 or frames.shape[0] != 3:
        raise ValueError(f"to_uint8 needs (3, T, H, W) frames, got shape {tuple(frames.shape)}")
    x = frames.detach().to(device="cpu", dtype=torch.float32)
    x = x.clamp(-1.0, 1.0).add(1.0).mul_(127.5).round_().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_NTSC_BASES = (24, 30, 48, 60, 120, 240)
# Time base of variable-rate output (MPEG's 90 kHz clock); containers with a coarser one rescale.
_FINE_TIME_BASE = Fraction(1, 90000)


def fps_fraction(fps: float | Fraction) -> Fraction:
    """A frame rate as an exact fraction: NTSC rates (29.97, 23.976, 59.94...) become n*1000/1001."""
    if isinstance(fps, Fraction):
        return fps
    for base in _NTSC_BASES:
        ntsc = Fraction(base * 1000, 1001)
        if abs(float(fps) - float(ntsc)) < 5e-3:
            return ntsc
    return Fraction(float(fps)).limit_denominator(1001)


class _AudioSource:
    """Audio of another file, copied (or, when the codec does not fit, re-encoded to AAC) into an output.

    Packets are handed over as video time advances (:meth:`feed`), so the output is interleaved and
    nothing is buffered beyond one packet.
    """

    def __init__(self, path: Path, start: float) -> None:
        self.path = path
        self.start = float(start)
        try:
            self.container = av.open(str(path))
        except Exception as exc:
            raise CascadeVError(f"{path} (the audio source) is not a readable media file.") from exc
        if not self.container.streams.audio:
            self.container.close()
            self.container = None
            return
        self.stream = self.container.streams.audio[0]
        self.copy = self.stream.codec_context.codec.canonical_name in _COPYABLE_AUDIO
        self.packets = self.container.demux(self.stream)
        self.pending: list[tuple[float, Any]] = []  # (start time in the output, packet or frame)
        self.exhausted = False

    @property
    def present(self) -> bool:
        return self.container is not None

    def add_output_stream(self, out: av.container.OutputContainer) -> None:
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.stream)
        else:
            ctx = self.stream.codec_context
            # Source layouts can be unnamed ("3 channels"); AAC wants a standard one, so more than
            # two channels without a 5.1/7.1 layout are mixed down to stereo.
            layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(ctx.channels, "stereo")
            self.out_stream = out.add_stream("aac", rate=ctx.sample_rate or 48000, layout=layout)

    def _next_items(self) -> list[tuple[float, Any]]:
        """The next packet (copy) or decoded frames (re-encode) with their output times in seconds."""
        for packet in self.packets:
            if packet.dts is None or packet.pts is None or packet.size == 0:
                continue  # demux's final flush packet carries no data
            tb = packet.time_base
            end = float((packet.pts + (packet.duration or 0)) * tb)
            if self.start > 0 and end <= self.start:
                continue  # wholly before the cut (at 0, negative-time priming packets are kept)
            shift = round(self.start / tb)
            if self.copy:
                packet.pts -= shift
                packet.dts -= shift
                return [(float(packet.pts * tb), packet)]
            items = []
            for frame in packet.decode():
                if frame.pts is not None:
                    frame.pts -= round(self.start / frame.time_base)
                    items.append((float(frame.pts * frame.time_base), frame))
                else:
                    items.append((float(packet.pts * tb) - self.start, frame))
            if items:
                return items
        self.exhausted = True
        return []

    def feed(self, out: av.container.OutputContainer, until: float) -> None:
        """Mux every audio packet that starts before ``until`` seconds of output."""
        while True:
            if not self.pending:
                if self.exhausted:
                    return
                self.pending = self._next_items()
                if not self.pending:
                    return
            when, item = self.pending[0]
            if when >= until:
                return
            self.pending.pop(0)
            if self.copy:
                item.stream = self.out_stream
                out.mux(item)
            else:
                out.mux(self.out_stream.encode(item))

    def finish(self, out: av.container.OutputContainer) -> None:
        if not self.copy:
            out.mux(self.out_stream.encode(None))

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def check_encoder_options(codec: str, crf: int, pix_fmt: str | None) -> None:
    """Refuse an unknown or non-video encoder, a crf out of range, or a pixel format the encoder lacks.

    Cheap (no file is touched), so commands call it before they make any output.
    """
    try:
        encoder = av.codec.Codec(codec, "w")
    except Exception as exc:
        raise CascadeVError(f"The video codec {codec!r} is not available in this PyAV build.") from exc
    if encoder.type != "video":
        raise CascadeVError(f"The codec {codec!r} is an {encoder.type} encoder, not a video encoder.")
    if codec in _CRF_CODECS and not 0 <= crf <= 51:
        raise CascadeVError(f"The crf option must be between 0 and 51, got {crf}.")
    if pix_fmt is None:
        return
    try:
        av.VideoFormat(pix_fmt)
    except (ValueError, TypeError):
        raise CascadeVError(f"The --pix-fmt option names no pixel format PyAV knows: {pix_fmt!r}.") from None
    supported = [f.name for f in encoder.video_formats or ()]
    if supported and pix_fmt not in supported:
        raise CascadeVError(
            f"The encoder {codec} cannot write pixel format {pix_fmt}; it takes {', '.join(supported)}."
        )


class VideoWriter(AtomicWriter):
    """Streams uint8 RGB frames ``(n, H, W, 3)`` into a video file (H.264 in mp4 by default).

    Use as a context manager. Frames are encoded as they are written, so memory does not grow with the
    video's length. The file is written under a temporary name beside ``path`` and renamed when
    :meth:`close` succeeds; if the ``with`` block raises, the temporary file is removed and ``path`` is
    left as it was.

    ``pix_fmt=None`` picks yuv420p, what players expect; x264 cannot subsample an odd side, so an odd
    height or width is padded to even by repeating the last row or column (the file is then one pixel
    larger: ``stored_size``). An explicit ``pix_fmt`` (e.g. yuv444p) keeps odd sizes exact. With
    ``codec='libx264rgb'`` the default is rgb24. ``crf`` 0 is
    lossless for x264 (apart from the RGB->YUV conversion with YUV pixel formats). ``audio_from`` copies
    the first audio track of that file, starting ``audio_start`` seconds into it; a file without audio
    just gives a silent video.

    ``frame_times`` (variable frame rate, see :mod:`cascadev.frame_times`): the start of each frame to
    be written and the end of the last, in seconds; each frame keeps its time (``fps`` is then only the
    stream's nominal rate) and the audio follows them. Without it frame i lies at i / fps.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        height: int,
        width: int,
        codec: str = "libx264",
        crf: int = 18,
        pix_fmt: str | None = None,
        audio_from: str | os.PathLike[str] | None = None,
        audio_start: float = 0.0,
        frame_times: Sequence[float] | None = None,
    ) -> None:
        self.path = Path(path)
        check_output_path(self.path, "output video")
        if self.path.suffix.lower() not in _OUTPUT_SUFFIXES:
            raise CascadeVError(
                f"Cannot write {self.path}: the file name must end in one of {', '.join(_OUTPUT_SUFFIXES)}."
            )
        if not (isinstance(fps, numbers.Real) and math.isfinite(float(fps)) and fps > 0):
            raise CascadeVError(
                f"Cannot write {self.path}: the frame rate must be positive, got {fps}."
            )
        if int(height) != height or int(width) != width or height < 1 or width < 1:
            raise CascadeVError(
                f"Cannot write {self.path}: frame size {width}x{height} is not valid."
            )
        check_encoder_options(codec, crf, pix_fmt)
        self.height, self.width = int(height), int(width)
        self.stored_size = (self.height, self.width)
        if pix_fmt is None:
            if codec == "libx264rgb":
                pix_fmt = "rgb24"
            else:
                pix_fmt = "yuv420p"
                self.stored_size = (self.height + self.height % 2, self.width + self.width % 2)
            check_encoder_options(codec, crf, pix_fmt)
        self.fps = fps_fraction(fps)
        self.codec, self.crf, self.pix_fmt = codec, int(crf), pix_fmt
        self.frames_written = 0
        self.frame_times = None if frame_times is None else [float(t) for t in frame_times]
        self._durations: dict[int, int] = {}  # pts -> duration of frames sent to the encoder (frame_times)
        self._tmp: Path | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: Any = None
        self._audio: _AudioSource | None = None
        self._closed = False
        if not (math.isfinite(audio_start) and audio_start >= 0):
            raise CascadeVError(f"The audio start must be 0 seconds or more, got {audio_start}.")
        if audio_from is not None:
            audio_path = Path(audio_from)
            if not audio_path.is_file():
                raise CascadeVError(f"The audio source {audio_path} does not exist.")
            self._audio = _AudioSource(audio_path, audio_start)
            if not self._audio.present:
                self._audio = None

    def _open(self) -> None:
        self._tmp = temp_path(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w")
            stream = self._container.add_stream(self.codec, rate=self.fps)
            stream.height, stream.width = self.stored_size
            stream.pix_fmt = self.pix_fmt
            stream.codec_context.time_base = 1 / self.fps if self.frame_times is None else _FINE_TIME_BASE
            options = {"crf": str(self.crf)} if self.codec in _CRF_CODECS else {}
            if self.frame_times is not None:
                # B-frames make x264 invent decode times from the frame rate, which breaks uneven
                # timestamps (mp4 then reports a wrong duration); without them dts = pts.
                options["bf"] = "0"
            stream.options = options
            self._stream = stream
            if self._audio is not None:
                self._audio.add_output_stream(self._container)
        except Exception as exc:
            self.abort()
            raise write_error(self.path, exc) from exc

    def write(self, frames: np.ndarray) -> None:
        """Append frames: uint8 ``(n, H, W, 3)`` (or one ``(H, W, 3)`` frame), RGB in [0, 255]."""
        if self._closed:
            raise CascadeVError(f"Cannot write more frames to {self.path}: it is already closed.")
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (self.height, self.width, 3):
            raise CascadeVError(
                f"Frames for {self.path} must be uint8 (n, {self.height}, {self.width}, 3), "
                f"got {arr.dtype} {tuple(np.shape(frames))}."
            )
        if self._container is None:
            self._open()
        pad_h, pad_w = self.stored_size[0] - self.height, self.stored_size[1] - self.width
        if pad_h or pad_w:  # odd sides to even for yuv420p: repeat the last row / column
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        try:
            for rgb in arr:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                self._stamp(frame)
                self._mux_video(self._stream.encode(frame))
                self.frames_written += 1
                if self._audio is not None:
                    self._audio.feed(self._container, self._time(self.frames_written))
        except Exception as exc:
            self.abort()
            raise write_error(self.path, exc) from exc

    def _time(self, index: int) -> float:
        """When frame ``index`` starts (the end of frame ``index - 1``), in seconds."""
        return float(index / self.fps) if self.frame_times is None else self.frame_times[index]

    def _stamp(self, frame: av.VideoFrame) -> None:
        i = self.frames_written
        if self.frame_times is None:
            frame.pts, frame.time_base = i, 1 / self.fps
            return
        if i + 1 >= len(self.frame_times):
            raise CascadeVError(f"{self.path} was given times for {len(self.frame_times) - 1} frames; more came.")
        frame.pts = round(self.frame_times[i] / _FINE_TIME_BASE)
        frame.time_base = _FINE_TIME_BASE
        self._durations[frame.pts] = round(self.frame_times[i + 1] / _FINE_TIME_BASE) - frame.pts

    def _mux_video(self, packets: list) -> None:
        for packet in packets:
            if packet.pts in self._durations:  # the encoder knows only the nominal rate
                packet.duration = self._durations.pop(packet.pts)
        self._container.mux(packets)

    def close(self) -> None:
        """Finish encoding and move the file into place. Raises if no frame was written."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise CascadeVError(f"No frames were written to {self.path}; nothing was saved.")
        try:
            self._mux_video(self._stream.encode(None))
            if self._audio is not None:
                self._audio.feed(self._container, self._time(self.frames_written))
                self._audio.finish(self._container)
                self._audio.close()
            self._container.close()
            self._container = None
            commit(self._tmp, self.path)
            self._tmp = None
        except Exception as exc:
            self.abort()
            raise write_error(self.path, exc) from exc
        self._closed = True

    def abort(self) -> None:
        """Stop without producing ``path``; the temporary file is removed."""
        self._closed = True
        for closer in (self._container, self._audio):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    pass  # already failing; the temporary file goes regardless
        self._container, self._audio = None, None
        remove_quietly(self._tmp)
        self._tmp = None



def write_video(
    path: str | os.PathLike[str], frames: np.ndarray, fps: float, **kwargs: Any
) -> None:
    """Write uint8 RGB frames ``(T, H, W, 3)`` to ``path``; ``kwargs`` go to :class:`VideoWriter`."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise CascadeVError(
            f"Frames for {path} must be uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}."
        )
    with VideoWriter(path, fps, arr.shape[1], arr.shape[2], **kwargs) as writer:
        writer.write(arr)


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Save a uint8 RGB image ``(H, W, 3)`` as PNG, atomically (temporary file, then rename)."""
    from PIL import Image

    path = Path(path)
    check_output_path(path, "output image")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise CascadeVError(
            f"The image for {path} must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}."
        )
    with atomic_output(path, "output image") as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def side_by_side(*videos: np.ndarray) -> np.ndarray:
    """Concatenate videos left to right: each uint8 ``(n, H, W_i, 3)`` -> ``(n, H, sum W_i, 3)``."""
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    arrays = [np.asarray(v) for v in videos]
    first = arrays[0]
    for v in arrays:
        if v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"side_by_side needs (n, H, W, 3) videos, got shape {v.shape}")
        if v.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"side_by_side needs equal frame counts and heights, got {first.shape[:2]} and {v.shape[:2]}"
            )
    return np.concatenate(arrays, axis=2)
