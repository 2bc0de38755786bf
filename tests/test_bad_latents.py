"""Latents that are not latents, and weights that are not numbers: refused with one line, streaming."""

from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error
from safetensors.torch import save_file

from cascadev.checkpoint import save_safetensors
from cascadev.cli import main
from cascadev.errors import CascadeVError
from cascadev.latent_io import LatentMeta, LatentReader, save_latent
from cascadev.video_io import VideoWriter

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
META = LatentMeta(fps=24.0, height=32, width=32, source_height=32, source_width=32)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def raw_latent(path: Path, tensor: torch.Tensor) -> Path:
    save_file({"latent": tensor.contiguous()}, str(path), metadata={k: str(v) for k, v in META.to_dict().items()})
    return path


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.int64])
def test_non_floating_latents_are_refused(tmp_path, capsys, dtype):
    latent = raw_latent(tmp_path / "l.safetensors", torch.ones(16, 2, 1, 1, dtype=dtype))
    code, err = run_cli(capsys, "decode", latent, "-o", tmp_path / "v.mp4", "--config", TINY, "--random-init")
    assert_one_line_error(code, err, "l.safetensors", "floating point")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors"]


@pytest.mark.parametrize(
    "value,needle",
    [(float("nan"), "non-finite"), (float("inf"), "non-finite"), (-float("inf"), "non-finite"), (3e5, "beyond")],
)
def test_bad_values_are_found_in_the_chunk_that_holds_them(tmp_path, value, needle):
    latent = torch.zeros(16, 6, 1, 1)
    latent[3, 4, 0, 0] = value
    raw_latent(tmp_path / "l.safetensors", latent)  # damaged as no LatentWriter would write it
    reader = LatentReader(tmp_path / "l.safetensors")
    assert reader.read(0, 4).abs().max() == 0  # the frames before are fine
    with pytest.raises(CascadeVError, match=f"{needle}.*frame 4"):
        reader.read(2, 6)


def test_decode_stops_mid_video_and_removes_the_partial_output(tmp_path, capsys, monkeypatch):
    latent = torch.randn(16, 12, 1, 1)
    latent[0, 11] = float("nan")  # in the last segment only
    raw_latent(tmp_path / "l.safetensors", latent)
    written = []
    real_write = VideoWriter.write

    def spy(self, frames):
        real_write(self, frames)
        written.append(self._tmp)

    monkeypatch.setattr(VideoWriter, "write", spy)
    code, err = run_cli(
        capsys,
        "decode",
        tmp_path / "l.safetensors",
        "-o",
        tmp_path / "v.mp4",
        "--config",
        TINY,
        "--random-init",
        "--quiet",
        "--steps",
        "1",
        "--segment-frames",
        "4",
    )
    assert_one_line_error(code, err, "l.safetensors", "non-finite", "frame 11")
    assert written and written[0] is not None  # frames had been written when the damage was read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors"]


def test_checkpoint_with_nan_weights(tmp_path, capsys, tiny_weights):
    from cascadev.loading import load_config
    from cascadev.models import build_model

    state = build_model(load_config(TINY).model).state_dict()
    state["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "nan.safetensors"
    save_safetensors(state, ckpt)
    save_latent(tmp_path / "l.safetensors", torch.zeros(16, 2, 1, 1), META)
    code, err = run_cli(
        capsys,
        "decode",
        tmp_path / "l.safetensors",
        "-o",
        tmp_path / "v.mp4",
        "--config",
        TINY,
        "--weights-dir",
        tiny_weights,
        "--ckpt",
        ckpt,
        "--quiet",
    )
    assert_one_line_error(code, err, "nan.safetensors", "blocks.1.attn.qkv.weight", "non-finite")
    assert not (tmp_path / "v.mp4").exists()
