"""cascadev.evaluation.metrics, vbench and baselines: the metric definitions against their references."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from videos import make_frames, write_test_video

from cascadev.errors import CascadeVError
from cascadev.evaluation import metrics as M
from cascadev.evaluation import vbench as vb
from cascadev.evaluation.baselines import bicubic_folder, bicubic_frames, low_res_size
from cascadev.evaluation.baselines import main as bicubic_main
from cascadev.video_io import VideoReader


def noisy(frames: np.ndarray, amount: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amount, amount + 1, size=frames.shape)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pair():
    ref = make_frames(5, 40, 56)
    return ref, noisy(ref, 12)


# --------------------------------------------------------------------------------------------
# PSNR, SSIM
# --------------------------------------------------------------------------------------------


def test_psnr_equals_scikit_image_per_frame(pair):
    ref, rec = pair
    got = M.psnr(ref, rec)
    want = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(ref, rec)]
    assert got.dtype == np.float64 and got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert 20 < got.mean() < 40


def test_psnr_of_identical_frames_is_the_cap_never_inf():
    frames = make_frames(3, 16, 16)
    assert M.PSNR_CAP_DB == 100.0
    np.testing.assert_array_equal(M.psnr(frames, frames), [100.0] * 3)
    # One differing pixel of a large frame would exceed 100 dB: it is clipped, never above identity.
    big = np.full((1, 512, 512, 3), 100, np.uint8)
    other = big.copy()
    other[0, 0, 0, 0] += 1
    assert M.psnr(big, other)[0] == 100.0
    assert np.isfinite(M.psnr(frames, 255 - frames)).all()


def test_ssim_equals_scikit_image_per_frame(pair):
    ref, rec = pair
    got = M.ssim(ref, rec)
    want = [structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in zip(ref, rec)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(M.ssim(ref, ref), 1.0)


def test_metrics_reject_mismatched_shapes(pair):
    ref, _ = pair
    with pytest.raises(ValueError):
        M.psnr(ref, ref[:, :-1])
    with pytest.raises(ValueError):
        M.ssim(ref.astype(np.float32), ref)


# --------------------------------------------------------------------------------------------
# Temporal flickering
# --------------------------------------------------------------------------------------------


def vbench_formula(frames: np.ndarray) -> float:
    """VBench's temporal flickering, written out: mean over consecutive pairs of the pair's MAE."""
    maes = [
        np.mean(np.abs(frames[i + 1].astype(np.float64) - frames[i].astype(np.float64))) for i in range(len(frames) - 1)
    ]
    return (255.0 - float(np.mean(maes))) / 255.0


@pytest.mark.parametrize("k", [0, 1, 7])
def test_flicker_of_frames_that_step_by_k_levels(k):
    frames = np.stack([np.full((8, 12, 3), 20 + k * t, np.uint8) for t in range(6)])
    assert M.temporal_flickering(frames) == pytest.approx((255 - k) / 255, abs=1e-15)


def test_flicker_streamed_in_chunks_equals_the_formula():
    frames = noisy(make_frames(7, 24, 32), 30, seed=3)
    meter = M.TemporalFlickering()
    for start in range(0, 7, 3):  # chunk boundaries must keep the pair that straddles them
        meter.update(frames[start : start + 3])
    assert meter.num_pairs == 6
    assert meter.score() == pytest.approx(vbench_formula(frames), abs=1e-12)
    assert M.temporal_flickering(frames[:1]) is None


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_lpips():
    torch.manual_seed(0)
    return M.load_lpips("alex", "cpu", random_backbone=True)


def test_lpips_linear_heads_come_from_the_package(random_lpips):
    import lpips

    shipped = torch.load(
        Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu", weights_only=True
    )
    state = random_lpips.state_dict()
    heads = [k for k in shipped if k.startswith("lin")]
    assert len(heads) == 5
    for key in heads:
        assert torch.equal(state[key], shipped[key]), key
    assert not random_lpips.training


def test_lpips_metric_feeds_minus_one_to_one_in_batches(random_lpips):
    ref = make_frames(5, 64, 64)
    rec = noisy(ref, 40)
    got = M.LPIPSMetric(random_lpips, batch_size=2)(ref, rec)
    # lpips' own normalize=True maps [0, 1] inputs to [-1, 1]: an independent route to the same value.
    as_unit = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    with torch.no_grad():
        want = random_lpips(as_unit(ref), as_unit(rec), normalize=True).reshape(-1).double().numpy()
    assert got.shape == (5,) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert (got > 0).all()
    np.testing.assert_array_equal(M.LPIPSMetric(random_lpips)(ref, ref), np.zeros(5))


def test_lpips_without_backbone_names_the_torch_hub_file(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert M.lpips_backbone_path("alex") == expected
    # The file name is the one torchvision itself downloads.
    assert torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url.endswith("/" + expected.name)
    with pytest.raises(M.MetricUnavailable) as info:
        M.load_lpips("alex", "cpu")
    message = str(info.value)
    assert str(expected) in message and "\n" not in message
    assert "download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message


def test_lpips_loads_the_backbone_from_torch_hub_without_network(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.alexnet().state_dict()
    # Only the trunk matters to LPIPS: the classifier's 58M weights are stored as stride-0 views of
    # one zero, so the file stays tiny while torchvision's strict load still accepts it.
    small = {k: v if k.startswith("features") else torch.zeros(()).expand(v.shape) for k, v in state.items()}
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.save(small, hub / "alexnet-owt-7be5be79.pth")
    assert (hub / "alexnet-owt-7be5be79.pth").stat().st_size < 20_000_000
    model = M.load_lpips("alex", "cpu")
    trunk = model.net.slice1[0].weight  # AlexNet's first convolution
    assert torch.equal(trunk, state["features.0.weight"])
    # A file that is not AlexNet's weights: one clear message, no traceback of torchvision's.
    torch.save({k: v for k, v in small.items() if k.startswith("features")}, hub / "alexnet-owt-7be5be79.pth")
    with pytest.raises(M.MetricUnavailable, match="could not load"):
        M.load_lpips("alex", "cpu")


def test_unknown_lpips_net_is_an_error():
    with pytest.raises(CascadeVError, match="Unknown LPIPS network"):
        M.load_lpips("resnet", "cpu")


# --------------------------------------------------------------------------------------------
# VBench
# --------------------------------------------------------------------------------------------


def test_vbench_missing_package_reports_every_dimension(monkeypatch):
    monkeypatch.setitem(sys.modules, "vbench", None)  # import vbench raises ImportError
    reasons = vb.check_vbench(["subject_consistency", "psnr", "aesthetic_quality"])
    assert set(reasons) == {"subject_consistency", "aesthetic_quality"}
    assert all("vbench package is not installed" in r for r in reasons.values())
    scores = vb.run_vbench({"a": "a.mp4"}, ["imaging_quality"], "cpu")
    assert scores.videos == {} and set(scores.unavailable) == {"imaging_quality"}


class FakeVBench:
    """Stands in for vbench.VBench: per-video score = frame count / 100, aggregate 0.5."""

    calls: list = []

    def __init__(self, device, full_info_dir, output_path):
        self.output_path = Path(output_path)
        self.output_path.mkdir(parents=True, exist_ok=True)
        assert json.loads(Path(full_info_dir).read_text()) == []

    def evaluate(self, videos_path, name, dimension_list, local, mode):
        FakeVBench.calls.append((sorted(p.name for p in Path(videos_path).iterdir()), dimension_list, local, mode))
        print("vbench chatter")
        (dim,) = dimension_list
        if dim == "motion_smoothness":
            raise RuntimeError("AMT exploded")
        per_video = [
            {"video_path": str(p), "video_results": VideoReader(p).num_frames / 100}
            for p in sorted(Path(videos_path).iterdir())
        ]
        (self.output_path / f"{name}_eval_results.json").write_text(json.dumps({dim: [0.5, per_video]}))


def test_vbench_runs_in_batch_and_maps_scores_back_to_names(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("vbench")
    fake.VBench = FakeVBench
    monkeypatch.setitem(sys.modules, "vbench", fake)
    cache = tmp_path / "cache"
    for dim in ("subject_consistency", "motion_smoothness", "imaging_quality"):
        for rel in vb.VBENCH_WEIGHT_FILES[dim]:
            (cache / rel).parent.mkdir(parents=True, exist_ok=True)
            (cache / rel).write_bytes(b"x")
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(cache))
    videos = {}
    for name, frames in (("clip b", 3), ("a", 5)):
        videos[name] = tmp_path / f"{name}.mkv"
        write_test_video(videos[name], frames, 16, 16)
    FakeVBench.calls = []
    dims = ["subject_consistency", "motion_smoothness", "imaging_quality", "aesthetic_quality"]
    scores = vb.run_vbench(videos, dims, "cpu")
    assert scores.videos == {
        "clip b": {"subject_consistency": 0.03, "imaging_quality": 0.03},
        "a": {"subject_consistency": 0.05, "imaging_quality": 0.05},
    }
    assert scores.mean == {"subject_consistency": 0.5, "imaging_quality": 0.5}
    assert "AMT exploded" in scores.unavailable["motion_smoothness"]
    assert str(cache / "clip_model" / "ViT-L-14.pt") in scores.unavailable["aesthetic_quality"]
    assert FakeVBench.calls[0] == (["00000.mp4", "00001.mp4"], ["subject_consistency"], True, "custom_input")
    out = capsys.readouterr()
    assert "vbench chatter" not in out.out and "vbench chatter" in out.err


def test_vbench_missing_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vbench", types.SimpleNamespace(VBench=FakeVBench))
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "nowhere"))
    reasons = vb.check_vbench(["background_consistency"])
    assert "nowhere" in reasons["background_consistency"]


# --------------------------------------------------------------------------------------------
# Bicubic baseline
# --------------------------------------------------------------------------------------------


def test_bicubic_baseline_matches_pil_and_keeps_constants():
    assert low_res_size(1024, 1920) == (32, 60)
    assert low_res_size(20, 40) == (1, 1)
    flat = np.full((2, 64, 96, 3), 77, np.uint8)
    np.testing.assert_array_equal(bicubic_frames(flat), flat)
    frames = make_frames(2, 128, 192)
    got = bicubic_frames(frames, 32)
    assert got.shape == frames.shape and got.dtype == np.uint8
    # PIL's bicubic (antialiased when shrinking) is an independent implementation of the same
    # resampling (its kernel uses a=-0.5 where torch uses a=-0.75, hence the small differences).
    for frame, out in zip(frames, got):
        small = Image.fromarray(frame).resize((6, 4), Image.BICUBIC, reducing_gap=None)
        want = np.asarray(small.resize((192, 128), Image.BICUBIC)).astype(int)
        to_pil = np.abs(out.astype(int) - want).mean()
        to_input = np.abs(out.astype(int) - frame).mean()
        assert to_pil < 3.0 and to_pil < to_input / 4, (to_pil, to_input)
    np.testing.assert_array_equal(bicubic_frames(frames, 1), frames)


def test_bicubic_folder_writes_every_video(tmp_path, capsys):
    src = tmp_path / "ref"
    src.mkdir()
    originals = {}
    for name, size in (("a", (64, 96)), ("b", (40, 40))):
        originals[name] = write_test_video(src / f"{name}.mkv", 4, *size, fps=30.0)
    written = bicubic_folder(src, tmp_path / "out", 32, chunk=3, crf=0)
    assert [p.name for p in written] == ["a.mp4", "b.mp4"]
    for name, frames in originals.items():
        video = VideoReader(tmp_path / "out" / f"{name}.mp4")
        assert (video.num_frames, video.height, video.width) == frames.shape[:3]
        assert abs(video.fps - 30.0) < 1e-3
        want = bicubic_frames(VideoReader(src / f"{name}.mkv").read(range(4)))
        assert np.abs(video.read(range(4)).astype(int) - want).mean() < 2.0
    assert bicubic_main([str(tmp_path / "missing"), "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cascadev-bicubic: error:") and "missing" in err[0]
    assert not (tmp_path / "o2").exists()


def test_sharpness_is_the_laplacian_energy_ratio():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(M.sharpness(ref, ref), 1.0)
    # A grey checkerboard of contrast c has Laplacian +-4c at every interior pixel: energy 16c^2.
    board = (np.indices((16, 16)).sum(0) % 2).astype(np.float64)
    ref_c = np.repeat((100 + 40 * board)[None, ..., None], 3, -1).astype(np.uint8)
    rec_c = np.repeat((100 + 20 * board)[None, ..., None], 3, -1).astype(np.uint8)
    np.testing.assert_allclose(M.laplacian_energy(ref_c), [16 * 40.0**2], rtol=1e-9)
    np.testing.assert_allclose(M.sharpness(ref_c, rec_c), [0.25], rtol=1e-9)
    flat = np.full((1, 16, 16, 3), 7, np.uint8)
    assert np.isnan(M.sharpness(flat, ref_c)[0])
