"""GPU checks (marked ``gpu``; skipped where CUDA is absent, so CI stays CPU-only).

Run on a GPU machine with ``python -m pytest tests -m gpu``.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from einops import rearrange

from cascadev.loading import CUDA_PRECISION, PRECISIONS, load_config
from cascadev.reference import load_golden

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).parents[1]


def golden():
    spec, d, model = load_golden("dit_golden_a")
    x = rearrange(d["io.video.x"], "(b t) c h w -> b c t h w", b=spec["videos"])
    return model, x, d["io.video.t"], d["io.video.y"]


def rel_err(y, ref):
    return ((y.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


@torch.no_grad()
def test_golden_fixture_in_fp32_on_cuda():
    model, x, t, y = golden()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = model.cuda()(x.cuda(), t.cuda())
    assert rel_err(rearrange(out, "b c t h w -> (b t) c h w"), y) < 1e-5  # the CPU test's tolerance


@torch.no_grad()
def test_default_precision_within_its_measured_tolerance():
    model, x, t, y = golden()
    p = PRECISIONS[CUDA_PRECISION]
    half = model.cuda().to(p.dtype)
    with torch.autocast("cuda", dtype=p.autocast or torch.float32, enabled=p.autocast is not None):
        out = half(x.cuda().to(p.dtype), t.cuda())
    # Measured 8.2e-4 (fp16 autocast) on the CPU: docs/benchmarks.md "Inference precision".
    assert rel_err(rearrange(out, "b c t h w -> (b t) c h w"), y) < 3e-3


def test_benchmark_command_end_to_end_on_cuda(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "benchmark.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--device",
        "cuda",
        "--case",
        "custom",
        "--frames",
        "8",
        "--size",
        "128x128",
        "--steps",
        "2",
        "-o",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert all(r["peak_memory_gib"] > 0 and r["mfu"] is not None for r in report["runs"])


def test_training_benchmark_on_cuda(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_train.py"), "--config", str(ROOT / "configs" / "tiny.py")]
    result = subprocess.run([*cmd, "--steps", "3", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["device"] != "cpu" and report["peak_memory_gib"] > 0 and report["mfu"] > 0
    assert len(report["losses"]) == 3


@torch.no_grad()
def test_peak_memory_of_a_long_clip_equals_a_short_one():
    from cascadev.loading import build_pipeline

    cfg = load_config(ROOT / "configs" / "tiny.py")
    pipe = build_pipeline(cfg, ["dit", "vae"], device="cuda", random_init=True, segment_frames=16)
    peaks = []
    for frames in (16, 64):
        latent = torch.randn(16, frames, 8, 8)
        torch.cuda.reset_peak_memory_stats()
        for _ in pipe.decode(lambda a, b: latent[:, a:b], frames, steps=1, progress=False):
            pass
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] <= 1.1 * peaks[0], peaks


def test_cuda_graphs_of_the_compiled_blocks_sample_as_the_eager_dit():
    # sampling.compile=reduce-overhead: each block's CUDA graph replays into one output buffer, shared by
    # the blocks of a pattern; the DiT copies each output out (measured on an H100: 8 steps, -9% DiT time).
    from cascadev.loading import build_pipeline

    cfg = load_config(ROOT / "configs" / "tiny.py")
    cond = torch.randn(8, 16, 16, 16)
    pipes = {
        mode: build_pipeline(cfg, ["dit"], device=torch.device("cuda"), random_init=True, compile=mode)
        for mode in (None, "reduce-overhead")
    }
    pipes["reduce-overhead"].dit.load_state_dict(pipes[None].dit.state_dict())
    samples = {mode: pipe.sample(pipe.condition(cond.transpose(0, 1)), steps=3) for mode, pipe in pipes.items()}
    assert rel_err(samples["reduce-overhead"], samples[None]) < 1e-4


def test_the_compiled_svd_decoder_decodes_as_the_eager_one_on_cuda_in_half_precision():
    # sampling.vae_compile: inductor's fused kernels around cuDNN's convolutions, the same sums. A compiler
    # that failed would fall back to eager with a warning, and pass for the wrong reason: that is an error here.
    from cascadev.loading import build_pipeline

    cfg = load_config(ROOT / "configs" / "tiny.py")
    dtype = PRECISIONS[CUDA_PRECISION].dtype
    latent = torch.randn(4, 4, 16, 16)
    plain, fast = (
        build_pipeline(cfg, ["vae"], device="cuda", dtype=dtype, random_init=True, vae_compile=flag)
        for flag in (False, True)
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="compiling the SVD decoder failed")
        out = fast.vae_decode(latent)
    assert fast.vae.decoder._compiled is not None
    assert rel_err(out, plain.vae_decode(latent)) < 1e-2  # half-precision sums, fused and reordered
