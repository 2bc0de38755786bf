"""Frames: the one layout of a video in memory, and every pixel-level helper.

The convention, everywhere in cascadev:

* a video in memory is a float tensor ``(T, 3, H, W)`` in [-1, 1] (RGB; one frame per leading index,
  so any per-frame operation sees ordinary image batches);
* uint8 ``(T, H, W, 3)`` RGB in [0, 255] exists only at the file edge: what decoders return, what
  encoders, PNG files and the evaluation metrics take (:func:`from_uint8`, :func:`to_uint8`);
* the layout changes in two places only: at the DiT's input ``(B, C, T, H, W)`` (pipeline and
  training targets) and at the latent file ``(C, T, h, w)`` (``CascadeVPipeline.encode`` / ``condition``).

Lines elsewhere that change a shape say so in a comment. The helpers work on any leading dimensions
``(..., H, W)`` where that is natural, so a latent ``(T, C, h, w)`` is padded like a frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CascadeVError

# --------------------------------------------------------------------------------------------
# Value ranges: uint8 (T, H, W, 3) at the file edge <-> float (T, 3, H, W)
# --------------------------------------------------------------------------------------------


def _uint8_as_float(video: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W), still on the 0-255 scale."""
    x = torch.as_tensor(np.ascontiguousarray(video) if isinstance(video, np.ndarray) else video)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} needs uint8 (T, H, W, 3) frames, got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).contiguous().to(torch.float32)  # (T, H, W, 3) -> (T, 3, H, W)


def _float_as_uint8(x: torch.Tensor) -> np.ndarray:
    """Float (T, 3, H, W) on the 0-255 scale -> uint8 (T, H, W, 3): clamped, then rounded."""
    x = x.clamp(0.0, 255.0).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # (T, 3, H, W) -> (T, H, W, 3)


def from_uint8(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``(T, H, W, 3)`` in [0, 255] -> float32 frames ``(T, 3, H, W)`` in [-1, 1]."""
    return _uint8_as_float(video, "from_uint8").div_(127.5).sub_(1.0)


def to_uint8(frames: torch.Tensor, truncate: bool = False) -> np.ndarray:
    """Quantise frames ``(T, 3, H, W)`` in [-1, 1] -> uint8 numpy ``(T, H, W, 3)``.

    Clamped, then rounded to the nearest level; ``truncate`` quantises as the release does,
    ``(127.5 * x + 127.5).clamp(0, 255).to(uint8)`` (always rounding down).
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"to_uint8 needs (T, 3, H, W) frames, got shape {tuple(frames.shape)}")
    x = frames.detach().to(device="cpu", dtype=torch.float32)
    if truncate:
        # Kept as the release writes it: 127.5 * x + 127.5 and (x + 1) * 127.5 differ in the last bit,
        # and truncation turns that bit into a whole level (the fidelity goldens check it).
        x = (127.5 * x + 127.5).clamp(0, 255).to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous().numpy()  # (T, 3, H, W) -> (T, H, W, 3)
    return _float_as_uint8(x.clamp(-1.0, 1.0).add(1.0).mul_(127.5))


def crop(frames: torch.Tensor, height: int, width: int, corner: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """A ``height`` x ``width`` window of ``(..., H, W)``; by default the top-left one (undoes :func:`pad_to`).

    ``corner`` places the window: the fractions of the free room above and left of it, rounded down;
    (0.5, 0.5) is the centre crop, (0, 0) crops padding back off.
    """
    h, w = frames.shape[-2:]
    top, left = int((h - height) * corner[0]), int((w - width) * corner[1])
    return frames[..., top : top + height, left : left + width]


def frames_to_uint8(frames: torch.Tensor, height: int, width: int, truncate: bool = False) -> np.ndarray:
    """Frames ``(T, 3, H, W)`` in [-1, 1], padded -> uint8 ``(T, height, width, 3)``: cropped back, quantised."""
    return to_uint8(crop(frames, height, width), truncate)


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------


def round_half_up(x: float) -> int:
    """``x`` to the nearest whole number, halves up (Python's ``round`` takes halves to even): sizes."""
    return int(math.floor(x + 0.5))


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The (H, W) with short side ``size`` and the aspect ratio of (height, width); the long side is
    rounded half up and at least 1. (The release preset's uint8 resize, ``presets.blur_resize``, rounds
    half to even, as the release does.)"""
    if height <= width:
        return int(size), max(1, round_half_up(width * size / height))
    return max(1, round_half_up(height * size / width)), int(size)


def resize(
    frames: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False
) -> torch.Tensor:
    """Resize float ``(..., H, W)`` to ``size`` (H', W') with ``torch.nn.functional.interpolate``.

    Four-dimensional input goes to interpolate as it is; other leading dimensions are folded into the
    channels of one image, so every leading index stays an independent image. float16/bfloat16 are
    computed in float32 (CPU interpolation lacks them) and returned in their own dtype. Values keep
    their scale: bilinear does not overshoot, bicubic may (callers that need a range clamp).
    """
    if not frames.is_floating_point():
        raise TypeError(f"resize needs a float tensor, got {frames.dtype}")
    if frames.ndim < 2:
        raise ValueError(f"resize needs (..., H, W) frames, got shape {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    lead = frames.shape[:-2]
    # Non-antialiased bilinear takes a different (not bit-identical) CPU path for a folded batch, so a
    # (T, C, H, W) tensor is never reshaped: results match calling interpolate directly.
    flat = frames if frames.ndim == 4 else frames.reshape(1, -1, h, w)
    work_dtype = torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype
    align = {} if mode in ("nearest", "nearest-exact", "area") else {"align_corners": False}
    out = F.interpolate(flat.to(work_dtype), size=tuple(size), mode=mode, antialias=antialias, **align)
    return out.to(frames.dtype).reshape(*lead, *out.shape[-2:])


def resize_short_side(frames: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize float frames ``(..., H, W)`` so that ``min(H, W) == size``.

    The aspect ratio is kept (the long side is rounded to the nearest integer); bilinear filtering
    with antialiasing, so downscaling does not alias. ``size=None`` returns ``frames`` unchanged.
    Values keep their range (bilinear interpolation does not overshoot).
    """
    if size is None:
        return frames
    if int(size) != size or size < 1:
        raise CascadeVError(f"The resize option must be a positive whole number of pixels, got {size}.")
    if not frames.is_floating_point():
        raise TypeError(f"resize_short_side needs a float tensor, got {frames.dtype}")
    if frames.ndim < 2:
        raise ValueError(f"resize_short_side needs (..., H, W) frames, got shape {tuple(frames.shape)}")
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    return resize(frames, short_side_size(h, w, int(size)), "bilinear", antialias=True)


def resize_uint8(
    video: np.ndarray, height: int, width: int, mode: str = "bilinear", antialias: bool = True
) -> np.ndarray:
    """uint8 ``(T, h, w, 3)`` -> uint8 ``(T, height, width, 3)``, filtered on the 0-255 scale and rounded.

    The evaluation's resampling of a reconstruction to the reference's size (bilinear, antialiased):
    working on 0-255 rather than [-1, 1] keeps its numbers exactly those it has always given.
    """
    if video.shape[1:3] == (height, width):
        return video
    return _float_as_uint8(resize(_uint8_as_float(video, "resize_uint8"), (height, width), mode, antialias))


def bicubic_round_trip(video: np.ndarray, low: tuple[int, int]) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: bicubic down to ``low`` (antialiased), bicubic back up, rounded once.

    The classic super-resolution baseline; both steps stay on the 0-255 float scale, so the low
    resolution frames are never quantised.
    """
    height, width = video.shape[1:3]
    small = resize(_uint8_as_float(video, "bicubic_round_trip"), low, "bicubic", antialias=True)
    return _float_as_uint8(resize(small, (height, width), "bicubic"))


# --------------------------------------------------------------------------------------------
# Padding and cropping
# --------------------------------------------------------------------------------------------


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``multiple``."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_to(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``(..., H, W)`` at the bottom and right to ``height`` x ``width``, repeating the edge pixels.

    Sides already that large are left alone; :func:`crop` undoes it.
    """
    h, w = int(frames.shape[-2]), int(frames.shape[-1])
    pad_h, pad_w = max(0, height - h), max(0, width - w)
    if pad_h == 0 and pad_w == 0:
        return frames
    lead = frames.shape[:-2]
    # Replicate padding wants (N, C, H, W); leading dims become channels (padding copies pixels, so
    # the fold cannot change a value).
    flat = frames.reshape(1, -1, h, w)
    padded = F.pad(flat, (0, pad_w, 0, pad_h), mode="replicate")
    return padded.reshape(*lead, h + pad_h, w + pad_w)


def pad_to_multiple(frames: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``(..., H, W)`` at the bottom and right, repeating the edge pixels, to multiples of ``multiple``.

    Returns ``(padded, (H, W))``; ``crop(padded, H, W)`` is the input again.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    if frames.ndim < 2:
        raise ValueError(f"pad_to_multiple needs (..., H, W) frames, got shape {tuple(frames.shape)}")
    h, w = int(frames.shape[-2]), int(frames.shape[-1])
    return pad_to(frames, *padded_size(h, w, multiple)), (h, w)
