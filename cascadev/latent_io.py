"""The compressed-latent file: one safetensors tensor ``latent`` of shape (C, T, h, w).

C is 16 for the semantic compressor, T the number of video frames (one latent per frame) and
(h, w) = (H/32, W/32) of the padded frames. ``__metadata__`` records what is needed to decode the
latent back to a video of the right size and speed (:class:`LatentMeta`).

Files are written and read in frame ranges so a long video never needs its whole latent in memory:
:class:`LatentWriter` writes the safetensors header itself, preallocates the data region and fills it
chunk by chunk (in any order); :class:`LatentReader` reads frame ranges lazily through
``safe_open(...).get_slice``. The result is an ordinary safetensors file that
``safetensors.torch.load_file`` loads whole.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cascadev import frame_times as times_io
from cascadev.atomic import AtomicWriter, check_output_path, commit, remove_quietly, temp_path, write_error
from cascadev.conditioning import COMPRESSOR_STRIDE
from cascadev.errors import CascadeVError
from cascadev.rules import MAX_FPS

__all__ = [
    "LATENT_CHANNELS",
    "LATENT_KEY",
    "LatentMeta",
    "LatentReader",
    "LatentWriter",
    "load_latent",
    "save_latent",
]

LATENT_KEY = "latent"
LATENT_CHANNELS = 16
LATENT_STRIDE = COMPRESSOR_STRIDE  # pixels per latent position: the compressor's 1/32 (the resize variant's 1/4 x 1/8)

# Metadata keys (safetensors stores every value as a string; these are parsed back to numbers).
KEY_FPS = "fps"
KEY_HEIGHT = "height"  # frame content size in pixels, before padding to a multiple of 32
KEY_WIDTH = "width"
KEY_SOURCE_HEIGHT = "source_height"  # size of the video file the frames came from
KEY_SOURCE_WIDTH = "source_width"
KEY_START = "start"  # index of the first encoded frame in the source video
KEY_NUM_FRAMES = "num_frames"  # always the latent's T
KEY_FRAME_TIMES = "frame_times"  # variable frame rate only: JSON list of T + 1 times (cascadev.frame_times)
KEY_FORMAT = "cascadev_latent_version"
FORMAT_VERSION = "1"

FLOAT_KEYS = frozenset({KEY_FPS})
INT_KEYS = frozenset({KEY_HEIGHT, KEY_WIDTH, KEY_SOURCE_HEIGHT, KEY_SOURCE_WIDTH, KEY_START, KEY_NUM_FRAMES})

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
# What a latent file may hold: floating-point values of sane size. The semantic compressor's output is
# batch-normalised (|x| of a few units); anything beyond MAX_ABS is not a latent but damage.
_READABLE_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
MAX_ABS = 1e4
# Safetensors data is little-endian; writing raw tensor bytes is only right on such hosts.
if sys.byteorder != "little":  # pragma: no cover
    raise ImportError("cascadev.latent_io writes raw little-endian bytes and needs a little-endian host")


@dataclass(frozen=True)
class LatentMeta:
    """What a latent file says about the video it encodes.

    ``height``/``width``: the content size in pixels the latent decodes to (crop the decoded, padded
    frames to it). ``source_height``/``source_width``: the input video's size before any resizing.
    ``start``: the first encoded frame's index in the input video. ``fps``: frames per second.
    ``frame_times``: for variable-frame-rate input, each frame's start and the last one's end in seconds
    (T + 1 values); None for constant-rate video.
    """

    fps: float
    height: int
    width: int
    source_height: int
    source_width: int
    start: int = 0
    frame_times: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and 0 < self.fps <= MAX_FPS):
            raise CascadeVError(f"The latent's frame rate must be positive and at most {MAX_FPS}, got {self.fps}.")
        for key in (KEY_HEIGHT, KEY_WIDTH, KEY_SOURCE_HEIGHT, KEY_SOURCE_WIDTH):
            if getattr(self, key) < 1:
                raise CascadeVError(f"The latent's {key} must be at least 1, got {getattr(self, key)}.")
        if self.start < 0:
            raise CascadeVError(f"The latent's start frame must be 0 or more, got {self.start}.")

    def to_dict(self) -> dict[str, float | int | str]:
        data = asdict(self)
        times = data.pop(KEY_FRAME_TIMES)
        if times is not None:
            data[KEY_FRAME_TIMES] = times_io.dumps(times)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatentMeta:
        """Build from metadata whose values may still be strings (as stored in the file)."""
        missing = [k for k in (KEY_FPS, KEY_HEIGHT, KEY_WIDTH, KEY_SOURCE_HEIGHT, KEY_SOURCE_WIDTH) if k not in data]
        if missing:
            raise CascadeVError(f"The latent metadata lacks {', '.join(missing)}.")
        values = {
            k: _parse_value(k, data[k]) for k in (KEY_FPS, KEY_HEIGHT, KEY_WIDTH, KEY_SOURCE_HEIGHT, KEY_SOURCE_WIDTH)
        }
        values[KEY_START] = _parse_value(KEY_START, data.get(KEY_START, 0))
        if data.get(KEY_FRAME_TIMES) is not None:
            count = data.get(KEY_NUM_FRAMES)
            values[KEY_FRAME_TIMES] = times_io.loads(str(data[KEY_FRAME_TIMES]), None if count is None else int(count))
        return cls(**values)


def _parse_value(key: str, value: Any) -> Any:
    """Convert a stored metadata value back to the type of its key (float, int, or str)."""
    try:
        if key in FLOAT_KEYS:
            return float(value)
        if key in INT_KEYS:
            number = float(value)
            if number != int(number):
                raise ValueError(value)
            return int(number)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CascadeVError(f"The latent metadata value {key}={value!r} is not a number.") from exc
    return str(value)


def _metadata_strings(metadata: LatentMeta | dict[str, Any] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if isinstance(metadata, LatentMeta):
        metadata = metadata.to_dict()
    if not isinstance(metadata, dict):
        raise TypeError(f"latent metadata must be a LatentMeta or a dict, got {type(metadata).__name__}")
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"latent metadata keys must be strings, got {key!r}")
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"latent metadata value for {key!r} must be str, int or float, got {type(value).__name__}")
        out[key] = str(value)  # str() of a float round-trips exactly
    return out


class LatentWriter(AtomicWriter):
    """Writes a latent ``(C, T, h, w)`` to a safetensors file in frame chunks, in any order.

    Use as a context manager::

        with LatentWriter(path, (16, T, h, w), meta) as writer:
            writer.write(t0, chunk)  # chunk: (16, n, h, w), frames t0 .. t0+n-1

    The file is written under a temporary name beside ``path``; :meth:`close` checks that every frame
    was written and renames it into place. An exception inside the ``with`` block removes the
    temporary file and leaves ``path`` untouched. ``metadata`` values are stored as strings;
    ``num_frames`` (= T) and a format version are added.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, int, int, int],
        metadata: LatentMeta | dict[str, Any] | None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.path = Path(path)
        check_output_path(self.path, "latent file")
        if self.path.suffix.lower() != ".safetensors":  # e.g. `encode -o clip.mp4`: a latent under a video's name
            raise CascadeVError(f"Cannot write {self.path}: a latent file's name must end in .safetensors.")
        if len(shape) != 4 or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"latent shape must be four positive sizes (C, T, h, w), got {tuple(shape)}")
        if dtype not in _DTYPES:
            raise ValueError(f"latent dtype must be one of {list(_DTYPES)}, got {dtype}")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        channels, frames, height, width = self.shape
        meta = _metadata_strings(metadata)
        if KEY_NUM_FRAMES in meta and meta[KEY_NUM_FRAMES] != str(frames):
            raise ValueError(f"metadata num_frames={meta[KEY_NUM_FRAMES]} disagrees with the latent's {frames} frames")
        meta[KEY_NUM_FRAMES] = str(frames)
        meta.setdefault(KEY_FORMAT, FORMAT_VERSION)

        self._itemsize = torch.empty((), dtype=dtype).element_size()
        self._plane = height * width  # values per (channel, frame)
        nbytes = channels * frames * self._plane * self._itemsize
        header = {
            "__metadata__": meta,
            LATENT_KEY: {
                "dtype": _DTYPES[dtype],
                "shape": list(self.shape),
                "data_offsets": [0, nbytes],
            },
        }
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        # The spec allows trailing spaces after the JSON; they keep the data 8-byte aligned.
        blob += b" " * (-len(blob) % 8)
        self._data_start = 8 + len(blob)
        self._written = np.zeros(frames, dtype=bool)
        self._tmp: Path | None = None
        self._closed = False
        try:
            self._tmp = temp_path(self.path)
            self._file = open(self._tmp, "r+b")
            self._file.write(struct.pack("<Q", len(blob)))
            self._file.write(blob)
            # Reserve the whole data region now (sparse where the file system allows) so chunks can be
            # written at their offsets in any order.
            self._file.truncate(self._data_start + nbytes)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from exc

    def write(self, t0: int, chunk: torch.Tensor) -> None:
        """Store frames ``t0 .. t0 + n - 1`` from ``chunk`` (C, n, h, w); any float dtype, any device."""
        if self._closed:
            raise CascadeVError(f"Cannot write more frames to {self.path}: it is already closed.")
        channels, frames, height, width = self.shape
        if (
            not isinstance(chunk, torch.Tensor)
            or chunk.ndim != 4
            or chunk.shape[0] != channels
            or tuple(chunk.shape[2:]) != (height, width)
        ):
            got = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
            raise ValueError(f"latent chunk must be ({channels}, n, {height}, {width}), got {got}")
        n = int(chunk.shape[1])
        if t0 < 0 or t0 + n > frames:
            raise ValueError(f"latent chunk covers frames {t0}..{t0 + n - 1}, outside 0..{frames - 1}")
        if n == 0:
            return
        if not chunk.is_floating_point():
            raise ValueError(f"latent chunk must hold floating-point values, got {chunk.dtype}")
        problem = _value_problem(chunk.detach(), t0)  # what a reader would refuse is not written
        if problem is not None:
            raise CascadeVError(f"Cannot write {self.path}: the latent has {problem}.")
        data = chunk.detach().to(device="cpu", dtype=self.dtype).contiguous()
        # One contiguous byte run per channel: frames t0..t0+n-1 of channel c are adjacent on disk.
        raw = data.view(torch.uint8).numpy().reshape(channels, -1)
        try:
            for c in range(channels):
                self._file.seek(self._data_start + ((c * frames + t0) * self._plane) * self._itemsize)
                self._file.write(raw[c].data)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from exc
        self._written[t0 : t0 + n] = True

    def close(self) -> None:
        """Check that every frame was written and move the file into place."""
        if self._closed:
            return
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise CascadeVError(
                f"{self.path} was not saved: {missing.size} of {self.shape[1]} latent frames "
                f"(first: frame {int(missing[0])}) were never written."
            )
        try:
            self._file.close()
            commit(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc) from exc
        self._tmp = None
        self._closed = True

    def abort(self) -> None:
        """Stop without producing ``path``; the temporary file is removed."""
        self._closed = True
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()
        if self._tmp is not None:
            remove_quietly(self._tmp)
            self._tmp = None


class LatentReader:
    """Lazy frame-range access to a latent file written by :class:`LatentWriter` (or any safetensors file
    with a 4-D ``latent`` tensor).

    ``channels`` is the channel count to insist on (16 for the semantic latent; None accepts any).
    """

    def __init__(self, path: str | os.PathLike[str], channels: int | None = LATENT_CHANNELS) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.exists():
            raise CascadeVError(f"The latent file {self.path} does not exist.")
        if not self.path.is_file():
            raise CascadeVError(f"The latent file {self.path} is not a file.")
        try:
            self._file = safe_open(str(self.path), framework="pt")
            keys = list(self._file.keys())
            raw_meta = self._file.metadata() or {}
        except Exception as exc:  # safetensors raises SafetensorError / OSError for anything malformed
            raise CascadeVError(f"{self.path} is not a readable latent file (not valid safetensors).") from exc
        if LATENT_KEY not in keys:
            raise CascadeVError(f"{self.path} holds no '{LATENT_KEY}' tensor; is it a CascadeV latent file?")
        self._slice = self._file.get_slice(LATENT_KEY)
        dtype = str(self._slice.get_dtype())
        if dtype not in _READABLE_DTYPES:
            raise CascadeVError(
                f"The latent in {self.path} holds {dtype} values; a latent is floating point (F32, F16, BF16 or F64)."
            )
        shape = tuple(int(s) for s in self._slice.get_shape())
        if len(shape) != 4:
            raise CascadeVError(f"The latent in {self.path} has shape {shape}; expected (C, T, h, w).")
        if channels is not None and shape[0] != channels:
            raise CascadeVError(f"The latent in {self.path} has {shape[0]} channels; expected {channels}.")
        if min(shape) < 1:
            raise CascadeVError(f"The latent in {self.path} is empty (shape {shape}).")
        self.shape: tuple[int, int, int, int] = shape  # type: ignore[assignment]
        try:
            meta = {key: _parse_value(key, value) for key, value in raw_meta.items()}
        except CascadeVError as exc:
            raise CascadeVError(f"{self.path}: {exc}") from exc
        meta.setdefault(KEY_NUM_FRAMES, shape[1])
        version = meta.get(KEY_FORMAT, FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise CascadeVError(
                f"{self.path} is a latent file of format {version!r}; this cascadev reads format {FORMAT_VERSION}."
            )
        self.metadata: dict[str, Any] = meta

    @property
    def num_frames(self) -> int:
        return self.shape[1]

    @property
    def meta(self) -> LatentMeta:
        """The metadata as a :class:`LatentMeta`; raises if the file lacks the required keys, or if its
        frame size is larger than the latent decodes to (``LATENT_STRIDE`` pixels per position)."""
        try:
            meta = LatentMeta.from_dict(self.metadata)
        except CascadeVError as exc:
            raise CascadeVError(f"{self.path}: {exc}") from exc
        h, w = self.shape[2:]
        if meta.height > LATENT_STRIDE * h or meta.width > LATENT_STRIDE * w:
            raise CascadeVError(
                f"{self.path}: its metadata says {meta.width}x{meta.height} pixels, more than its {w}x{h} latent "
                f"decodes to ({LATENT_STRIDE * w}x{LATENT_STRIDE * h})."
            )
        return meta

    def read(self, t0: int, t1: int) -> torch.Tensor:
        """Frames ``t0 .. t1 - 1`` as float32 (C, t1 - t0, h, w); only those bytes are read.

        Each range is checked as it is read (NaN, Inf, or magnitudes above ``MAX_ABS`` are refused), so a
        damaged file stops a decode before its video is finished.
        """
        if not 0 <= t0 < t1 <= self.shape[1]:
            raise CascadeVError(
                f"{self.path} holds latent frames 0..{self.shape[1] - 1}; frames {t0}..{t1 - 1} were asked for."
            )
        try:
            chunk = self._slice[:, t0:t1]
        except Exception as exc:
            raise CascadeVError(f"{self.path} is not a readable latent file (reading frames failed).") from exc
        _check_values(chunk, self.path, t0)
        return chunk.to(torch.float32)

    def close(self) -> None:
        self._slice = None
        self._file = None

    def __enter__(self) -> LatentReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _value_problem(chunk: torch.Tensor, t0: int) -> str | None:
    """What makes latent frames ``t0 ..`` (C, n, h, w) no latent: non-finite or absurdly large values; or None."""
    bad = ~torch.isfinite(chunk)
    what = "a non-finite value (NaN or Inf)"
    if not bad.any():
        bad = chunk.abs() > MAX_ABS
        what = f"a value beyond +-{MAX_ABS:g}"
        if not bad.any():
            return None
    return f"{what} in frame {t0 + int(bad.any(dim=(0, 2, 3)).nonzero()[0])}"


def _check_values(chunk: torch.Tensor, path: Path, t0: int) -> None:
    """Refuse, on reading, latent frames ``t0 ..`` (C, n, h, w) that hold no latent."""
    problem = _value_problem(chunk, t0)
    if problem is not None:
        raise CascadeVError(f"The latent in {path} has {problem}; it is not a CascadeV latent (damaged?).")


def save_latent(
    path: str | os.PathLike[str],
    latent: torch.Tensor,
    metadata: LatentMeta | dict[str, Any] | None,
) -> None:
    """Write a whole latent (C, T, h, w) at once; half-precision latents keep their dtype."""
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        raise ValueError(f"save_latent needs a (C, T, h, w) tensor, got {getattr(latent, 'shape', type(latent))}")
    dtype = latent.dtype if latent.dtype in _DTYPES else torch.float32
    with LatentWriter(path, tuple(latent.shape), metadata, dtype=dtype) as writer:  # type: ignore[arg-type]
        writer.write(0, latent)


def load_latent(
    path: str | os.PathLike[str], channels: int | None = LATENT_CHANNELS
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a whole latent file: float32 (C, T, h, w) and its parsed metadata."""
    with LatentReader(path, channels=channels) as reader:
        return reader.read(0, reader.num_frames), dict(reader.metadata)
