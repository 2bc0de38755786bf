"""Frame times of variable-frame-rate video, and what a container announces about its video stream.

A frame-time array holds n + 1 values in seconds from the first frame: the start of each of n frames
and the end of the last one, so it also carries the duration. Constant-rate video has none (None):
its frames are ``i / fps`` as ever.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import av
import numpy as np

from .errors import CascadeVError


def variable_times(starts: Sequence[float], end: float | None) -> np.ndarray | None:
    """Frame times (n + 1) from the decoder's frame starts, or None when they are evenly spaced.

    Evenly spaced means every start lies within half a frame of the uniform grid through the first and
    last start (container time bases round each start a little; that is not variable timing). ``end``
    is the last frame's end from the container; without it the last frame lasts the median gap.
    """
    t = np.asarray(starts, dtype=np.float64)
    if t.size < 2 or not np.all(np.isfinite(t)):
        return None
    t = t - t[0]
    span = t[-1]
    if span <= 0:
        return None
    period = span / (t.size - 1)
    if np.max(np.abs(t - period * np.arange(t.size))) <= 0.5 * period:
        return None
    gaps = np.diff(t)
    last = end if end is not None and math.isfinite(end) and end > span else span + float(np.median(gaps))
    return np.append(t, last)


def stream_end(path: str | os.PathLike) -> float | None:
    """The end of the video stream's last packet, in seconds from its first (None if unknown)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            first, end = None, None
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                first = packet.pts if first is None else min(first, packet.pts)
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
            if first is None:
                return None
            return float((end - first) * stream.time_base)
    except Exception:
        return None


def _tag_seconds(value: str) -> float | None:
    """Matroska's per-stream DURATION tag, "HH:MM:SS.nnnnnnnnn"."""
    try:
        h, m, s = value.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (ValueError, AttributeError):
        return None


def announced_frames(path: str | os.PathLike) -> tuple[int, bool] | None:
    """How many video frames the container says it holds: ``(count, exact)``, or None if it does not say.

    ``exact`` when the container counts them (mp4's sample table); otherwise the count is the stream's
    duration times its average rate (Matroska), good to about a frame.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames), True
            rate = stream.average_rate or stream.guessed_rate
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            if seconds is None:
                seconds = _tag_seconds(stream.metadata.get("DURATION", ""))
            if seconds is None and container.duration is not None and len(container.streams) == 1:
                seconds = container.duration / av.time_base
            if not rate or seconds is None or seconds <= 0:
                return None
            return int(math.floor(seconds * float(rate) + 0.5)), False
    except Exception:
        return None


def between_inputs(j: Any, factor: int, last: int) -> tuple[Any, Any, Any]:
    """Where output frames ``j`` (integer numpy array or torch tensor) of an interpolation by ``factor``
    lie: at input time j / factor, i.e. ``(1 - w) * input[i] + w * input[after]`` with ``i = j // factor``,
    ``after = i + 1`` (``i`` at input ``last``) and ``w = (j % factor) / factor``. Returns ``(i, after, w)``."""
    i = j // factor
    return i, i + (i < last), (j % factor) / factor


def interpolated_times(times: np.ndarray, factor: int) -> np.ndarray:
    """Frame times at ``factor`` times the rate, placed linearly between their two input frames' times
    (:func:`between_inputs`); the last output frame ends where the input does."""
    starts = times[:-1]
    i, after, w = between_inputs(np.arange((starts.size - 1) * factor + 1), factor, starts.size - 1)
    return np.append(starts[i] + (starts[after] - starts[i]) * w, times[-1])


def dumps(times: np.ndarray | Sequence[float]) -> str:
    """Frame times as the latent metadata stores them: a JSON list, microsecond precision."""
    return json.dumps([round(float(t), 6) for t in times], separators=(",", ":"))


def loads(text: str, num_frames: int | None = None) -> tuple[float, ...]:
    """Parse stored frame times; they must increase from 0 and be ``num_frames + 1`` long if given."""
    try:
        values = tuple(float(v) for v in json.loads(text))
    except (TypeError, ValueError) as exc:
        raise CascadeVError(f"The latent's frame times are not a list of numbers: {text[:40]!r}.") from exc
    if (
        len(values) < 2
        or values[0] != 0
        or not all(math.isfinite(v) for v in values)
        or any(b <= a for a, b in zip(values, values[1:]))
    ):
        raise CascadeVError("The latent's frame times must start at 0 and increase.")
    if num_frames is not None and len(values) != num_frames + 1:
        raise CascadeVError(f"The latent has {num_frames} frames but {len(values) - 1} frame times.")
    return values


def select(times: np.ndarray | None, start: int, count: int) -> np.ndarray | None:
    """The frame times of frames [start, start + count), shifted to start at 0 (None stays None)."""
    if times is None:
        return None
    part = np.asarray(times[start : start + count + 1], dtype=np.float64)
    return part - part[0]


def average_fps(times: np.ndarray) -> float:
    """The nominal rate of variable-rate frames: frames per second over their whole duration."""
    return (len(times) - 1) / float(times[-1])
