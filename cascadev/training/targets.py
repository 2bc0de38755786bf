"""What the DiT learns from a clip: the SVD latent (target) and its condition, from frozen encoders.

For a clip (B, T, 3, S, S) in [-1, 1] (frames in the layout of :mod:`cascadev.frames`, batched), in
the DiT's layout (B, C, T, H, W):

* target: a posterior sample of the SVD VAE latent, (B, 4, T, S/8, S/8), times scale_factor;
* condition ``semantic``: the compressor's latent (B, 16, T, S/32, S/32) upsampled x4 (bilinear),
  times scale_factor -> 20 DiT input channels;
* condition ``resize`` (paper Fig. 4b): the SVD latent of the video downscaled x4, (B, 4, T, S/32, S/32),
  upsampled x4, times scale_factor -> 8 DiT input channels.

Both conditions come from :class:`cascadev.conditioning.Conditioner`, the sampler's implementation.

``encode`` runs the frozen networks once and returns the posterior's mean and std rather than a sample,
so that cached encodings (``LatentCache``) still give a fresh posterior sample at every step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file

from ..checkpoint import save_safetensors
from ..conditioning import DEFAULT_KIND, KINDS, SCALE_FACTOR, Conditioner, check_kind


class FrozenEncoders:
    """The SVD VAE encoder and (semantic condition) the compressor, frozen, in eval mode, no gradients.

    The condition is built by :class:`cascadev.conditioning.Conditioner`, the sampler's own.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        compressor: torch.nn.Module | None = None,
        *,
        condition: str = DEFAULT_KIND,
        scale_factor: float = SCALE_FACTOR,
        sr_scale: int = 4,
        chunk: int = 4,
        dtype: torch.dtype = torch.float32,
    ):
        if KINDS[check_kind(condition)].encoder == "compressor" and compressor is None:
            raise ValueError(f"the {condition} condition needs the compressor")
        for module in (vae, compressor):
            if module is not None:
                module.eval().requires_grad_(False)
        device = next(vae.parameters()).device
        self.conditioner = Conditioner(
            compressor,
            vae,
            kind=condition,
            scale_factor=scale_factor,
            sr_scale=sr_scale,
            chunk=chunk,
            device=device,
            dtype=dtype,
        )
        self.scale_factor, self.dtype = scale_factor, dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """Clip (B, T, 3, S, S) in [-1, 1] -> dict(mean, std: (B, 4, T, S/8, S/8), cond: (B, Cc, T, S/32, S/32))."""
        b = video.shape[0]
        frames = video.flatten(0, 1)  # (B, T, 3, S, S) -> (B*T, 3, S, S): every frame an image
        mean, std = self.conditioner.posterior(frames)
        cond = self.conditioner.latent(frames)
        to_video = lambda x: rearrange(x, "(b t) c h w -> b c t h w", b=b)  # noqa: E731  (the DiT's layout)
        return {"mean": to_video(mean), "std": to_video(std), "cond": to_video(cond)}

    def training_pair(
        self, encoded: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled (target (B, 4, T, H, W), condition (B, Cc, T, H, W)) with a fresh posterior sample."""
        mean, std, cond = encoded["mean"], encoded["std"], encoded["cond"]
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        target = (mean + std * eps) * self.scale_factor
        # Cached encodings are stored in the DiT's layout; the x4 upsampling is per frame, so frames out and back.
        up = self.conditioner.upsample(rearrange(cond, "b c t h w -> (b t) c h w"))  # (B*T, Cc, 4h, 4w)
        return target, rearrange(up, "(b t) c h w -> b c t h w", b=cond.shape[0]).to(cond.device)


class LatentCache:
    """Encodings of the training clips on disk, one safetensors file per dataset item.

    With caching on, the cache holds ``latent_cache_epochs`` = K versions of each item (the clips of
    epochs 0 .. K-1, each encoded once) and epoch e reads version e % K (``Trainer._loader``), so later
    epochs skip the frozen encoders entirely; K = 1 trains every epoch on the epoch-0 clips.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.root / f"{int(index):08d}.safetensors"

    def __contains__(self, index: int) -> bool:
        return self.path(index).is_file()

    def save(self, index: int, encoded: dict[str, torch.Tensor]) -> None:
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in encoded.items()}, self.path(index))

    def load(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        items = [load_file(self.path(i)) for i in indices]
        return {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
