"""tools/prepare_inter4k.py and tools/eval_recon.sh."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from videos import write_test_video

from cascadev.frames import from_uint8, resize_short_side, to_uint8
from cascadev.video_io import VideoReader, write_video

REPO = Path(__file__).resolve().parents[1]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load_tool("prepare_inter4k")


def test_source_indices_select_frames_by_time():
    assert prep.source_indices(60.0, 30.0, 5) == [0, 2, 4, 6, 8]
    assert prep.source_indices(24.0, 30.0, 8) == [0, 1, 2, 2, 3, 4, 5, 6]  # nearest in time
    assert prep.source_indices(30000 / 1001, 30.0, 4) == [0, 1, 2, 3]  # no repeated frame 0 at 29.97 fps


@pytest.fixture(scope="module")
def inter4k(tmp_path_factory):
    src = tmp_path_factory.mktemp("inter4k")
    frames = {}
    for name, count in (("1", 20), ("2", 8), ("10", 20), ("3", 20)):
        frames[name] = write_test_video(src / f"{name}.mp4", count, 108, 180, fps=60.0)
    return src, frames


def test_prepare_writes_the_first_videos_resized_cropped_resampled(tmp_path, capsys, inter4k):
    src, _ = inter4k
    out = tmp_path / "set"
    argv = [str(src), "-o", str(out), "-n", "2", "--size", "72", "--num-frames", "6", "--crf", "0"]
    assert prep.main(argv) == 2  # 2.mp4 has 8 frames at 60 fps: too short for 6 frames at 30 fps
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prepare_inter4k: error:") and "2.mp4" in err[-1] and "8 frames" in err[-1]

    fresh = tmp_path / "fresh"
    assert prep.main([str(src), "-o", str(fresh), "-n", "5", *argv[5:]]) == 2  # 4 exist: stop before any work
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds 4 videos, fewer than the 5" in err[0] and not fresh.exists()
    assert prep.main([*argv[:4], "4", *argv[5:], "--skip-short"]) == 2  # 2.mp4 too short: 3 of 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == ["1", "10", "3"] and "manifest.json" in capsys.readouterr().err
    shutil.rmtree(out)
    assert prep.main(argv + ["--skip-short"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["1.mp4", "3.mp4", "manifest.json"]  # natural order
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["videos"]["1"]["source_frames"] == [0, 2, 4, 6, 8, 10]
    source = VideoReader(src / "1.mp4").read([0, 2, 4, 6, 8, 10])
    expected = to_uint8(resize_short_side(from_uint8(source), 72))
    assert expected.shape == (6, 72, 120, 3)
    expected = expected[:, :, 24:96]  # centred 72x72 crop
    video = VideoReader(out / "1.mp4")
    assert (video.num_frames, video.height, video.width) == (6, 72, 72)
    assert abs(video.fps - 30.0) < 1e-3
    got = video.read(range(6)).astype(int)
    # The same frames through the same encoder (yuv420p subsamples chroma, so compare like with like).
    write_video(tmp_path / "expected.mp4", np.ascontiguousarray(expected), 30.0, crf=0)
    assert np.abs(got - VideoReader(tmp_path / "expected.mp4").read(range(6))).max() <= 1
    # The frame selection is visible: each output frame is closest to its own source frame.
    for i in range(6):
        diffs = [np.abs(got[i] - e).mean() for e in expected.astype(int)]
        assert int(np.argmin(diffs)) == i


def test_prepare_no_crop_and_bad_inputs(tmp_path, capsys, inter4k):
    src, _ = inter4k
    out = tmp_path / "set"
    assert prep.main([str(src), "-o", str(out), "-n", "1", "--size", "36", "--no-crop", "--num-frames", "3"]) == 0
    video = VideoReader(out / "1.mp4")
    assert (video.num_frames, video.height, video.width) == (3, 36, 60)
    capsys.readouterr()
    assert prep.main([str(tmp_path / "none"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_inter4k: error:") and "none" in err[0]
    with pytest.raises(SystemExit) as info:
        prep.main([str(src), "-o", str(out), "--fps", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("prepare_inter4k: error:")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_eval_recon_script_with_baselines(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    write_test_video(ref / "clip.mp4", 4, 64, 64, fps=30.0)
    log = tmp_path / "recon_args.txt"
    # A stand-in for `cascadev recon` (the real one is tested in test_cli.py): copies the input as
    # the reconstruction, and a blurred copy as the previewer output; records its arguments.
    fake = tmp_path / "fake_recon.py"
    fake.write_text(
        "import sys, pathlib, shutil\n"
        "from cascadev.evaluation.baselines import bicubic_video\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "videos, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[sys.argv.index('-o') + 1])\n"
        "for video in sorted(videos.glob('*.mp4')):\n"
        "    out = work / video.stem\n"
        "    out.mkdir(parents=True, exist_ok=True)\n"
        "    shutil.copy(video, out / 'recon.mp4')\n"
        "    shutil.copy(video, out / 'original.mp4')\n"
        "    bicubic_video(video, out / 'preview.mp4', 4)\n"
        "    (out / 'compare.png').write_bytes(b'')\n"
    )
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        RECON_CMD=f"{sys.executable} {fake}",
        TORCH_HOME=str(tmp_path / "torch"),
        PYTHONPATH=str(REPO),
    )
    out = tmp_path / "out"
    cmd = [
        "bash",
        str(REPO / "tools" / "eval_recon.sh"),
        str(ref),
        str(out),
        "--baselines",
        "--metrics",
        "psnr,ssim",
        "--config",
        "my_config.py",
        "--ckpt",
        "my.safetensors",
        "--num-frames",
        "3",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().split()
    assert args[0] == str(ref) and "--config" in args  # one batch command over the folder and "my.safetensors" in args
    assert "--metrics" not in args and "--baselines" not in args and "--num-frames" in args
    for name in ("cascadev", "previewer", "bicubic"):
        for suffix in (".json", ".md", ".png"):
            assert (out / f"{name}{suffix}").is_file(), name + suffix
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Factor" not in line and "--" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "Bicubic x32/1x32x32",
        "Previewer only (w/o LDM)/1x32x32",
        "CascadeV/1x32x32",
    ]
    cascadev = json.loads((out / "cascadev.json").read_text())
    bicubic = json.loads((out / "bicubic.json").read_text())
    preview = json.loads((out / "previewer.json").read_text())
    assert cascadev["mean"]["psnr"] == 100.0  # the stand-in "reconstruction" is the original
    # recon's --num-frames also limits what eval compares.
    assert cascadev["measured_on"]["frames_per_video"] == {"clip": 3}
    assert bicubic["mean"]["psnr"] < preview["mean"]["psnr"] < 100.0  # x32 loses more than x4
    assert (out / "bicubic" / "clip.mp4").is_file() and (out / "preview" / "clip.mp4").exists()
    assert "**100.0000**" in table
    links = [out / "original" / "clip.mp4", out / "recon" / "clip.mp4", out / "preview" / "clip.mp4"]
    assert [os.readlink(link) for link in links] == [
        "../work/clip/original.mp4",
        "../work/clip/recon.mp4",
        "../work/clip/preview.mp4",
    ]
    # A folder with no video (a hidden one and another kind of file do not count): one line, status 2.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.mp4").write_bytes(b"")
    (empty / "notes.txt").write_text("x")
    proc = subprocess.run(["bash", cmd[1], str(empty), str(tmp_path / "o2")], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"eval_recon: error: the reference folder {empty} holds no videos."
    ], proc.stderr
    moved = tmp_path / "moved"
    out.rename(moved)  # relative links survive a move
    assert all((moved / link.relative_to(out)).is_file() for link in links)
