"""Every option is checked before any output exists; a damaged video prints only cascadev's line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import assert_one_line_error
from videos import write_test_video

from cascadev.cli import main

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
MODEL = ["--config", TINY, "--random-init", "--quiet"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_test_video(path, 2, 32, 32)
    return path


@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--codec", "bogus", "'bogus' is not available"),
        ("--codec", "aac", "not a video encoder"),
        ("--pix-fmt", "bogus", "no pixel format"),
        ("--pix-fmt", "rgb24", "cannot write pixel format rgb24"),  # libx264 takes YUV only
        ("--crf", "60", "between 0 and 51"),
    ],
)
def test_recon_checks_output_options_before_the_latent(tmp_path, capsys, clip, option, value, needle):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "recon", clip, "-o", out, option, value, *MODEL)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("command", ["upscale", "interpolate"])
def test_enhance_checks_the_pixel_format_before_writing(tmp_path, capsys, clip, command):
    code, err = run_cli(capsys, command, clip, "-o", tmp_path / "o.mp4", "--pix-fmt", "gbrp", *MODEL)
    assert_one_line_error(code, err, "libx264", "gbrp")
    assert os.listdir(tmp_path) == []


def test_recon_seed_is_checked_before_the_latent(tmp_path, clip):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["recon", str(clip), "-o", str(out), "--seed", "-1", *MODEL])
    assert exit_.value.code == 2
    assert not out.exists()


def test_corrupt_video_prints_one_line_only(tmp_path, clip):
    """decord (C++) and ffmpeg log their own lines on file descriptor 2; only cascadev's may appear."""
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 2])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-m", "cascadev.cli", "encode", str(truncated), "-o", str(tmp_path / "l.safetensors"), *MODEL],
        capture_output=True,
        text=True,
        env=env,
    )
    assert_one_line_error(result.returncode, result.stderr, "truncated.mp4", "not a readable video")
    assert sorted(os.listdir(tmp_path)) == ["truncated.mp4"]
