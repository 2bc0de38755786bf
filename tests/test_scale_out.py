"""Two accelerate processes (gloo on the CPU): a batch recon, and the segments of one long video (the
code `decode` of one latent shares, ``segments.share_segments``), each equal to a one-process run; after one process is killed, a rerun finishes the rest without redoing work."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from videos import write_test_video

from cascadev.cli import main
from cascadev.latent_io import load_latent
from cascadev.video_io import VideoReader

ROOT = Path(__file__).resolve().parents[1]
# Lossless videos: the processes' floats may differ in the last bits, x264's lossy decisions would magnify that.
MODEL = ["--config", str(ROOT / "configs" / "tiny.py"), "--random-init", "--quiet"]
LOSSLESS = ["--crf", "0"]


def launch(*argv, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """``launch.sh -m cascadev ...`` with USE_CPU=1 GPUS=2: two CPU processes under accelerate (gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        USE_CPU="1",
        GPUS="2",
        MASTER_PORT=str(port),
        ACCELERATE=str(Path(sys.executable).with_name("accelerate")),
    )
    cmd = ["bash", str(ROOT / "launch.sh"), "-m", "cascadev", *map(str, argv)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def frames(path) -> np.ndarray:
    reader = VideoReader(path)
    return reader.read(range(reader.num_frames)).astype(int)


def _kill_one_worker_when(launcher: subprocess.Popen, ready) -> None:
    """SIGKILL one of the launcher's two worker processes as soon as ``ready()``; the launcher then stops."""
    deadline = time.monotonic() + 240
    while not ready() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    pids = children.read_text().split() if launcher.poll() is None and children.exists() else []
    if pids:
        os.kill(int(pids[-1]), signal.SIGKILL)
    launcher.wait(timeout=120)


def test_two_processes_match_one_and_resume_after_one_is_killed(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, count in (("a", 4), ("b", 8), ("c", 4), ("d", 8)):
        write_test_video(videos / f"{name}.mp4", count, 64, 64)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["recon", str(videos), "-o", str(one), *MODEL, *LOSSLESS]) == 0

    outputs = sorted(p.name for p in (one / "a").iterdir())

    def complete() -> list[Path]:  # compare.png alone is not enough: the videos are renamed into place after it
        return [d for d in two.glob("*") if d.is_dir() and all((d / name).is_file() for name in outputs)]

    first = launch("recon", videos, "-o", two, *MODEL, *LOSSLESS, wait=False)
    _kill_one_worker_when(first, lambda: bool(complete()))
    finished = {d.name: {f.name: f.stat().st_mtime_ns for f in d.iterdir()} for d in complete()}
    assert 1 <= len(finished) < 4  # killed after one video was complete and before the last one

    result = launch("recon", videos, "-o", two, *MODEL, *LOSSLESS)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (two / "manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(r["input"]).stem for r in lines) == ["a", "b", "c", "d"]  # each once: none twice, none missing
    status = {Path(r["input"]).stem: r["status"] for r in lines}
    assert {n for n, s in status.items() if s == "skipped"} == set(finished)
    assert {n for n, s in status.items() if s == "done"} == {"a", "b", "c", "d"} - set(finished)
    for name, files in finished.items():  # not redone
        assert {f.name: f.stat().st_mtime_ns for f in (two / name).iterdir()} == files
    for name in "abcd":
        assert sorted(p.name for p in (two / name).iterdir() if not p.name.startswith(".")) == sorted(
            p.name for p in (one / name).iterdir()
        )
        torch.testing.assert_close(
            load_latent(two / name / "latent.safetensors")[0],
            load_latent(one / name / "latent.safetensors")[0],
            rtol=1e-5,
            atol=1e-6,
        )
        for video in ("recon.mp4", "preview.mp4", "compare.mp4"):
            diff = np.abs(frames(two / name / video) - frames(one / name / video))
            assert diff.max() <= 2 and diff.mean() < 0.05


def test_two_processes_share_the_segments_of_one_long_video_in_recon(tmp_path):
    write_test_video(tmp_path / "long.mp4", 16, 64, 64)
    sampling = ["--segment-frames", "6", "--seed", "5", *LOSSLESS]
    assert main(["recon", str(tmp_path / "long.mp4"), "-o", str(tmp_path / "one"), *sampling, *MODEL]) == 0
    result = launch("recon", tmp_path / "long.mp4", "-o", tmp_path / "two", *sampling, *MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    for video in ("recon.mp4", "preview.mp4", "compare.mp4"):
        one, two = frames(tmp_path / "one" / video), frames(tmp_path / "two" / video)
        assert one.shape[0] == two.shape[0] == 16
        assert np.abs(one - two).max() <= 2 and np.abs(one - two).mean() < 0.05
