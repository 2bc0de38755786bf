"""The shipped nano model (configs/nano.py, pretrained/nano/): it loads, it reconstructs a real held-out
clip better than bicubic upsampling of the 1/32 frames, and recon.sh falls back to it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cascadev.cli import main
from cascadev.evaluation.baselines import bicubic_frames
from cascadev.evaluation.metrics import psnr, ssim
from cascadev.video_io import VideoReader

ROOT = Path(__file__).parents[1]
CLIP = ROOT / "tests" / "fixtures" / "nano_heldout_bikes.mp4"  # bikes.mp4 frames 200-207: never trained on
FRAMES = 8


def test_shipped_weights_fit_in_40_mb():
    files = [p for p in (ROOT / "pretrained" / "nano").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "dit.safetensors",
        "compressor.safetensors",
        "previewer.safetensors",
        "config.json",
        "diffusion_pytorch_model.safetensors",
    }
    assert sum(p.stat().st_size for p in files) <= 40 * 2**20


def test_nano_reconstruction_beats_bicubic_of_the_1_32_frames(tmp_path, capsys):
    out = tmp_path / "recon"
    code = main(
        [
            "recon",
            str(CLIP),
            "-o",
            str(out),
            "--config",
            str(ROOT / "configs" / "nano.py"),
            "--weights-dir",
            str(ROOT / "pretrained" / "nano"),
            "--num-frames",
            str(FRAMES),
            "--seed",
            "42",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    original = VideoReader(CLIP).read(list(range(FRAMES)))
    recon = VideoReader(out / "recon.mp4").read(list(range(FRAMES)))
    floor = bicubic_frames(original, 32)
    assert psnr(original, recon).mean() > psnr(original, floor).mean()
    assert ssim(original, recon).mean() > ssim(original, floor).mean()


def test_recon_sh_uses_nano_without_the_released_weights(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CASCADEV=str(Path(sys.executable).with_name("cascadev")))
    result = subprocess.run(
        ["bash", str(ROOT / "recon.sh"), str(CLIP), str(out), "--num-frames", "4", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "small demo model" in lines[0] and "pretrained/download.sh" in lines[0]
    assert VideoReader(out / "recon.mp4").num_frames == 4
    assert np.asarray(VideoReader(out / "recon.mp4").read([0])).shape == (1, 256, 256, 3)


def test_train_nano_help_is_its_usage_not_a_run(tmp_path):
    """--help prints the header's usage and exits 0, starting no stage (was: taken for WORK_DIR)."""
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "train_nano.sh"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and "bash tools/train_nano.sh [WORK_DIR]" in result.stdout, result.stderr
    assert "==" not in result.stdout and not (ROOT / "--help").exists() and list(tmp_path.iterdir()) == []
    result = subprocess.run(["bash", str(ROOT / "tools" / "train_nano.sh"), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "train_nano: error: unknown option --bogus (the one argument is WORK_DIR; see --help)"
    ]
