"""tools/benchmark.py runs the real file-level tasks end to end and reports every stage."""

import json
import subprocess
import sys
from pathlib import Path

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
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [r["settings"] for r in report["runs"]] == ["release", "default"]
    for run in report["runs"]:
        s = run["seconds"]
        assert len(s["dit_per_step"]) == 2  # one entry per sampling step
        assert all(v > 0 for v in (s["model_loading"], s["read_and_encode"], s["svd_decode"], s["write"]))
        assert s["end_to_end_without_loading"] >= s["dit_total"] + s["svd_decode"]
        assert run["dit_tflop"] > 0 and run["dit_tflop_per_s"] > 0
    # tiny: 6 frames = windows at 0 and 2 (4 frames each), one 8x8 tile, 2 steps.
    assert report["runs"][0]["dit_calls"] == 4  # release settings: one DiT call per window
    assert report["runs"][1]["dit_calls"] == 2  # default: the windows of a step batched into one call
    assert report["release_over_default"]["custom"] > 0
