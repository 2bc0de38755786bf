"""`cascadev eval --workers N`: PSNR/SSIM/flickering in worker processes give today's numbers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from videos import make_frames

from cascadev.cli import main
from cascadev.evaluation import metrics as M
from cascadev.evaluation.parallel import available_cores
from cascadev.video_io import write_video


@pytest.fixture
def pairs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vbench", None)
    torch.manual_seed(0)
    model = M.load_lpips("alex", "cpu", random_backbone=True)
    monkeypatch.setattr(M, "load_lpips", lambda net, device: model)
    ref, rec = tmp_path / "ref", tmp_path / "rec"
    ref.mkdir()
    rec.mkdir()
    rng = np.random.default_rng(1)
    for i, count in enumerate((6, 4, 5)):
        frames = make_frames(count, 48, 64)
        write_video(ref / f"v{i}.mp4", frames, 30.0, codec="libx264rgb", crf=0)
        noisy = np.clip(frames + rng.integers(-25, 26, size=frames.shape), 0, 255).astype(np.uint8)
        write_video(rec / f"v{i}.mp4", noisy, 30.0, codec="libx264rgb", crf=0)
    return ref, rec


def test_workers_give_the_sequential_numbers(tmp_path, pairs, capsys):
    ref, rec = pairs
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        assert (
            main(
                [
                    "eval",
                    "--ref",
                    str(ref),
                    "--rec",
                    str(rec),
                    "-o",
                    str(out),
                    "--workers",
                    str(workers),
                    "--chunk-frames",
                    "4",
                    "--quiet",
                ]
            )
            == 0
        ), capsys.readouterr().err
        results[workers] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert list(two["videos"]) == list(one["videos"]) == ["v0", "v1", "v2"]
    for name, values in one["videos"].items():
        assert (
            list(two["videos"][name]) == list(values) == ["psnr", "ssim", "lpips", "sharpness", "temporal_flickering"]
        )
        for metric, value in values.items():
            assert two["videos"][name][metric] == pytest.approx(value, abs=1e-6)
        for metric, curve in one["per_frame"][name].items():
            np.testing.assert_allclose(two["per_frame"][name][metric], curve, rtol=0, atol=1e-6)
    for metric, value in one["mean"].items():
        assert two["mean"][metric] == pytest.approx(value, abs=1e-6)
    assert available_cores() >= 1
