"""Presets: this project's improved defaults, or the release's recon reproduced step by step.

``--preset release`` (``encode``, ``decode``, ``recon``) does what the release's recon.sh does wherever
the release can run (square clips, whole clips in memory):

1. centre square crop;
2. a 3x3 box blur (``cv2.blur``), then a uint8 bilinear resize (``cv2.INTER_LINEAR``) to the size;
3. DiT sampling with the timesteps rounded to fp16, the release's temporal cross-fade (also the
   default), tiles overwritten by the later one, PixArt's DPM-Solver++ for ``dpm_solver``, the
   whole clip at once (``segment_frames=0``), and on CUDA the release's precision: fp16 weights under
   fp16 autocast with the attention product in fp32;
4. SVD decoding in chunks of 4 frames (5 for a 25-frame clip);
5. quantisation by truncation, ``(127.5 * x + 127.5).clamp(0, 255).to(uint8)``.

The noise stays this project's (per-frame generators seeded by (seed, frame)): the release draws it
from one global CUDA generator, which a CPU generator cannot reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_NOTE = (
    "release preset: noise comes from cascadev's per-frame generators, not the release's global CUDA RNG, "
    "so samples match the release's only given the same initial latents"
)


@dataclass(frozen=True)
class Preset:
    """What differs between the project's defaults and the release (README: "Default vs release")."""

    name: str
    square_crop: bool = False  # centre square crop before resizing
    blur_resize: bool = False  # 3x3 box blur + OpenCV uint8 bilinear resize, instead of antialiased bilinear
    round_timesteps: bool = False  # timesteps through float16 before the DiT
    tile_blend: str = "blend"  # "blend" overlapping tiles, or "overwrite" them with the later tile
    pixart_dpm_solver: bool = False  # dpm_solver = PixArt's DPM-Solver++ instead of diffusers'
    whole_clip: bool = False  # sample all frames at once (segment_frames = 0)
    release_vae_chunks: bool = False  # 4 frames per SVD decoder call, 5 for 25-frame clips
    truncate: bool = False  # quantise by truncation instead of rounding
    fp32_attention: bool = False  # attention product in fp32 (on CUDA with fp16)

    def scheduler(self, name: str) -> str:
        """The scheduler that runs for the user's ``name``: PixArt's own DPM-Solver where the preset asks."""
        return "dpm_solver_pixart" if self.pixart_dpm_solver and name == "dpm_solver" else name

    def preprocess(self, frames: np.ndarray, size: int | None) -> tuple[np.ndarray, int | None]:
        """uint8 (T, H, W, 3) -> (frames, size left to resize to): the release's square crop and its
        OpenCV blur and resize in uint8 where this preset asks for them (``size`` is then done, None)."""
        if self.square_crop:
            frames = center_square(frames)
        if self.blur_resize:
            frames, size = blur_resize(frames, size), None
        return frames, size

    def vae_chunk(self, num_frames: int, default: int | None) -> int | None:
        """Frames per SVD-decoder call for a video of ``num_frames``: the release's (5 for a 25-frame
        clip, else 4) where the preset asks, else ``default``."""
        if not self.release_vae_chunks:
            return default
        return 5 if num_frames == 25 else 4


PRESETS = {
    "default": Preset("default"),
    "release": Preset(
        "release",
        square_crop=True,
        blur_resize=True,
        round_timesteps=True,
        tile_blend="overwrite",
        pixart_dpm_solver=True,
        whole_clip=True,
        release_vae_chunks=True,
        truncate=True,
        fp32_attention=True,
    ),
}


def center_square(frames: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) -> (n, S, S, 3), S = min(H, W), the centre (torchvision's rounding)."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return frames[:, top : top + s, left : left + s]


def blur_resize(frames: np.ndarray, size: int | None) -> np.ndarray:
    """The release's preprocessing of uint8 (n, H, W, 3) frames: 3x3 box blur, then bilinear resize
    so the short side is ``size`` (long side ``round(long * size / short)``, Python's round), in uint8."""
    import cv2

    h, w = frames.shape[1:3]
    if size is None:
        size = min(h, w)
    if h <= w:
        new_h, new_w = size, round(w * size / h)
    else:
        new_h, new_w = round(h * size / w), size
    return np.stack([cv2.resize(cv2.blur(f, (3, 3)), (new_w, new_h), interpolation=cv2.INTER_LINEAR) for f in frames])
