"""Fidelity to the release at real precision: fp32 attention under autocast, the training recipe's lr
and initialisation, the release's temporal cross-fade in the sampling loop, initial latents, the
inference precision policy, and the `release` preset (fp16 timesteps, overwritten tiles, PixArt's
DPM-Solver++, OpenCV preprocessing, truncation)."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_checks import assert_one_line_error, exit_status
from videos import write_test_video

from cascadev.cli import main
from cascadev.dpm_solver import PixArtDPMSolverScheduler
from cascadev.errors import CascadeVError
from cascadev.loading import PRECISIONS, resolve_precision
from cascadev.models import dit as dit_module
from cascadev.models.dit import CascadeDiT
from cascadev.pipeline import CascadeVPipeline
from cascadev.presets import PRESETS, blur_resize, center_square
from cascadev.reconstruct import frames_to_uint8
from cascadev.schedulers import make_scheduler
from cascadev.tiling import Tiling, overwrite_weights, release_crossfade_weights, window_starts
from cascadev.training.optim import scaled_lr
from cascadev.video_io import VideoReader

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
FAST = ["--config", TINY, "--random-init", "--quiet", "--steps", "1"]


def small_dit(lats_per_vid: int = 8) -> CascadeDiT:
    torch.manual_seed(0)
    model = CascadeDiT(
        input_size=4, hidden_size=48, depth=2, num_heads=2, lats_per_vid=lats_per_vid, attn_strides=[[2, 1], None]
    ).eval()
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    return model


# ------------------------------------------------------------------ fp32 attention under autocast


@pytest.mark.parametrize("fp32", [True, False])
def test_fp32_attention_really_runs_in_fp32_under_bf16_autocast(monkeypatch, fp32):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        out = sdpa(q, k, v, *args, **kwargs)
        seen.append((q.dtype, out.dtype))
        return out

    monkeypatch.setattr(dit_module.F, "scaled_dot_product_attention", spy)
    model = small_dit()
    model.set_fp32_attention(fp32)
    x = torch.randn(1, 20, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, torch.tensor([10.0]))
    assert len(seen) == 2  # one attention product per block
    want = torch.float32 if fp32 else torch.bfloat16
    assert all(q == want and out == want for q, out in seen), seen


# ------------------------------------------------------------------ training recipe


def test_auto_lr_sqrt_rule_gives_the_release_rates():
    assert scaled_lr(2e-5, 4, "sqrt") == pytest.approx(2.5e-6)
    assert scaled_lr(2e-5, 32, "sqrt") == pytest.approx(7.0711e-6, rel=1e-4)
    assert scaled_lr(2e-5, 256, "sqrt") == pytest.approx(2e-5)
    assert scaled_lr(2e-5, 512, "linear") == pytest.approx(4e-5)
    assert scaled_lr(2e-5, 4, None) == 2e-5
    with pytest.raises(CascadeVError, match="auto_lr"):
        scaled_lr(2e-5, 4, "cubic")


def test_release_config_fine_tunes_with_the_sqrt_rule():
    from cascadev.loading import load_config

    cfg = load_config(ROOT / "configs" / "s1024_effn_f32.py")
    assert cfg.auto_lr == dict(rule="sqrt")
    assert "pretrained/s1024.effn-f32.safetensors" in list(cfg.load_from)
    assert load_config(TINY).auto_lr.rule is None and load_config(TINY).load_from is None


@pytest.fixture
def train_run(tmp_path):
    from accelerate.state import AcceleratorState

    write_test_video(tmp_path / "v.mp4", 6, 64, 64, fps=24.0)
    (tmp_path / "list.txt").write_text("v.mp4\nv.mp4\n")

    def run(config_body: str, *extra):
        cfg = tmp_path / "cfg.py"
        cfg.write_text(f"_base_ = ['{TINY}']\nvideo_list = ['{tmp_path / 'list.txt'}']\n{config_body}\n")
        try:
            return main(
                [
                    "train",
                    str(cfg),
                    "--work-dir",
                    str(tmp_path / "w"),
                    "--random-init",
                    "--device",
                    "cpu",
                    *map(str, extra),
                ]
            )
        finally:
            AcceleratorState._reset_state(True)

    return run


def test_training_uses_the_sqrt_scaled_lr_and_prints_it(train_run, tmp_path, capsys):
    assert train_run("auto_lr = dict(rule='sqrt')\nsave_model_steps = 100", "--max-steps", 1) == 0
    out = capsys.readouterr().out
    expected = 3e-4 * (2 / 256) ** 0.5  # tiny's lr, global batch 2 on one process
    assert f"learning rate {expected:.4g}" in out
    record = json.loads((tmp_path / "w" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["lr"] == pytest.approx(expected)


def test_missing_load_from_is_one_line_naming_the_override(train_run, capsys):
    code = train_run("load_from = 'pretrained/nowhere.pth'", "--max-steps", 1)
    assert_one_line_error(code, capsys.readouterr().err, "load_from pretrained/nowhere.pth", "load_from=None")


# ------------------------------------------------------------------ the release's temporal cross-fade


def test_release_crossfade_weights_at_thirteen_frames():
    starts = window_starts(13, 8, 4)
    assert starts == [0, 4, 5]
    w = release_crossfade_weights(13, 8, starts).double()
    # Frame 6 is covered by windows 0, 1 and 2 (at their positions 6, 2, 1): 5/18, 5/9, 1/6.
    assert w[0, 6].item() == pytest.approx(5 / 18, abs=1e-7)
    assert w[1, 2].item() == pytest.approx(5 / 9, abs=1e-7)
    assert w[2, 1].item() == pytest.approx(1 / 6, abs=1e-7)


def release_ddim_loop(model, cond, latents, steps):
    """The release's sampling loop, written out: windows in order, each blended into a running z."""
    sched = make_scheduler("ddim")
    sched.set_timesteps(steps)
    x, length = latents.clone(), 8
    starts = window_starts(x.shape[0], length, length // 2)
    for t in sched.timesteps:
        z = torch.zeros_like(x)
        end = None
        for beg in starts:
            inputs = torch.cat([x, cond], 1)[beg : beg + length].transpose(0, 1)[None]
            pred = model(inputs, torch.tensor([float(t)]))[0, :4].transpose(0, 1)
            overlap = 0 if end is None else end - beg
            if overlap < 2:
                z[beg : beg + length] = pred
            else:
                w = torch.ones(length)
                w[:overlap] = torch.linspace(0, 1, overlap)
                w = w[:, None, None, None]
                z[beg : beg + length] = z[beg : beg + length] * (1 - w) + pred * w
            end = beg + length
        x = sched.step(z, t, x).prev_sample
    return x / 0.13025


@pytest.mark.parametrize("frames", [8, 13, 16, 21, 29])
@torch.no_grad()
def test_ddim_sampling_equals_the_release_loop_for_any_length(frames):
    model = small_dit()
    cond = torch.randn(frames, 16, 4, 4) * 0.13025
    latents = torch.randn(frames, 4, 4, 4)
    pipe = CascadeVPipeline(dit=model, batch_size=3)
    ours = pipe.sample(cond, scheduler="ddim", steps=3, latents=latents)
    theirs = release_ddim_loop(model, cond, latents, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ initial latents


@torch.no_grad()
def test_initial_latents_in_sample_and_decode():
    model = small_dit()
    pipe = CascadeVPipeline(dit=model, segment_frames=0)
    pipe.vae = None
    cond = torch.randn(16, 10, 1, 1)
    noise = torch.randn(10, 4, 4, 4)
    a = pipe.sample(pipe.condition(cond), scheduler="ddim", steps=2, latents=noise)
    b = pipe.sample(pipe.condition(cond), scheduler="ddim", steps=2, latents=noise, seed=123)
    c = pipe.sample(pipe.condition(cond), scheduler="ddim", steps=2)
    torch.testing.assert_close(a, b)  # DDIM is deterministic: the seed only drew the initial noise
    assert (a - c).abs().max() > 1e-3
    captured = []
    pipe.vae_decode = lambda z, chunk=None: captured.append(z) or torch.zeros(z.shape[0], 3, 8, 8)
    list(pipe.decode(lambda t0, t1: cond[:, t0:t1], 10, scheduler="ddim", steps=2, progress=False, latents=noise))
    torch.testing.assert_close(torch.cat(captured), a)
    with pytest.raises(CascadeVError, match="latents must have shape"):
        pipe.sample(pipe.condition(cond), latents=noise[:3])


# ------------------------------------------------------------------ precision policy


def test_precision_policy():
    assert resolve_precision("auto", torch.device("cpu")) == PRECISIONS["fp32"]
    cuda = resolve_precision("auto", torch.device("cuda"))
    assert cuda.dtype == torch.float16 and cuda.autocast == torch.float16  # the measured choice
    assert resolve_precision("bf16", torch.device("cpu")).autocast is None
    with pytest.raises(CascadeVError, match="needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))


@torch.no_grad()
def test_half_precision_layernorm_is_fp32_under_autocast():
    model = small_dit()
    ref = model(torch.randn(1, 20, 8, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([500.0]))
    x = torch.randn(1, 20, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    half = small_dit().half()
    with torch.autocast("cpu", dtype=torch.float16):
        y = half(x.half(), torch.tensor([500.0]))
    err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < 5e-3  # fp16 arithmetic, not garbage
    norm = half.blocks[0].norm1
    with torch.autocast("cpu", dtype=torch.float16):
        assert norm(torch.randn(2, 48).half()).dtype == torch.float32
    assert norm(torch.randn(2, 48).half()).dtype == torch.float16


# ------------------------------------------------------------------ the release preset


@torch.no_grad()
def test_release_preset_rounds_timesteps_to_fp16(monkeypatch):
    seen = []
    model = small_dit()
    forward = model.forward
    model.forward = lambda x, t, **kw: seen.append(t[0].item()) or forward(x, t, **kw)
    pipe = CascadeVPipeline(dit=model, round_timesteps=True)
    pipe.sample(torch.zeros(8, 16, 4, 4), scheduler="euler_a", steps=8)
    assert seen == [999.0, 856.5, 713.5, 571.0, 428.25, 285.5, 142.75, 0.0]


def test_overwrite_tiles_give_each_position_to_the_last_tile():
    starts = window_starts(20, 8, 6)  # [0, 6, 12]
    w = overwrite_weights(20, 8, starts)
    assert w[0].tolist() == [1] * 6 + [0, 0] and w[1].tolist() == [1] * 6 + [0, 0] and w[2].tolist() == [1] * 8
    tiling = Tiling((8, 20, 20), 8, 8, 6, tile_blend="overwrite")
    total = torch.zeros(8, 20, 20)
    for t0, r0, c0, weight in tiling:
        assert set(weight.unique().tolist()) <= {0.0, 1.0}
        total[t0 : t0 + 8, r0 : r0 + 8, c0 : c0 + 8] += weight
    assert torch.equal(total, torch.ones_like(total))


def test_pixart_dpm_solver_schedule_and_convergence():
    sched = PixArtDPMSolverScheduler()
    # log alpha interpolates PixArt's discrete array exactly at t = (i + 1) / N.
    torch.testing.assert_close(sched._log_alpha(sched.t_array), sched.log_alpha_array)
    sched.set_timesteps(8)
    expected = 999.0 - 124.875 * torch.arange(8)
    torch.testing.assert_close(sched.timesteps, expected)
    # With exact noise predictions for a fixed x0, DPM-Solver++ lands on x0 (up to sigma at t = 1e-3).
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    for k, t in enumerate(sched.timesteps):
        alpha, sigma, _ = sched._coefficients(sched.t_continuous[k])
        x = sched.step((x - alpha * x0) / sigma, t, x).prev_sample
    _, sigma_end, _ = sched._coefficients(sched.t_continuous[-1])
    assert (x - x0).abs().max() < 5 * sigma_end
    assert PRESETS["release"].scheduler("dpm_solver") == "dpm_solver_pixart"
    assert PRESETS["default"].scheduler("dpm_solver") == "dpm_solver"


def test_release_preprocessing_and_quantisation():
    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    square = center_square(frames)
    assert square.shape == (2, 40, 40, 3) and np.array_equal(square, frames[:, :, 10:50])
    out = blur_resize(square, 32)
    expected = cv2.resize(cv2.blur(square[1], (3, 3)), (32, 32), interpolation=cv2.INTER_LINEAR)
    assert out.shape == (2, 32, 32, 3) and np.array_equal(out[1], expected)
    same = blur_resize(square, None)  # the blur is applied at scale 1 too
    assert np.array_equal(same[0], cv2.blur(square[0], (3, 3)))
    x = torch.full((1, 3, 2, 2), 0.999)
    assert frames_to_uint8(x, 2, 2, truncate=True).max() == 254  # 127.5 * 0.999 + 127.5 = 254.87
    assert frames_to_uint8(x, 2, 2).max() == 255
    assert PRESETS["release"].vae_chunk(25, 8) == 5 and PRESETS["release"].vae_chunk(8, 8) == 4
    assert PRESETS["default"].vae_chunk(25, 8) == 8


def test_recon_with_the_release_preset(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "wide.mp4"
    write_test_video(clip, 5, 48, 80, fps=12.0)
    chunks, vae_decode = [], CascadeVPipeline.vae_decode
    monkeypatch.setattr(
        CascadeVPipeline, "vae_decode", lambda self, z, chunk=None: chunks.append(chunk) or vae_decode(self, z, chunk)
    )
    code = main(["recon", str(clip), "-o", str(tmp_path / "out"), "--preset", "release", "--size", "32", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert set(chunks) == {4}  # the release's SVD chunk for a clip that is not 25 frames long
    assert "release preset: noise comes from cascadev's per-frame generators" in captured.err
    recon = VideoReader(tmp_path / "out" / "recon.mp4")
    assert (recon.height, recon.width, recon.num_frames) == (32, 32, 5)  # square crop, resized
    assert_one_line_error(
        exit_status(main, ["recon", str(clip), "-o", str(tmp_path / "x"), "--preset", "bogus", *FAST]),
        capsys.readouterr().err,
        "--preset",
    )
