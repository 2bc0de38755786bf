"""Reading video files: decord on the CPU, only the frames asked for, every problem named in one line.

:class:`VideoReader` returns uint8 RGB ``(n, H, W, 3)``, the file-edge layout of
:mod:`cascadev.frames` (``frames.from_uint8`` turns it into model frames ``(T, 3, H, W)``).
:meth:`VideoReader.iter_chunks` reads a bounded number of frames at a time, so long videos are never
held whole. Every problem with a user's file raises :class:`~cascadev.errors.CascadeVError` naming it.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from cascadev.errors import CascadeVError, warn
from cascadev.frame_times import announced_frames, stream_end, variable_times
from cascadev.rules import DEFAULT_FPS

__all__ = ["VideoInfo", "VideoReader", "probe_video", "quiet_native_stderr", "select_frames"]

# Damaged files already reported in this process (recon opens its input twice).
_LOST_REPORTED: set[str] = set()


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
            raise CascadeVError("Reading videos needs the 'decord' package (pip install decord).") from exc
        try:
            quiet_decord_ffmpeg()
            with quiet_native_stderr():  # a damaged file's reasons are summed up in one line below
                self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
                self._num_frames = len(self._vr)
                if self._num_frames <= 0:
                    raise CascadeVError(f"{self.path} is not a readable video (it has no frames).")
                fps = float(self._vr.get_avg_fps())
                first = _to_numpy(self._vr[0])  # decodes one frame: proves the stream decodes at all
                self._vr.seek(0)
        except CascadeVError:
            raise
        except Exception as exc:  # decord raises DECORDError/RuntimeError for anything it cannot open
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
            warn(
                f"{self.path} is damaged: only {self._num_frames} of the {count} frames its container "
                f"announces could be decoded ({lost} lost); going on with those."
            )

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
    def output_fps(self) -> float:
        """The rate a video made from this one is written at: ``fps``, or ``DEFAULT_FPS`` when the file does not say."""
        return self._fps or DEFAULT_FPS

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
            raise CascadeVError(f"{self.path} has {self._num_frames} frames; frame {bad[0]} was asked for.")
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


def frames_used(total: int, start: int = 0, num_frames: int | None = None) -> int:
    """How many of a video's ``total`` frames a command with ``start`` and ``num_frames`` reads, without
    checks (at least 1): what a batch weighs its jobs by. :func:`select_frames` checks the range itself."""
    n = max(1, total - start)
    return min(n, num_frames) if num_frames else n


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
        raise CascadeVError(f"The number of frames must be at least 1, got {num_frames} (for {name}).")
    if start + num_frames > total:
        raise CascadeVError(f"{name} has {total} frames; frames {start}..{start + num_frames - 1} were asked for.")
    return int(start), int(num_frames)
