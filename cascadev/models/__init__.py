"""CascadeV's networks, buildable from config dicts: ``build_model(dict(type='CascadeDiT', ...))``.

The DiT and StableCascade's compressor/previewer are ours; the SVD VAE is diffusers'
``AutoencoderKLTemporalDecoder``, registered here so configs can name it.
"""

from __future__ import annotations

from diffusers import AutoencoderKLTemporalDecoder
from mmengine.registry import Registry
from torch import nn

from .compressor import EfficientNetEncoder, Previewer
from .dit import CascadeDiT

MODELS = Registry("cascadev models")
for _cls in (CascadeDiT, EfficientNetEncoder, Previewer, AutoencoderKLTemporalDecoder):
    MODELS.register_module(module=_cls)


def build_model(spec: dict) -> nn.Module:
    """Instantiate ``spec['type']`` with the other keys as constructor arguments."""
    spec = dict(spec)
    return MODELS.get(spec.pop("type"))(**spec)


__all__ = ["CascadeDiT", "EfficientNetEncoder", "Previewer", "MODELS", "build_model"]
