"""StableCascade semantic compressor and previewer: checkpoint naming, shapes, value ranges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cascadev.checkpoint import load_weights, save_safetensors
from cascadev.errors import CascadeVError
from cascadev.models.compressor import EfficientNetEncoder, Previewer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def encoder() -> EfficientNetEncoder:
    torch.manual_seed(0)
    return EfficientNetEncoder()


def test_encoder_state_dict_matches_stablecascade_manifest(encoder):
    manifest = json.loads((FIXTURES / "manifest_effnet_encoder.json").read_text())
    expected = {k: tuple(v) for k, v in manifest["keys"].items()}
    actual = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert len(actual) == manifest["num_tensors"] == 784
    assert actual.keys() == expected.keys()
    assert actual == expected
    assert encoder.state_dict()["mapper.1.num_batches_tracked"].dtype == torch.int64


def test_encode_frames_normalises_and_downsamples_32x(encoder):
    torch.manual_seed(1)
    frames = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        z = encoder.encode_frames(frames)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = encoder(((frames + 1) / 2 - mean) / std)
        wrong = encoder(frames)  # forgetting the normalisation must give a different latent
    assert z.shape == (2, 16, 2, 3)
    # A random backbone gives tiny features (~1e-7), so tolerances are relative to their scale.
    scale = z.abs().max()
    assert scale > 0
    torch.testing.assert_close(z, ref, rtol=1e-4, atol=1e-4 * scale.item())
    assert (z - wrong).abs().max() > 0.1 * scale


def test_encoder_is_deterministic_in_eval_mode(encoder):
    # Stochastic depth and batch statistics must be off: the compressor is frozen.
    frames = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_frames(frames), encoder.encode_frames(frames))
    assert not encoder.training


@pytest.mark.parametrize("shape", [(2, 3, 64, 80), (2, 1, 64, 64), (3, 64, 64)])
def test_encode_frames_rejects_bad_shapes(encoder, shape):
    with pytest.raises(CascadeVError, match="semantic compressor"):
        encoder.encode_frames(torch.zeros(shape))


def test_encoder_checkpoint_loads_into_meta_model(encoder, tmp_path):
    path = save_safetensors(encoder.state_dict(), tmp_path / "effnet_encoder.safetensors")
    with torch.device("meta"):
        fresh = EfficientNetEncoder()
    load_weights(fresh, path, "the semantic compressor")
    original = encoder.state_dict()
    for name, value in fresh.state_dict().items():  # the weights arrive exactly
        assert torch.equal(value, original[name]), name
    frames = torch.rand(1, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        expected = encoder.encode_frames(frames)
        # The outputs along two code paths (memory layouts, kernels) agree to float32 rounding.
        torch.testing.assert_close(fresh.encode_frames(frames), expected, rtol=1e-5, atol=1e-6)
    assert expected.abs().max() > 0


def test_previewer_uses_stablecascade_key_names():
    with torch.device("meta"):
        previewer = Previewer(c_hidden=512)
    sd = previewer.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    # 9 convolutions (weight + bias) and 8 BatchNorms (5 tensors each).
    assert len(sd) == 9 * 2 + 8 * 5
    assert shapes["blocks.0.weight"] == (512, 16, 1, 1)
    assert shapes["blocks.2.running_var"] == (512,)
    assert "blocks.2.num_batches_tracked" in sd
    assert shapes["blocks.3.weight"] == (512, 512, 3, 3)
    assert shapes["blocks.6.weight"] == (512, 256, 2, 2)  # ConvTranspose2d: (in, out, k, k)
    assert shapes["blocks.12.weight"] == (256, 128, 2, 2)
    assert shapes["blocks.18.weight"] == (128, 128, 2, 2)
    assert shapes["blocks.21.weight"] == (128, 128, 3, 3)
    assert shapes["blocks.24.weight"] == (3, 128, 1, 1)
    assert shapes["blocks.24.bias"] == (3,)
    conv_indices = sorted({int(k.split(".")[1]) for k in sd if k.endswith("weight") and len(shapes[k]) == 4})
    assert conv_indices == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert not any(k.startswith(("blocks.1.", "blocks.4.")) for k in sd)  # GELUs hold nothing


def test_previewer_upsamples_8x_and_decodes_to_minus1_1():
    torch.manual_seed(2)
    previewer = Previewer(c_hidden=32)
    latent = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        image = previewer(latent)
        frames = previewer.decode_frames(latent)
    assert image.shape == (2, 3, 24, 40)
    assert frames.shape == (2, 3, 24, 40)
    assert frames.min() >= -1 and frames.max() <= 1
    torch.testing.assert_close(frames, (2 * image - 1).clamp(-1, 1))
    # The random model's output is not already inside [0, 1], so the clamp is exercised.
    assert (2 * image - 1).abs().max() > 1


def test_previewer_rejects_wrong_channel_count():
    previewer = Previewer(c_hidden=32)
    with pytest.raises(CascadeVError, match="previewer"):
        previewer.decode_frames(torch.zeros(1, 4, 2, 2))


def test_a_small_backbone_for_toy_configs_and_a_clear_error_for_an_unknown_one():
    small = EfficientNetEncoder(backbone="mobilenet_v3_small")
    assert small.mapper[0].in_channels == 576  # the backbone's own output channels
    assert sum(p.numel() for p in small.parameters()) < 1_500_000
    with torch.no_grad():
        assert small.encode_frames(torch.zeros(1, 3, 64, 96)).shape == (1, 16, 2, 3)
    with pytest.raises(CascadeVError, match="resnet_nope"):
        EfficientNetEncoder(backbone="resnet_nope")


def test_previewer_is_a_diffusers_model_with_the_released_keys(tmp_path):
    """save_pretrained / from_pretrained round-trip, and the shipped nano file (flat, released keys) still loads."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    previewer = Previewer(c_hidden=64)
    previewer.save_pretrained(tmp_path / "previewer")
    assert json.loads((tmp_path / "previewer" / "config.json").read_text())["c_hidden"] == 64
    again = Previewer.from_pretrained(tmp_path / "previewer")
    assert again.state_dict().keys() == previewer.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in previewer.state_dict().items())
    shipped = Path(__file__).parents[1] / "pretrained" / "nano" / "previewer.safetensors"
    load_weights(previewer, shipped, "nano's previewer")
    assert all(torch.equal(previewer.state_dict()[k], v) for k, v in load_file(shipped).items())
