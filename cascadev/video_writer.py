"""Writing video files: PyAV (H.264 in mp4 by default), streamed, atomic, with the input's audio.

:class:`VideoWriter` takes uint8 RGB ``(n, H, W, 3)``, the file-edge layout of :mod:`cascadev.frames`
(``frames.to_uint8`` makes it from model frames ``(T, 3, H, W)``), and encodes frames as they arrive,
so memory does not grow with the video's length. The file appears under its name only when complete.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from cascadev.atomic import AtomicWriter, check_output_path, commit, remove_quietly, temp_path, write_error
from cascadev.audio import AudioSource
from cascadev.errors import CascadeVError
from cascadev.rules import MAX_FPS, VIDEO_CODEC, VIDEO_CRF

__all__ = ["VideoWriter", "check_encoder_options", "fps_fraction", "write_video"]

# Containers VideoWriter can produce; the container format is taken from the suffix.
_OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
# Encoders that take x264-style constant-quality options.
_CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265"})
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
        codec: str = VIDEO_CODEC,
        crf: int = VIDEO_CRF,
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
        if not (isinstance(fps, numbers.Real) and math.isfinite(float(fps)) and 0 < fps <= MAX_FPS):
            raise CascadeVError(
                f"Cannot write {self.path}: the frame rate must be positive and at most {MAX_FPS}, got {fps}."
            )
        if int(height) != height or int(width) != width or height < 1 or width < 1:
            raise CascadeVError(f"Cannot write {self.path}: frame size {width}x{height} is not valid.")
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
        self._audio: AudioSource | None = None
        self._closed = False
        if not (math.isfinite(audio_start) and audio_start >= 0):
            raise CascadeVError(f"The audio start must be 0 seconds or more, got {audio_start}.")
        if audio_from is not None:
            audio_path = Path(audio_from)
            if not audio_path.is_file():
                raise CascadeVError(f"The audio source {audio_path} does not exist.")
            self._audio = AudioSource(audio_path, audio_start)
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
                if self._audio is not None:  # audio up to this frame's end: interleaved (AudioSource.feed)
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
                # Audio stops where the video does: a recon of a few frames gets their seconds of
                # sound, not the whole source track, so both streams report the same duration.
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


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: float, **kwargs: Any) -> None:
    """Write uint8 RGB frames ``(T, H, W, 3)`` to ``path``; ``kwargs`` go to :class:`VideoWriter`."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise CascadeVError(f"Frames for {path} must be uint8 (T, H, W, 3), got {arr.dtype} {arr.shape}.")
    with VideoWriter(path, fps, arr.shape[1], arr.shape[2], **kwargs) as writer:
        writer.write(arr)
