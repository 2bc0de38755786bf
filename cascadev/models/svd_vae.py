"""Faster kernels for diffusers' SVD video VAE (``AutoencoderKLTemporalDecoder``): the same sums, another layout.

The decoder is diffusers' own; these only change how PyTorch runs two kinds of its layers, and leave
its weights and state dict as they are:

- :func:`use_channels_last`: the 2D convolutions' weights in channels-last layout, for cuDNN's NHWC
  kernels (``sampling.vae_channels_last``).
- :func:`temporal_convs_as_2d`: its (3, 1, 1) Conv3d layers (the temporal mixing of each ResNet block
  and of the output) run as Conv2d with a (3, 1) kernel over ``(B, C, T, H*W)``, a view of the same
  memory, so that they run on cuDNN's 2D kernels rather than its 3D ones (``sampling.vae_temporal_2d``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TemporalConvAs2d", "temporal_convs_as_2d", "use_channels_last"]


class TemporalConvAs2d(nn.Conv3d):
    """A (3, 1, 1) Conv3d, zero-padded in time only, computed as a (3, 1) Conv2d over ``(B, C, T, H*W)``.

    Made from an existing layer by :func:`temporal_convs_as_2d` (its class is swapped; parameters, state
    dict and ``isinstance(m, nn.Conv3d)`` stay).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T, H, W) -> (B, C', T, H, W)."""
        b, c, t, h, w = x.shape
        # The 1x1 spatial taps make each pixel a column of its own: (T, H*W) as a 2D image is the same sum.
        y = F.conv2d(x.reshape(b, c, t, h * w), self.weight[..., 0], self.bias, padding=(1, 0))  # (B, C', T, H*W)
        return y.view(b, -1, t, h, w)


def _is_temporal(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv3d
        and module.kernel_size == (3, 1, 1)
        and module.padding == (1, 0, 0)
        and module.stride == (1, 1, 1)
        and module.dilation == (1, 1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def temporal_convs_as_2d(vae: nn.Module, enable: bool = True) -> int:
    """Run the VAE's (3, 1, 1) Conv3d layers as Conv2d (``enable``), or as Conv3d again; returns how many."""
    if enable:
        layers = [m for m in vae.modules() if _is_temporal(m)]
    else:
        layers = [m for m in vae.modules() if type(m) is TemporalConvAs2d]
    for layer in layers:
        layer.__class__ = TemporalConvAs2d if enable else nn.Conv3d
    return len(layers)


def use_channels_last(vae: nn.Module) -> int:
    """The VAE's 2D convolutions' weights in channels-last layout (its Conv3d weights, 5D, keep theirs)."""
    convs = [m for m in vae.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        conv.to(memory_format=torch.channels_last)
    return len(convs)
