"""Deterministic synthetic test videos, written with PyAV independently of ``cascadev.video_io``.

Tests import it as ``from videos import write_test_video`` (``tests/conftest.py`` puts this folder on
``sys.path``). The reader tests compare what ``cascadev`` decodes with the frames returned here, so
this module deliberately does not use ``cascadev.video_io.VideoWriter``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Codecs for the optional audio track: 'aac' and 'mp3' fit mp4 (copied by a remux); 'pcm_s16le'
# only fits containers such as .mkv/.mov and must be re-encoded when remuxed into mp4.
_AUDIO_RATE = 44100


def make_frames(num_frames: int, height: int, width: int, pattern: str = "moving") -> np.ndarray:
    """Synthetic RGB frames, uint8 (T, H, W, 3) in [0, 255].

    ``moving``: a diagonal colour gradient that drifts every frame plus a bright square moving
    across it, so every frame differs clearly from its neighbours. ``still``: frame 0 repeated.
    """
    if pattern not in ("moving", "still"):
        raise ValueError(f"unknown pattern {pattern!r}; expected 'moving' or 'still'")
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    if pattern == "still":
        t = np.zeros_like(t)
    y = np.arange(height, dtype=np.float32)[None, :, None]
    x = np.arange(width, dtype=np.float32)[None, None, :]
    # Values stay inside [16, 235] so the limited-range YUV round trip does not clip them.
    red = 16 + 219 * (0.5 + 0.5 * np.sin(2 * math.pi * (x / max(width, 1) + 0.07 * t)))
    green = 16 + 219 * (0.5 + 0.5 * np.cos(2 * math.pi * (y / max(height, 1) - 0.05 * t)))
    blue = 16 + 219 * ((x + y + 3 * t) % 64) / 63
    frames = np.stack(np.broadcast_arrays(red, green, blue), axis=-1)
    side = max(2, min(height, width) // 4)
    for i in range(num_frames):  # a loop over frames (not pixels) to place the square
        step = 0 if pattern == "still" else i
        top = (2 * step) % max(1, height - side)
        left = (3 * step) % max(1, width - side)
        frames[i, top : top + side, left : left + side] = (230, 230, 40)
    return np.round(frames).astype(np.uint8)


def write_test_video(
    path: str | Path,
    num_frames: int,
    height: int,
    width: int,
    fps: float = 24.0,
    pattern: str = "moving",
    audio: bool | str = False,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv444p",
    crf: int = 0,
) -> np.ndarray:
    """Write a synthetic video and return the frames written, uint8 (T, H, W, 3) RGB.

    The defaults (yuv444p, crf 0) make x264 lossless apart from the RGB<->YUV rounding, so decoded
    frames are within a few levels of the returned ones. ``audio`` adds a sine tone that lasts as
    long as the video: True means AAC, a string names the audio codec (e.g. 'mp3', 'pcm_s16le').
    """
    frames = make_frames(num_frames, height, width, pattern)
    rate = Fraction(fps).limit_denominator(100000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec.startswith("libx264"):
            stream.options = {"crf": str(crf)}
        astream = None
        if audio:
            acodec = "aac" if audio is True else str(audio)
            astream = container.add_stream(acodec, rate=_AUDIO_RATE, layout="mono")
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if astream is not None:
            _write_tone(container, astream, num_frames / float(rate))
    return frames


def _write_tone(container: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    """Encode a 440 Hz mono tone of ``seconds`` into ``stream``."""
    total = int(round(seconds * _AUDIO_RATE))
    block = 1024
    for start in range(0, total, block):
        n = min(block, total - start)
        tone = 0.3 * np.sin(2 * math.pi * 440 * (start + np.arange(n)) / _AUDIO_RATE)
        # PyAV resamples s16 to whatever sample format the encoder wants.
        samples = np.round(tone * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = _AUDIO_RATE
        frame.pts = start
        frame.time_base = Fraction(1, _AUDIO_RATE)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
