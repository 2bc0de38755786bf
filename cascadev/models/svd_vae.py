"""A compiled run of diffusers' SVD video decoder (``AutoencoderKLTemporalDecoder``): the same sums, fused.

The decoder is diffusers' own, and its weights and state dict stay as they are. Eagerly, a 4-frame
1024² chunk takes 0.71 s on an H100, 9% of its fp16 peak: the temporal blocks see the (B*T, C, H, W)
activations through a (B, C, T, H, W) permuted view, so each GroupNorm and (3, 1, 1) Conv3d over them
copies the tensor first, and group norm (0.23 s) and copies (0.21 s) outweigh the convolutions
(0.12 s). torch.compile fuses the norms, activations and copies around cuDNN's convolutions: 0.25 s
(docs/benchmarks.md, "One level down"). Channels-last weights (0.80 s) and the temporal Conv3d run as
Conv2d (0.76 s) were measured too and gave nothing.

:func:`compile_decoder` turns it on (``sampling.vae_compile``). Each new chunk shape (frames, height,
width) compiles once, about 45 s on an H100, so it pays off over a batch of videos of one size.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from diffusers.models.autoencoders.autoencoder_kl_temporal_decoder import TemporalDecoder

from cascadev.errors import first_line

__all__ = ["CompiledTemporalDecoder", "compile_decoder"]


class CompiledTemporalDecoder(TemporalDecoder):
    """diffusers' ``TemporalDecoder`` whose forward runs through torch.compile.

    Made from an existing decoder by :func:`compile_decoder` (its class is swapped; parameters and state
    dict stay). Where compiling fails (no C++ or Triton compiler, say), it warns once and runs eagerly.
    """

    _compiled: Callable | None = None

    def forward(self, sample: torch.Tensor, image_only_indicator: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """sample (B*T, C, h, w) latent -> (B*T, 3, 8h, 8w) frames, as ``TemporalDecoder.forward``."""
        if self._compiled is not None:
            try:
                return self._compiled(sample, image_only_indicator, num_frames)
            except torch._dynamo.exc.TorchDynamoException as exc:  # the compiler, not the decoder, failed
                warnings.warn(f"compiling the SVD decoder failed, running it eagerly: {first_line(exc)}")
                self._compiled = None
        return super().forward(sample, image_only_indicator, num_frames)


def compile_decoder(vae: torch.nn.Module, backend: str | Callable = "inductor") -> None:
    """Run ``vae.decoder`` through torch.compile (``backend``, static shapes) from its next call on."""
    decoder = vae.decoder
    decoder.__class__ = CompiledTemporalDecoder
    # The eager forward, bound to this decoder, is what gets traced (not the class's own, which calls it).
    decoder._compiled = torch.compile(super(CompiledTemporalDecoder, decoder).forward, backend=backend, dynamic=False)
