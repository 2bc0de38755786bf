"""Shared test set-up: lets tests import the helper modules in this folder (``from videos import ...``).

pytest's default import mode already puts this folder (it has no ``__init__.py``) on ``sys.path``;
adding it here keeps the helpers importable under ``--import-mode=importlib`` too.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import pytest  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A weights folder for configs/tiny.py with random weights in the released files' formats.

    Commands run on it without --random-init, so the real loading path (safetensors, the diffusers
    VAE folder) is exercised.
    """
    import torch

    from cascadev.checkpoint import save_safetensors
    from cascadev.conditioning import dit_spec
    from cascadev.loading import load_config
    from cascadev.models import build_model

    root = tmp_path_factory.mktemp("weights")
    cfg = load_config(CONFIGS / "tiny.py")
    torch.manual_seed(0)
    dit = build_model(dit_spec(cfg))
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.02)
    save_safetensors(dit.state_dict(), root / "tiny.safetensors")
    save_safetensors(build_model(cfg.compressor).state_dict(), root / "effnet_encoder.safetensors")
    save_safetensors(build_model(cfg.previewer).state_dict(), root / "previewer.safetensors")
    build_model(cfg.vae).save_pretrained(root / "svd_vae")
    return root


@pytest.fixture
def fresh_accelerate_state():
    """Each `cascadev train` in a test is its own run; accelerate keeps its state per process otherwise."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(True)
