"""Covering a long or large latent with fixed-size windows and blending what they predict.

The DiT takes windows of ``lats_per_vid`` frames and tiles of ``input_size`` latent pixels. A longer or
larger latent is covered by overlapping windows (frames: stride half a window, as the release) and
tiles (stride three quarters of a tile, as the release), the last one aligned to the end. Every
blending rule is expressed as one weight per window and position, summing to one over the windows
that cover a position, so ``sum_k weight_k * prediction_k`` is the blended prediction:

- frames, ``release_crossfade_weights``: the release's sequential cross-fade, exactly;
- tiles, ``crossfade_weights`` (default): symmetric linear ramps, normalised; or
  ``overwrite_weights`` (the release): the later tile wins where tiles overlap.
"""

from __future__ import annotations

from collections.abc import Iterator

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
                weights[k, length - overlap :] *= _ramp(overlap).flip(0)
    total = torch.zeros(max(size, length), dtype=torch.float64)
    for k, s in enumerate(starts):
        total[s : s + length] += weights[k]
    for k, s in enumerate(starts):
        weights[k] /= total[s : s + length]
    return weights.float()


def release_crossfade_weights(size: int, window: int, starts: list[int]) -> torch.Tensor:
    """The release's temporal cross-fade as per-window weights, (len(starts), window) float32.

    The release keeps a running result ``z`` and visits the windows in order. For a window starting
    at ``beg`` it takes ``overlap = end_of_previous_window - beg``; if ``overlap < 2`` it overwrites
    ``z[beg:beg+L]``, else with ``w = ones(L); w[:overlap] = linspace(0, 1, overlap)`` it sets
    ``z[beg:beg+L] = z[beg:beg+L] * (1 - w) + prediction * w``. That is linear in the predictions, so
    window k's final weight at a frame is its own ``w`` times ``(1 - w_j)`` of every later window j
    covering that frame. Where three windows cover a frame (L = 8: T = 1 mod 4, T >= 13) this differs
    from normalised symmetric ramps.
    """
    length = min(size, window)
    own = torch.ones(len(starts), length, dtype=torch.float64)  # w of each window, at its own positions
    for k in range(1, len(starts)):
        overlap = starts[k - 1] + length - starts[k]
        if overlap >= 2:
            own[k, :overlap] = torch.linspace(0.0, 1.0, overlap, dtype=torch.float64)
    # Walk the windows backwards, keeping what is left of every frame for earlier windows to fill.
    remaining = torch.ones(max(size, length), dtype=torch.float64)
    weights = torch.empty_like(own)
    for k in range(len(starts) - 1, -1, -1):
        span = slice(starts[k], starts[k] + length)
        weights[k] = own[k] * remaining[span]
        remaining[span] *= 1 - own[k]
    return weights.float()


def overwrite_weights(size: int, window: int, starts: list[int]) -> torch.Tensor:
    """Per-window weights of the release's tiles, (len(starts), window): the later window wins overlaps.

    For a 2-D grid of tiles visited in row-major order the tile written last at a pixel is the one with
    the last row start and the last column start covering it, so the product of these 1-D weights is
    exactly the release's overwrite.
    """
    length = min(size, window)
    owner = torch.full((max(size, length),), -1, dtype=torch.long)
    for k, s in enumerate(starts):
        owner[s : s + length] = k
    return torch.stack([(owner[s : s + length] == k).float() for k, s in enumerate(starts)])


def _ramp(overlap: int) -> torch.Tensor:
    # A single shared position is split evenly; otherwise the release's linspace(0, 1, overlap).
    if overlap == 1:
        return torch.full((1,), 0.5, dtype=torch.float64)
    return torch.linspace(0.0, 1.0, overlap, dtype=torch.float64)


# How overlapping tiles are combined: "blend" (this project's default) or "overwrite" (the release).
TILE_BLENDS = {"blend": crossfade_weights, "overwrite": overwrite_weights}


def default_tile_stride(tile: int) -> int:
    """Tiles overlapping by a quarter of their side: the release's 96 for its 128-latent-pixel tiles."""
    return max(1, round(tile * 0.75))


class Tiling:
    """The windows and tiles that cover a (T, H, W) latent, with their blending weights.

    ``T``, ``H`` and ``W`` must be at least ``frames`` and ``tile`` (callers pad smaller latents).
    Iterating yields ``(t0, r0, c0, weight)`` with ``weight`` of shape (frames, tile, tile). Windows
    are cross-faded as the release does (``release_crossfade_weights``); tiles are blended with
    normalised ramps (``tile_blend="blend"``) or overwritten by the later tile (``"overwrite"``, the
    release).
    """

    def __init__(
        self,
        size: tuple[int, int, int],
        frames: int,
        tile: int,
        tile_stride: int | None = None,
        tile_blend: str = "blend",
    ):
        num_frames, height, width = size
        if num_frames < frames or height < tile or width < tile:
            raise ValueError(f"latent {size} is smaller than a window of {frames} frames x {tile}^2")
        self.frames, self.tile = frames, tile
        tile_stride = tile_stride or default_tile_stride(tile)
        self.t_starts = window_starts(num_frames, frames, max(1, frames // 2))
        self.r_starts = window_starts(height, tile, tile_stride)
        self.c_starts = window_starts(width, tile, tile_stride)
        if tile_blend not in TILE_BLENDS:
            raise ValueError(f"tile_blend must be one of {', '.join(TILE_BLENDS)}, got {tile_blend!r}")
        spatial = TILE_BLENDS[tile_blend]
        self.t_weights = release_crossfade_weights(num_frames, frames, self.t_starts)
        self.r_weights = spatial(height, tile, self.r_starts)
        self.c_weights = spatial(width, tile, self.c_starts)

    def to(self, device: torch.device | str) -> "Tiling":
        """Keep the weights on ``device`` (in place; returns self): each window's weight is then made
        there, with no copy from the host and so no wait for the device's queue, per window and step."""
        self.t_weights, self.r_weights, self.c_weights = (
            w.to(device) for w in (self.t_weights, self.r_weights, self.c_weights)
        )
        return self

    def __len__(self) -> int:
        return len(self.t_starts) * len(self.r_starts) * len(self.c_starts)

    def __iter__(self) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        for t0, wt in zip(self.t_starts, self.t_weights):
            for r0, wr in zip(self.r_starts, self.r_weights):
                for c0, wc in zip(self.c_starts, self.c_weights):
                    yield t0, r0, c0, wt[:, None, None] * wr[None, :, None] * wc[None, None, :]


class SegmentStream:
    """Joins independently sampled segments of a long video into final latent frames, in order.

    ``decode`` samples segments of ``segment`` frames starting ``stride`` apart (the last aligned to the
    end); consecutive segments overlap and their latents are cross-faded there (``crossfade_weights``).
    A frame is final once no later segment covers it, so after segment k every frame before segment
    k + 1's start is final. ``add`` takes segment k's latent (n, ...) and returns the final frames not
    handed out yet, in multiples of ``chunk`` (all of them after the last segment), so the SVD decoder
    always sees full chunks; memory holds at most one segment plus one chunk.
    """

    def __init__(self, num_frames: int, segment: int, stride: int, chunk: int):
        self.num_frames, self.chunk = num_frames, chunk
        self.starts = window_starts(num_frames, segment, stride)
        self.spans = [(s, min(s + segment, num_frames)) for s in self.starts]
        self.weights = crossfade_weights(num_frames, segment, self.starts)
        self._blend = torch.empty(0)  # blended frames [done, ...): later segments may still add to them
        self._final = torch.empty(0)  # final frames not handed out yet (fewer than a chunk between calls)
        self._done = 0  # frames moved from _blend to _final so far

    def add(self, k: int, latent: torch.Tensor) -> torch.Tensor:
        s0, s1 = self.spans[k]
        # The weights of all segments covering a frame sum to 1, so accumulating each weighted segment
        # as it arrives gives the cross-fade without keeping any earlier segment around.
        weighted = latent * self.weights[k, : s1 - s0].view(-1, *([1] * (latent.dim() - 1)))
        # Invariant: _blend holds frames [_done, end of the latest segment), and _done is this segment's
        # start (everything before it was final after segment k - 1), so the overlap is _blend's head.
        shared = self._done + self._blend.shape[0] - s0  # frames of this segment already in _blend
        if shared > 0:
            self._blend[s0 - self._done :] += weighted[:shared]
            self._blend = torch.cat([self._blend, weighted[shared:]])
        else:  # the first segment (or no overlap): nothing to blend with
            self._blend = weighted
        last = k + 1 == len(self.starts)
        # Starts only grow, so no later segment reaches back before the next one's start: those frames
        # have all their contributions and will never change again.
        final = (self.num_frames if last else self.starts[k + 1]) - self._done  # frames no later segment touches
        self._final = torch.cat([self._final.to(weighted), self._blend[:final]])
        self._blend, self._done = self._blend[final:], self._done + final
        # The SVD decoder mixes frames inside each call of ``chunk`` frames. Handing out whole chunks
        # keeps the call boundaries where decoding the full latent at once would put them, so the
        # streamed video equals the unstreamed one; the remainder waits for the next segment.
        usable = self._final.shape[0] if last else self._final.shape[0] // self.chunk * self.chunk
        out, self._final = self._final[:usable], self._final[usable:]
        return out
