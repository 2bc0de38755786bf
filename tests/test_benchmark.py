"""tools/benchmark.py runs the real file-level tasks end to end and reports every stage."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def test_benchmark_reports_every_stage_on_a_tiny_config(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "benchmark.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--device",
        "cpu",
        "--case",
        "custom",
        "--frames",
        "6",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--settings",
        "both",
        "-o",
        str(out),
        "--cfg-options",
        "sampling.attention_backend=math",  # a speed lever, for the default settings' run
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["cfg_options"] == ["sampling.attention_backend=math"]
    assert [r["settings"] for r in report["runs"]] == ["release", "default"]
    for run in report["runs"]:
        s = run["seconds"]
        assert len(s["dit_per_step"]) == 2  # one entry per sampling step
        assert all(v > 0 for v in (s["model_loading"], s["read_and_encode"], s["svd_decode"], s["write"]))
        assert 0 < s["write_wait"] < s["end_to_end_without_loading"]
        assert s["end_to_end_without_loading"] >= s["dit_total"] + s["svd_decode"]
        assert run["dit_tflop"] > 0 and run["dit_tflop_per_s"] > 0
    # tiny: 6 frames = windows at 0 and 2 (4 frames each), one 8x8 tile, 2 steps.
    assert report["runs"][0]["dit_calls"] == 4  # release settings: one DiT call per window
    assert report["runs"][1]["dit_calls"] == 2  # default: the windows of a step batched into one call
    assert report["release_over_default"]["custom"] > 0


def test_training_benchmark_runs_the_trainer_and_reports_its_figures(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_train.py"), "--config", str(ROOT / "configs" / "tiny.py")]
    cmd += ["--device", "cpu", "--steps", "2", "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert len(report["losses"]) == 2 and all(0 < loss < 10 for loss in report["losses"])  # one per step
    assert report["samples_per_sec"] > 0 and report["dit_train_tflop_per_sample"] > 0
    assert report["clip"] == {"frames": 4, "size": 64, "batch": 2}  # tiny's clip and batch
    assert report["recipe"]["optimizer"] == "CAME"
    assert report["mfu"] is None and report["peak_memory_gib"] is None  # no GPU, no peak to divide by


def test_training_benchmark_flops_are_three_forwards_of_one_window():
    sys.path.insert(0, str(ROOT / "tools"))
    from benchmark_dit import dit_flops
    from benchmark_train import train_flops_per_sample

    from cascadev.loading import load_config
    from cascadev.models import build_model

    cfg = load_config(ROOT / "configs" / "s1024_effn_f32.py")
    with torch.device("meta"):
        dit = build_model(dict(cfg.model, in_channels=20))
    # 101.0 TFLOP per 8 x 1024 x 1024 window (docs/benchmarks.md), three of them per trained clip.
    assert abs(dit_flops(dit, 8, 128, 128) / 1e12 - 101.0) < 0.05
    assert train_flops_per_sample(cfg) == 3 * dit_flops(dit, 8, 128, 128)
