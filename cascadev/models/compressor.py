"""StableCascade's semantic compressor (EfficientNetV2-S encoder) and its previewer decoder.

The compressor maps RGB frames to CascadeV's compressed representation, a 16-channel map at 1/32 of
the frame resolution. The previewer is a small convolutional decoder that turns such a latent back
into a rough RGB image at 1/4 of the original resolution (8x upsampling of the 1/32 latent); CascadeV
shows it as the reconstruction "without LDM".

Both modules use the parameter names of StableCascade's released files (``effnet_encoder.safetensors``
and ``previewer.safetensors``) so that those files load with ``strict=True``. The previewer is a diffusers
model (``ModelMixin, ConfigMixin``: ``save_pretrained`` writes ``config.json`` beside the same keys). The
compressor stays a plain module: its config argument ``backbone`` (a torchvision name) and its released
submodule ``backbone`` share a name, and diffusers would answer ``self.backbone`` with the config value. Both are frozen in
CascadeV and are therefore constructed in eval mode (BatchNorm uses its running statistics and the
backbone's stochastic depth is off); call ``.train()`` explicitly if you really want to train them.
"""

from __future__ import annotations

import torch
import torchvision
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cascadev.conditioning import COMPRESSOR_STRIDE
from cascadev.errors import CascadeVError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Spatial upsampling of the previewer (image side / latent side).
PREVIEWER_UPSAMPLING = 8


def _check_images(x: torch.Tensor, channels: int, what: str, multiple: int = 1) -> None:
    """Raise CascadeVError unless ``x`` is (N, channels, H, W) with H and W multiples of ``multiple``."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise CascadeVError(f"{what} must have shape (N, {channels}, H, W), got {tuple(x.shape)}.")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple or h == 0 or w == 0:
        raise CascadeVError(f"{what} height and width must be positive multiples of {multiple}, got {w}x{h}.")


def _last_conv_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class EfficientNetEncoder(nn.Module):
    """StableCascade's semantic compressor: EfficientNetV2-S features + 1x1 conv + BatchNorm.

    ``backbone`` is torchvision's ``efficientnet_v2_s().features`` (randomly initialised here; the
    released weights come from ``effnet_encoder.safetensors``), ``mapper`` projects its 1280
    channels to ``c_latent`` and normalises them with a non-affine BatchNorm (running statistics
    only), which makes the latent roughly zero-mean, unit-variance per channel.

    Args:
        c_latent: channels of the semantic latent (16 in StableCascade and CascadeV).
        backbone: name of a torchvision model constructor whose ``.features`` reduce 32x, e.g.
            ``"efficientnet_v2_s"`` (the released layout) or ``"mobilenet_v3_small"`` (toy configs);
            the mapper takes that backbone's output channels.
    """

    def __init__(self, c_latent: int = 16, backbone: str = "efficientnet_v2_s") -> None:
        super().__init__()
        self.c_latent = c_latent
        constructor = getattr(torchvision.models, backbone, None) if isinstance(backbone, str) else None
        model = constructor(weights=None) if callable(constructor) else None
        if model is None or not isinstance(getattr(model, "features", None), nn.Module):
            raise CascadeVError(
                f"compressor backbone {backbone!r} is not a torchvision model with .features "
                "(e.g. efficientnet_v2_s, mobilenet_v3_small)."
            )
        self.backbone = model.features
        self.mapper = nn.Sequential(
            nn.Conv2d(_last_conv_channels(self.backbone), c_latent, kernel_size=1, bias=False),
            nn.BatchNorm2d(c_latent, affine=False),
        )
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ImageNet-normalised frames.

        Args:
            x: (N, 3, H, W) frames already normalised as ``((x01 - mean) / std)`` with the ImageNet
                mean/std, where ``x01`` is the frame in [0, 1].

        Returns:
            (N, c_latent, H/32, W/32) semantic latent (roughly zero-mean, unit-variance); sizes
            that are not multiples of 32 are rounded up by the backbone's padded stride-2 convs.
        """
        return self.mapper(self.backbone(x))

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode frames in [-1, 1] (the convention of the rest of CascadeV).

        Args:
            frames: (N, 3, H, W) RGB frames in [-1, 1], H and W multiples of 32, any floating dtype
                (computation happens in that dtype on the frames' device).

        Returns:
            (N, c_latent, H/32, W/32) semantic latent.

        Raises:
            CascadeVError: if ``frames`` is not (N, 3, H, W) with H and W multiples of 32.
        """
        _check_images(frames, 3, "frames for the semantic compressor", COMPRESSOR_STRIDE)
        mean = torch.tensor(IMAGENET_MEAN, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        x01 = (frames + 1) / 2
        return self.forward((x01 - mean) / std)


class Previewer(ModelMixin, ConfigMixin):
    """StableCascade's previewer: decodes a semantic latent to a rough RGB image, 8x upsampled.

    A 1x1 and a 3x3 conv stage at the latent resolution, then three times a stride-2 transposed
    convolution and a 3x3 conv stage (every stage followed by GELU and BatchNorm), then a 1x1
    projection to RGB. The layer order inside
    ``blocks`` fixes the checkpoint key indices (``blocks.0`` ... ``blocks.24``).

    Args:
        c_in: latent channels (16).
        c_hidden: width of the first stage (512 in the released previewer; halves after the first
            and the second upsampling).
        c_out: output channels (3, RGB).
    """

    @register_to_config
    def __init__(self, c_in: int = 16, c_hidden: int = 512, c_out: int = 3) -> None:
        super().__init__()
        if c_hidden % 4:
            raise CascadeVError(f"previewer c_hidden must be a multiple of 4, got {c_hidden}.")
        self.c_in = c_in
        c1, c2, c3 = c_hidden, c_hidden // 2, c_hidden // 4

        def stage(conv: nn.Module, width: int) -> list[nn.Module]:
            return [conv, nn.GELU(), nn.BatchNorm2d(width)]

        self.blocks = nn.Sequential(
            *stage(nn.Conv2d(c_in, c1, kernel_size=1), c1),
            *stage(nn.Conv2d(c1, c1, kernel_size=3, padding=1), c1),
            *stage(nn.ConvTranspose2d(c1, c2, kernel_size=2, stride=2), c2),
            *stage(nn.Conv2d(c2, c2, kernel_size=3, padding=1), c2),
            *stage(nn.ConvTranspose2d(c2, c3, kernel_size=2, stride=2), c3),
            *stage(nn.Conv2d(c3, c3, kernel_size=3, padding=1), c3),
            *stage(nn.ConvTranspose2d(c3, c3, kernel_size=2, stride=2), c3),
            *stage(nn.Conv2d(c3, c3, kernel_size=3, padding=1), c3),
            nn.Conv2d(c3, c_out, kernel_size=1),
        )
        self.eval()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a semantic latent.

        Args:
            latent: (N, c_in, h, w) semantic latent (as produced by ``EfficientNetEncoder``).

        Returns:
            (N, c_out, 8h, 8w) image, roughly in [0, 1] (not clamped).
        """
        return self.blocks(latent)

    def decode_frames(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a semantic latent to frames in [-1, 1].

        Args:
            latent: (N, c_in, h, w) semantic latent.

        Returns:
            (N, c_out, 8h, 8w) frames, ``clamp(2 * forward(latent) - 1, -1, 1)``.

        Raises:
            CascadeVError: if ``latent`` is not (N, c_in, h, w).
        """
        _check_images(latent, self.c_in, "latent for the previewer")
        return (2 * self.forward(latent) - 1).clamp(-1, 1)
