"""Golden fixtures dumped from the reference implementation (tests/fixtures): the DiT they were made with.

A fixture is ``NAME.json`` (the DiT's constructor arguments and the dump's layout, e.g. ``videos``) beside
``NAME.safetensors`` (the reference model's weights under ``model.`` and its inputs and outputs under
``io.``). The golden tests, the GPU tests and tools/precision_table.py all rebuild the model this way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .models.dit import CascadeDiT

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
# The constructor arguments a fixture's JSON records for the model.
ARCHITECTURE_KEYS = (
    "input_size",
    "patch_size",
    "in_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "pe_interpolation",
    "attn_strides",
    "lats_per_vid",
)


def load_golden(name: str = "dit_golden_a", root: Path = FIXTURES) -> tuple[dict, dict[str, torch.Tensor], CascadeDiT]:
    """The fixture's spec, its tensors and the reference's DiT (eval mode, weights loaded strictly)."""
    spec = json.loads((root / f"{name}.json").read_text())
    tensors = load_file(root / f"{name}.safetensors")
    model = CascadeDiT(**{k: spec[k] for k in ARCHITECTURE_KEYS}).eval()
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return spec, tensors, model
