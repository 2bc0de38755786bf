"""One conditioning implementation: the trainer's targets and the sampler's condition agree."""

from pathlib import Path

import pytest
import torch

from cascadev.conditioning import resize_for_encoding
from cascadev.loading import build_pipeline, load_config
from cascadev.training.targets import FrozenEncoders

TINY = Path(__file__).parents[1] / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def parts():
    return build_pipeline(load_config(TINY), ["compressor", "vae"], random_init=True)


@pytest.mark.parametrize("kind", ["semantic", "resize"])
def test_trainer_and_pipeline_build_the_same_condition(parts, kind):
    clip = torch.rand(1, 5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, T, 3, H, W)
    encoders = FrozenEncoders(parts.vae, parts.compressor, condition=kind, chunk=2)
    _, trained = encoders.training_pair(encoders.encode(clip), torch.Generator().manual_seed(1))  # (1, C, T, 8, 8)
    frames = clip[0]  # (T, 3, H, W), the pipeline's layout
    if kind == "semantic":
        latent = parts.encode(frames)
    else:
        latent = parts.encode_resized(resize_for_encoding(frames, (16, 16)))
    sampled = parts.condition(latent)  # (T, C, 8, 8)
    assert sampled.shape == (5, 16 if kind == "semantic" else 4, 8, 8)
    torch.testing.assert_close(sampled, trained[0].transpose(0, 1))
    assert sampled.abs().max() > 0


def test_low_res_filter_is_antialiased_bicubic():
    frames = torch.zeros(1, 3, 8, 8)
    frames[..., ::2, :] = 1  # stripes one pixel high: a non-antialiased x1/4 would alias them
    small = resize_for_encoding(frames, (2, 2))
    torch.testing.assert_close(small, torch.full_like(small, 0.5), atol=0.05, rtol=0)
