"""The DiT's condition, built one way for training and inference alike.

Frames are (N, 3, H, W) in [-1, 1] (N frames of any number of clips); every method keeps the tensors on
``device`` and returns float32.

    semantic (release, 20 DiT input channels):
        frames (N, 3, H, W) -> compressor -> (N, 16, H/32, W/32)
    resize (paper Fig. 4b, 8 DiT input channels):
        frames (N, 3, H, W) -> low_res: x1/4 -> (N, 3, H/4, W/4) -> SVD-VAE posterior mean -> (N, 4, H/32, W/32)
    both:
        latent (N, C, h, w) -> upsample: bilinear x sr_scale, times scale_factor -> (N, C, 4h, 4w) = DiT condition

The resize variant's low-resolution frames come from one filter, antialiased bicubic clamped to
[-1, 1], in training (the clip shrunk x4) and in ``upscale`` (the input brought to a quarter of the
target size), so a model never meets a different filter at sampling time than in training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import CascadeVError
from .frames import resize, round_half_up


@dataclass(frozen=True)
class ConditionKind:
    """One kind of condition: its latent's channels and the frozen network that encodes frames to it."""

    channels: int  # the DiT takes 4 (noisy SVD latent) + channels input channels
    encoder: str  # "compressor" or "vae", as build_pipeline names its parts


# The one table of condition kinds; every other module asks the functions below, never the names.
KINDS = {"semantic": ConditionKind(16, "compressor"), "resize": ConditionKind(4, "vae")}
# DiT condition channels -> the kind of condition.
CONDITION_KINDS = {kind.channels: name for name, kind in KINDS.items()}
DEFAULT_KIND = "semantic"  # the release's
# PixArt-Σ's SDXL latent scale, kept by the release for both the SVD latent and the condition.
SCALE_FACTOR = 0.13025
VAE_STRIDE = 8  # pixels per SVD-VAE latent position
COMPRESSOR_STRIDE = 32  # pixels per semantic-latent position: the EfficientNet compressor's 1/32


def check_kind(kind: str) -> str:
    """``kind`` if it is a condition kind, else one line naming the config key."""
    if kind not in KINDS:
        raise CascadeVError(f"unknown condition {kind!r} in the config; choose {' or '.join(KINDS)}")
    return kind


def condition_kind(cfg: Mapping[str, Any]) -> str:
    """The kind a config's model is trained with: its ``condition`` key, ``semantic`` when absent."""
    return check_kind(cfg.get("condition", DEFAULT_KIND))


def dit_in_channels(kind: str) -> int:
    """The DiT's input channels for ``kind``: 4 noisy-latent channels plus the condition's."""
    return 4 + KINDS[check_kind(kind)].channels


def kind_of_dit(in_channels: int) -> str:
    """The condition kind a DiT with ``in_channels`` input channels takes."""
    kind = CONDITION_KINDS.get(in_channels - 4)
    if kind is None:
        expected = " or ".join(f"{4 + c} ({name})" for c, name in CONDITION_KINDS.items())
        raise CascadeVError(f"the DiT takes {in_channels} input channels; expected {expected}")
    return kind


def dit_spec(cfg: Mapping[str, Any]) -> dict:
    """The config's ``model`` with the input channels of its condition kind. A ``model.in_channels`` that
    disagrees (configs derived from or dumped with an older shipped config carry 20) is replaced, with a
    one-line warning rather than silently."""
    kind = condition_kind(cfg)
    channels = dit_in_channels(kind)
    given = cfg["model"].get("in_channels", channels)
    if given != channels:
        warnings.warn(
            f"config key model.in_channels={given} is replaced by {channels}: condition={kind!r} sets the DiT's "
            "input channels (drop the key to silence this)",
            stacklevel=1,  # this module's line: cascadev's one-line warning format
        )
    return dict(cfg["model"], in_channels=channels)


def with_encoder(kind: str, parts: Sequence[str]) -> list[str]:
    """``parts`` with the frozen network that encodes ``kind``'s condition added (after the first), once."""
    encoder = KINDS[check_kind(kind)].encoder
    return list(dict.fromkeys([*parts[:1], encoder, *parts[1:]]))


def resize_for_encoding(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Frames (N, 3, H, W) -> (N, 3, *size): the filter of the resize condition's x1/4, in training and
    sampling alike, and of ``upscale``'s input brought to the target size. (A video prepared for
    ``encode`` / ``recon`` at ``--size``, like a training clip, is resized by
    :func:`cascadev.frames.resize_short_side` instead: bilinear, antialiased.)

    Bicubic keeps enlarged edges sharper than bilinear; antialiasing acts only when a side shrinks; the
    clamp removes bicubic's overshoot. Same size: returned unchanged.
    """
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return resize(frames, size, "bicubic", antialias=True).clamp_(-1.0, 1.0)


class Conditioner:
    """Chunked frozen encoders (compressor, SVD VAE encoder) and the x4 upsampling of their latents."""

    def __init__(
        self,
        compressor: nn.Module | None = None,
        vae: nn.Module | None = None,
        *,
        kind: str = DEFAULT_KIND,
        scale_factor: float = SCALE_FACTOR,
        sr_scale: int = 4,
        chunk: int = 4,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.compressor, self.vae, self.kind = compressor, vae, check_kind(kind)
        self.scale_factor, self.sr_scale, self.chunk = scale_factor, sr_scale, chunk
        self.device, self.dtype = torch.device(device), dtype

    def chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
        """``fn`` over frames (N, ...) in chunks of ``chunk`` moved to ``device`` in ``dtype``; float32 results
        concatenated on the device ``fn`` leaves them on. Bounded memory: a network sees ``chunk`` frames at a
        time, whatever N is."""
        return torch.cat(
            [
                fn(frames[i : i + self.chunk].to(self.device, self.dtype)).float()
                for i in range(0, frames.shape[0], self.chunk)
            ]
        )

    @torch.no_grad()
    def semantic(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W), H and W multiples of 32 -> semantic latent (N, 16, H/32, W/32)."""
        return self.chunked(self.compressor.encode_frames, frames)

    @torch.no_grad()
    def posterior(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (N, 3, H, W) -> the SVD-VAE posterior's (mean, std), each (N, 4, H/8, W/8), unscaled."""
        stats = self.chunked(lambda x: torch.cat([(d := self.vae.encode(x).latent_dist).mean, d.std], 1), frames)
        return stats[:, :4], stats[:, 4:]

    @torch.no_grad()
    def resized(self, low: torch.Tensor) -> torch.Tensor:
        """Low-resolution frames (N, 3, H/4, W/4) -> the resize condition's latent (N, 4, H/32, W/32)."""
        return self.posterior(low)[0]  # the posterior's mean (= its mode)

    @property
    def encoder(self) -> str:
        """The frozen network this kind's condition is encoded with: "compressor" or "vae"."""
        return KINDS[self.kind].encoder

    def input_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The encoder's input (h, w) for output frames of ``size``: the same (compressor), or a quarter
        (``sr_scale``; the resize condition's low resolution), rounded half up, at least 1."""
        if self.encoder == "compressor":
            return tuple(size)
        return tuple(max(1, round_half_up(s / self.sr_scale)) for s in size)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, h, w) already at :meth:`input_size` -> this kind's condition latent (N, C, H/32, W/32)."""
        return self.semantic(frames) if self.encoder == "compressor" else self.resized(frames)

    def latent(self, frames: torch.Tensor) -> torch.Tensor:
        """Full-size frames (N, 3, H, W) -> this kind's condition latent (N, C, H/32, W/32)."""
        return self.encode(resize_for_encoding(frames, self.input_size(tuple(frames.shape[-2:]))))

    def upsample(self, latent: torch.Tensor) -> torch.Tensor:
        """Condition latent (N, C, h, w) -> DiT condition (N, C, sr*h, sr*w): bilinear, times scale_factor."""
        h, w = latent.shape[-2:]
        up = resize(latent.to(self.device, torch.float32), (h * self.sr_scale, w * self.sr_scale), "bilinear")
        return up * self.scale_factor
