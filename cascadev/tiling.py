"""Covering a long or large latent with fixed-size windows and blending what they predict.

The DiT takes windows of ``lats_per_vid`` frames and tiles of ``input_size`` latent pixels. A longer or
larger latent is covered by overlapping windows (frames: stride half a window, as the release) and
tiles (stride three quarters of a tile, as the release), the last one aligned to the end. Where they
overlap, predictions are linearly cross-faded: the weights of all windows covering a position sum to
one, so ``sum_k weight_k * prediction_k`` is the blended prediction.
"""

from __future__ import annotations

import torch


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``window`` covering ``[0, size)``; ``size <= window`` gives [0]."""
    if window < 1 or stride < 1:
        raise ValueError(f"window {window} and stride {stride} must be positive")
    if size <= window:
        return [0]
    return list(range(0, size - window, stride)) + [size - window]


def crossfade_weights(size: int, window: int, starts: list[int]) -> torch.Tensor:
    """Per-window blending weights, (len(starts), window) float32, summing to 1 at every position.

    A window ramps up linearly (``linspace(0, 1, overlap)``, the release's cross-fade) over its overlap
    with the previous window and down over its overlap with the next; positions covered by several
    ramps are normalised by the total so the weights always sum to one.
    """
    length = min(size, window)
    weights = torch.ones(len(starts), length, dtype=torch.float64)
    for k in range(len(starts)):
        if k > 0:
            overlap = starts[k - 1] + length - starts[k]
            if overlap > 0:
                weights[k, :overlap] *= _ramp(overlap)
        if k + 1 < len(starts):
            overlap = starts[k] + length - starts[k + 1]
            if overlap > 0:
                weights[k, length - overlap:] *= _ramp(overlap).flip(0)
    total = torch.zeros(max(size, length), dtype=torch.float64)
    for k, s in enumerate(starts):
        total[s:s + length] += weights[k]
    for k, s in enumerate(starts):
        weights[k] /= total[s:s + length]
    return weights.float()


def _ramp(overlap: int) -> torch.Tensor:
    # A single shared position is split evenly; otherwise the release's linspace(0, 1, overlap).
    if overlap == 1:
        return torch.full((1,), 0.5, dtype=torch.float64)
    return torch.linspace(0.0, 1.0, overlap, dtype=torch.float64)


class Tiling:
    """The windows and tiles that cover a (T, H, W) latent, with their blending weights.

    ``T``, ``H`` and ``W`` must be at least ``frames`` and ``tile`` (callers pad smaller latents).
    Iterating yields ``(t0, r0, c0, weight)`` with ``weight`` of shape (frames, tile, tile).
    """

    def __init__(self, size: tuple[int, int, int], frames: int, tile: int, tile_stride: int | None = None):
        num_frames, height, width = size
        if num_frames < frames or height < tile or width < tile:
            raise ValueError(f"latent {size} is smaller than a window of {frames} frames x {tile}^2")
        self.frames, self.tile = frames, tile
        tile_stride = tile_stride or max(1, round(tile * 0.75))
        self.t_starts = window_starts(num_frames, frames, max(1, frames // 2))
        self.r_starts = window_starts(height, tile, tile_stride)
        self.c_starts = window_starts(width, tile, tile_stride)
        self.t_weights = crossfade_weights(num_frames, frames, self.t_starts)
        self.r_weights = crossfade_weights(height, tile, self.r_starts)
        self.c_weights = crossfade_weights(width, tile, self.c_starts)

    def __len__(self) -> int:
        return len(self.t_starts) * len(self.r_starts) * len(self.c_starts)

    def __iter__(self):
        for t0, wt in zip(self.t_starts, self.t_weights):
            for r0, wr in zip(self.r_starts, self.r_weights):
                for c0, wc in zip(self.c_starts, self.c_weights):
                    yield t0, r0, c0, wt[:, None, None] * wr[None, :, None] * wc[None, None, :]
