"""CascadeV's networks, buildable from config dicts: ``build_model(dict(type='CascadeDiT', ...))``.

The DiT and StableCascade's compressor/previewer are ours; the SVD VAE is diffusers'
``AutoencoderKLTemporalDecoder``, registered here so configs can name it.
"""

from __future__ import annotations

from diffusers import AutoencoderKLTemporalDecoder
from torch import nn

from ..errors import CascadeVError, first_line
from .compressor import EfficientNetEncoder, Previewer
from .dit import CascadeDiT

# A config's ``type`` -> the class it builds (a plain dict, as DiT's model variants).
MODELS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (CascadeDiT, EfficientNetEncoder, Previewer, AutoencoderKLTemporalDecoder)
}


def build_model(spec: dict) -> nn.Module:
    """Instantiate ``spec['type']`` with the other keys as constructor arguments."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in MODELS:
        raise CascadeVError(f"unknown model type {kind!r} in the config; choose one of {', '.join(MODELS)}")
    try:
        return MODELS[kind](**spec)
    except (TypeError, ValueError) as exc:  # an unknown or missing argument, or values that do not fit together
        raise CascadeVError(f"the config's {kind} cannot be built: {first_line(exc)}") from None


__all__ = ["CascadeDiT", "EfficientNetEncoder", "Previewer", "MODELS", "build_model"]
