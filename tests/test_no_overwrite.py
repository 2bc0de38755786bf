"""No command can overwrite its own input: every output checked against every input before any work."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error
from videos import write_test_video

from cascadev.cli import main
from cascadev.latent_io import LatentMeta, save_latent
from cascadev.overwrite import same_file

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
MODEL = ["--config", TINY, "--random-init", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture()
def clip(tmp_path):
    path = tmp_path / "in.mp4"
    write_test_video(path, 3, 32, 32)
    return path


@pytest.fixture()
def latent(tmp_path):
    path = tmp_path / "l.safetensors"
    save_latent(
        path, torch.zeros(16, 2, 1, 1), LatentMeta(fps=24.0, height=32, width=32, source_height=32, source_width=32)
    )
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def spellings(tmp_path: Path, target: Path) -> dict[str, Path]:
    """The same file under other names: a ./ spelling, a symlink, a hard link."""
    (tmp_path / "sub").mkdir(exist_ok=True)
    os.symlink(target, tmp_path / f"link{target.suffix}")
    os.link(target, tmp_path / f"hard{target.suffix}")
    return {
        "same": target,
        "dot": tmp_path / "sub" / ".." / "." / target.name,
        "symlink": tmp_path / f"link{target.suffix}",
        "hardlink": tmp_path / f"hard{target.suffix}",
    }


def test_same_file_sees_through_spellings(tmp_path, clip):
    for name, path in spellings(tmp_path, clip).items():
        assert same_file(path, clip), name
    other = tmp_path / "other.mp4"
    shutil.copy(clip, other)  # equal bytes, different file
    assert not same_file(other, clip)
    assert not same_file(tmp_path / "new.mp4", clip)


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["encode", "upscale", "interpolate"])
def test_video_commands_refuse_to_overwrite_the_input(tmp_path, capsys, clip, command, spelling):
    output = spellings(tmp_path, clip)[spelling]
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, command, clip, "-o", output, *MODEL)
    assert_one_line_error(code, err, "input video", "choose another output path")
    assert snapshot(tmp_path) == before


def test_relative_spelling_from_the_working_folder(tmp_path, capsys, clip, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, "encode", "in.mp4", "-o", "./in.mp4", *MODEL)
    assert_one_line_error(code, err, "./in.mp4", "in.mp4")
    assert clip.stat().st_size > 1000  # still the video


@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink"])
def test_decode_refuses_to_overwrite_its_latent(tmp_path, capsys, latent, spelling):
    output = spellings(tmp_path, latent)[spelling]
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, "decode", latent, "-o", output, *MODEL)
    assert_one_line_error(code, err, "input latent")
    assert snapshot(tmp_path) == before


def test_recon_folder_equal_to_or_holding_the_input(tmp_path, capsys, clip):
    code, err = run_cli(capsys, "recon", clip, "-o", clip, *MODEL)
    assert_one_line_error(code, err, "output folder", "input video")
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "recon.mp4"  # reconstructing a file recon itself would write
    shutil.copy(clip, inside)
    before = snapshot(out)
    code, err = run_cli(capsys, "recon", inside, "-o", out, *MODEL)
    assert_one_line_error(code, err, "recon.mp4", "input video")
    assert snapshot(out) == before


def test_config_and_checkpoint_are_inputs_too(tmp_path, capsys, clip):
    config = tmp_path / "my.py"
    config.write_text(f"_base_ = ['{TINY}']\n")
    code, err = run_cli(capsys, "encode", clip, "-o", config, "--config", config, "--random-init")
    assert_one_line_error(code, err, "config", "my.py")
    assert config.read_text().startswith("_base_")
    ckpt = tmp_path / "dit.safetensors"
    ckpt.write_bytes(b"weights")
    code, err = run_cli(capsys, "upscale", clip, "-o", ckpt, "--ckpt", ckpt, "--config", TINY)
    assert_one_line_error(code, err, "--ckpt", "dit.safetensors")
    assert ckpt.read_bytes() == b"weights"


def test_eval_reports_must_not_replace_its_inputs(tmp_path, capsys, clip):
    for side in ("ref", "rec"):
        (tmp_path / side).mkdir()
        shutil.copy(clip, tmp_path / side / "a.mp4")
    # A --ref list file named like the results file...
    refs = tmp_path / "refs.json"
    refs.write_text("ref/a.mp4\n")
    code, err = run_cli(
        capsys, "eval", "--ref", refs, "--rec", tmp_path / "rec", "-o", refs, "--metrics", "psnr", "--quiet"
    )
    assert_one_line_error(code, err, "--ref", "refs.json")
    assert refs.read_text() == "ref/a.mp4\n"
    # ... and a --rec list file named like results.md, which is written beside results.json.
    recs = tmp_path / "recs.md"
    recs.write_text("rec/a.mp4\n")
    code, err = run_cli(
        capsys,
        "eval",
        "--ref",
        tmp_path / "ref",
        "--rec",
        recs,
        "-o",
        tmp_path / "recs.json",
        "--metrics",
        "psnr",
        "--quiet",
    )
    assert_one_line_error(code, err, "--rec", "recs.md")
    assert recs.read_text() == "rec/a.mp4\n"
    assert not (tmp_path / "recs.json").exists()
