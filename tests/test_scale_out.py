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
from standins import TwoProcessesAsMain
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


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _kill_one_worker_when(launcher: subprocess.Popen, ready) -> None:
    """SIGKILL one of the launcher's two worker processes as soon as ``ready()``; the launcher then stops.

    The workers are the first two siblings below launch.sh's chain of single processes (cascadev.launcher,
    then accelerate's torchrun agent)."""
    deadline = time.monotonic() + 240
    while not ready() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = _children(launcher.pid) if launcher.poll() is None else []
    while len(pids) == 1:
        pids = _children(pids[0])
    if pids:
        os.kill(pids[-1], signal.SIGKILL)
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


def test_a_failure_under_the_launcher_is_the_processes_one_line_and_status(tmp_path):
    result = launch("recon", tmp_path / "missing.mp4", "-o", tmp_path / "out", *MODEL)
    assert result.returncode == 2  # the processes' status, not the launcher's 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr, result.stderr
    # Each process says it, unless torchrun stopped the other one first.
    assert 1 <= errors.count(f"cascadev: error: The input file {tmp_path / 'missing.mp4'} does not exist.") <= 2
    assert not (tmp_path / "out").exists()


def test_launcher_status_and_held_back_report():
    from cascadev.launcher import TRACEBACK, _Filter, exit_status

    torchrun = f"{TRACEBACK}\n  ...\nChildFailedError:\n  exitcode  : 2 (pid: 7)\n  exitcode  : 2 (pid: 8)\n"
    assert exit_status(1, torchrun) == (2, "")
    # One process failed, torchrun stopped the other (SIGTERM): the root cause's status is the run's.
    stopped = f"{TRACEBACK}\nFailures:\n[1]:\n  exitcode  : -15 (pid: 8)\nRoot Cause (first observed failure):\n[0]:\n  exitcode  : 2 (pid: 7)\n"
    assert exit_status(1, stopped) == (2, "")
    single = f"{TRACEBACK}\n  ...\nsubprocess.CalledProcessError: Command '[...]' returned non-zero exit status 2.\n"
    assert exit_status(1, single) == (2, "")
    assert exit_status(1, f"{TRACEBACK}\n  ...\n  exitcode  : -9 (pid: 7)\n") == (137, "")  # SIGKILL, as a shell says
    own = f"{TRACEBACK}\n  File ...\nRuntimeError: the address is already in use\n"
    assert exit_status(1, own) == (1, "launch.sh: error: RuntimeError: the address is already in use\n")
    assert exit_status(0, "") == (0, "")

    written = []
    f = _Filter(written.append)
    for piece in ["step 1\r", "step 2\rcascadev: error: bad\nTrace", "back (most recent call last):\n  x\n"]:
        f.feed(piece)  # the marker split across two reads
    assert "".join(written) == "step 1\rstep 2\rcascadev: error: bad\n"
    assert f.close() == f"{TRACEBACK}\n  x\n"
    g = _Filter(written.append)
    g.feed("no trace")
    assert g.close() == "" and "".join(written).endswith("no trace")
    debug = _Filter(written.append, hold=False)  # CASCADEV_DEBUG: the processes' own tracebacks pass
    debug.feed(f"{TRACEBACK}\n  x\n")
    assert debug.close() == "" and "".join(written).endswith(f"{TRACEBACK}\n  x\n")


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


def test_segments_left_for_other_settings_are_sampled_again(tmp_path, monkeypatch):
    from cascadev import segments
    from cascadev.loading import build_pipeline, load_config
    from cascadev.reconstruct import SamplingArgs

    write_test_video(tmp_path / "v.mp4", 12, 64, 64)
    assert main(["encode", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "l.safetensors"), *MODEL]) == 0
    monkeypatch.setattr(segments, "distributed_state", TwoProcessesAsMain)
    pipe = build_pipeline(load_config(MODEL[1]), ["dit"], random_init=True, segment_frames=6)
    folder = tmp_path / ".segments"

    def share(seed):
        sampled = segments.share_segments(pipe, tmp_path / "l.safetensors", SamplingArgs(steps=1, seed=seed), folder)
        return sampled(0), (folder / "0.safetensors").stat().st_mtime_ns

    z1, t1 = share(1)
    again, t1_again = share(1)  # an interrupted run's segments, same settings: kept
    assert t1_again == t1 and torch.equal(again, z1)
    z2, _ = share(2)  # a rerun with another seed: sampled anew, not the seed-1 segment
    expected = pipe.sample_segment(
        lambda a, b: load_latent(tmp_path / "l.safetensors")[0][:, a:b], 0, 6, steps=1, seed=2
    )
    assert not torch.equal(z2, z1) and torch.allclose(z2, expected, atol=1e-6)


def test_two_processes_decode_one_latent_into_one_video(tmp_path):
    # Each process samples its share of the segments; the main process alone holds the output's lock.
    write_test_video(tmp_path / "long.mp4", 12, 64, 64)
    latent = tmp_path / "l.safetensors"
    assert main(["encode", str(tmp_path / "long.mp4"), "-o", str(latent), *MODEL]) == 0
    sampling = ["--segment-frames", "6", "--seed", "5", *LOSSLESS]
    assert main(["decode", str(latent), "-o", str(tmp_path / "one.mp4"), *sampling, *MODEL]) == 0
    result = launch("decode", latent, "-o", tmp_path / "two.mp4", *sampling, *MODEL)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = frames(tmp_path / "one.mp4"), frames(tmp_path / "two.mp4")
    assert one.shape[0] == two.shape[0] == 12 and np.abs(one - two).mean() < 0.05
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors", "long.mp4", "one.mp4", "two.mp4"]
