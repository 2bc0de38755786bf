"""The improved-DDPM training objective (cascadev.diffusion) against the reference golden numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cascadev.diffusion import GaussianDiffusion, get_named_beta_schedule
from cascadev.errors import CascadeVError

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "iddpm_loss_golden.safetensors"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN))


def _conv_model(weight: torch.Tensor, bias: torch.Tensor, x_ref: torch.Tensor):
    """The golden's fixed 1x1 convolution over cat([x_t, x_ref]); works for 4-D and 5-D inputs."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x_t, x_ref], dim=1)
        out = torch.einsum("oc,nc...->no...", weight, h)
        return out + bias.reshape(1, -1, *([1] * (h.ndim - 2)))

    return model_fn


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_golden_loss_float64(golden):
    diffusion = GaussianDiffusion()
    t = golden["t"].long()
    assert t.tolist() == [0, 1, 17, 250, 613, 999]
    model_fn = _conv_model(golden["weight"], golden["bias"], golden["x_ref"])
    # The golden model is the einsum spelled out in the reference README.
    x_t = golden["x_t"]
    direct = (
        torch.einsum("oc,nchw->nohw", golden["weight"], torch.cat([x_t, golden["x_ref"]], 1))
        + golden["bias"][None, :, None, None]
    )
    torch.testing.assert_close(model_fn(x_t, t), direct, rtol=0, atol=1e-14)

    _assert_close(diffusion.q_sample(golden["x_start"], t, golden["noise"]), golden["x_t"])
    out = diffusion.training_losses(model_fn, golden["x_start"], t, noise=golden["noise"])
    assert set(out) == {"loss", "mse", "vb"}
    for key in ("mse", "vb", "loss"):
        assert out[key].shape == (6,)
        _assert_close(out[key], golden[key])
    # No rescaling of the bound: the loss is exactly the sum.
    torch.testing.assert_close(out["loss"], out["mse"] + out["vb"], rtol=0, atol=0)


def test_golden_float_timesteps_accepted(golden):
    """Whole-number float timesteps (as stored in the golden file) give the same numbers."""
    diffusion = GaussianDiffusion()
    model_fn = _conv_model(golden["weight"], golden["bias"], golden["x_ref"])
    out = diffusion.training_losses(model_fn, golden["x_start"], golden["t"], noise=golden["noise"])
    _assert_close(out["loss"], golden["loss"])


def test_float32_close_to_golden(golden):
    diffusion = GaussianDiffusion()
    f = {k: v.float() for k, v in golden.items()}
    model_fn = _conv_model(f["weight"], f["bias"], f["x_ref"])
    out = diffusion.training_losses(model_fn, f["x_start"], f["t"].long(), noise=f["noise"])
    assert out["loss"].dtype == torch.float32
    torch.testing.assert_close(out["loss"].double(), golden["loss"], rtol=1e-4, atol=1e-5)


def test_linear_schedule_matches_improved_diffusion():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == pytest.approx(1e-4, abs=0) and betas[-1] == pytest.approx(0.02, abs=0)
    np.testing.assert_array_equal(betas, np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    d = GaussianDiffusion()
    assert d.num_timesteps == 1000
    assert d.posterior_log_variance_clipped[0] == d.posterior_log_variance_clipped[1]
    with pytest.raises(CascadeVError, match="beta_schedule"):
        GaussianDiffusion(beta_schedule="quadratic-ish")


@pytest.mark.parametrize(
    "schedule",
    [
        {},
        {"num_train_timesteps": 250, "beta_start": 0.0005, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
    ],
)
def test_training_and_every_sampler_share_the_configs_noise_schedule(schedule):
    """The loss's forward process and the samplers come from one ``schedule``: the same betas and alphas."""
    from cascadev.schedulers import SCHEDULERS, make_scheduler, noise_schedule

    full = noise_schedule(schedule)
    diffusion = GaussianDiffusion.from_schedule(full)
    assert (
        diffusion.num_timesteps == full["num_train_timesteps"] and diffusion.prediction_type == full["prediction_type"]
    )
    for name in SCHEDULERS:
        if name == "dpm_solver_pixart" and full["beta_schedule"] != "linear":
            continue  # PixArt's DPM-Solver takes the linear schedule only (it says so)
        sampler = make_scheduler(name, full)
        if hasattr(sampler, "betas"):
            np.testing.assert_allclose(sampler.betas.double().numpy(), diffusion.betas, rtol=1e-6, atol=0)
            np.testing.assert_allclose(  # float32 products: 1e-5 relative, near 0 absolute
                sampler.alphas_cumprod.double().numpy(), diffusion.alphas_cumprod, rtol=1e-5, atol=1e-12
            )
        else:  # log alpha_t = log sqrt(alpha_bar_t)
            np.testing.assert_allclose(
                sampler.log_alpha_array.double().numpy(), 0.5 * np.log(diffusion.alphas_cumprod), rtol=1e-5
            )
        assert sampler.config.prediction_type == full["prediction_type"]
        # The model is asked at training's own timesteps: within [0, N), the last step near 0.
        sampler.set_timesteps(8)
        ts = sampler.timesteps.double()
        assert 0 <= ts.min() < 0.25 * diffusion.num_timesteps <= 0.75 * diffusion.num_timesteps < ts.max()
        assert ts.max() < diffusion.num_timesteps, name


def _toy_setup(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_start = torch.randn(shape, generator=gen, dtype=torch.float64).clamp(-1, 1)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    c = shape[1]
    weight = (0.3 * torch.randn(2 * c, c, generator=gen, dtype=torch.float64)).requires_grad_()
    bias = (0.1 * torch.randn(2 * c, generator=gen, dtype=torch.float64)).requires_grad_()
    return x_start, noise, weight, bias


def test_loss_is_differentiable_and_vb_only_trains_the_variance():
    diffusion = GaussianDiffusion()
    x_start, noise, weight, bias = _toy_setup((3, 4, 5, 6))
    t = torch.tensor([0, 40, 700])
    outputs = {}

    def model_fn(x_t, t_):
        out = torch.einsum("oc,nchw->nohw", weight, x_t) + bias[None, :, None, None]
        out.retain_grad()
        outputs["out"] = out
        return out

    losses = diffusion.training_losses(model_fn, x_start, t, noise=noise)
    # The bound reaches the variance channels only; the noise channels see none of it.
    losses["vb"].sum().backward(retain_graph=True)
    g = outputs["out"].grad
    assert torch.count_nonzero(g[:, :4]) == 0
    assert g[:, 4:].abs().sum() > 0
    # The MSE reaches the noise channels only.
    outputs["out"].grad = None
    losses["mse"].sum().backward(retain_graph=True)
    g = outputs["out"].grad
    assert torch.count_nonzero(g[:, 4:]) == 0
    assert g[:, :4].abs().sum() > 0
    # And the total loss gives a finite, non-zero gradient to the parameters.
    weight.grad = None
    losses["loss"].mean().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()
    assert weight.grad[:4].abs().sum() > 0 and weight.grad[4:].abs().sum() > 0


def test_vb_gradient_matches_finite_difference_in_the_variance_channels():
    diffusion = GaussianDiffusion()
    x_start, noise, _, _ = _toy_setup((2, 3, 4, 4), seed=1)
    t = torch.tensor([0, 123])
    gen = torch.Generator().manual_seed(11)
    v = (0.4 * torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    eps = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)

    def loss_of(vv):
        return diffusion.training_losses(lambda x_t, t_: torch.cat([eps, vv], 1), x_start, t, noise=noise)["vb"].sum()

    loss_of(v).backward()
    direction = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    h = 1e-5
    numeric = (loss_of(v.detach() + h * direction) - loss_of(v.detach() - h * direction)) / (2 * h)
    assert float((v.grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5)


def test_variance_interpolation_endpoints():
    """v = -1 gives the clipped posterior log-variance, v = +1 gives log(beta_t)."""
    diffusion = GaussianDiffusion()
    x_t = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    t = torch.tensor([5, 500])
    out_lo = torch.cat([torch.zeros_like(x_t), -torch.ones_like(x_t)], 1)
    out_hi = torch.cat([torch.zeros_like(x_t), torch.ones_like(x_t)], 1)
    _, lo, _ = diffusion.p_mean_log_variance(out_lo, x_t, t)
    _, hi, _ = diffusion.p_mean_log_variance(out_hi, x_t, t)
    np.testing.assert_allclose(lo.flatten().numpy(), diffusion.posterior_log_variance_clipped[[5, 500]], rtol=1e-6)
    np.testing.assert_allclose(hi.flatten().numpy(), np.log(diffusion.betas[[5, 500]]), rtol=1e-6)


def test_perfect_model_has_zero_mse_and_small_kl():
    """A model that predicts the true noise and the true posterior variance has mse 0 and KL ~ 0."""
    diffusion = GaussianDiffusion()
    x_start, noise, _, _ = _toy_setup((2, 4, 3, 3), seed=2)
    t = torch.tensor([300, 900])

    def oracle(x_t, t_):
        return torch.cat([noise, -torch.ones_like(noise)], 1)  # v = -1: posterior variance

    out = diffusion.training_losses(oracle, x_start, t, noise=noise)
    assert out["mse"].abs().max() == 0
    assert out["vb"].abs().max() < 1e-5


def test_video_shaped_latents_match_the_same_data_as_images(golden):
    """(N, C, T, H, W) inputs give the per-sample numbers of the same values laid out as (N, C, H, T*W)."""
    diffusion = GaussianDiffusion()
    n, t_frames, h, w = 6, 2, 8, 4

    # Re-use the golden data: split each 8x8 latent into 2 "frames" of 8x4.
    def to_video(x):
        return x.reshape(n, x.shape[1], h, t_frames, w).permute(0, 1, 3, 2, 4).contiguous()

    t = golden["t"].long()
    video = diffusion.training_losses(
        _conv_model(golden["weight"], golden["bias"], to_video(golden["x_ref"])),
        to_video(golden["x_start"]),
        t,
        noise=to_video(golden["noise"]),
    )
    for key in ("mse", "vb", "loss"):
        _assert_close(video[key], golden[key])


def test_timestep_checks_and_output_shape_check(golden):
    diffusion = GaussianDiffusion()
    x = torch.zeros(2, 4, 2, 2)
    with pytest.raises(ValueError, match="timesteps"):
        diffusion.q_sample(x, torch.tensor([0, 1000]), torch.zeros_like(x))
    with pytest.raises(ValueError, match="1-D"):
        diffusion.q_sample(x, torch.tensor([0, 1, 2]), torch.zeros_like(x))
    with pytest.raises(CascadeVError, match="out_channels"):
        diffusion.training_losses(lambda x_t, t: x_t, x, torch.tensor([1, 2]))


def test_fixed_variance_mode_is_plain_mse():
    diffusion = GaussianDiffusion(learn_sigma=False)
    x_start, noise, _, _ = _toy_setup((2, 3, 4, 4), seed=3)
    pred = torch.randn_like(noise)
    out = diffusion.training_losses(lambda x_t, t: pred, x_start, torch.tensor([3, 4]), noise=noise)
    torch.testing.assert_close(out["mse"], ((pred - noise) ** 2).mean(dim=(1, 2, 3)))
    assert torch.count_nonzero(out["vb"]) == 0
    torch.testing.assert_close(out["loss"], out["mse"])


def _coefficients(diffusion, t):
    a = torch.from_numpy(diffusion.sqrt_alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    s = torch.from_numpy(diffusion.sqrt_one_minus_alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    return a, s


def test_v_prediction_targets_the_velocity():
    """v = sqrt(abar) noise - sqrt(1 - abar) x_0: the exact v has zero loss, anything else its squared error."""
    diffusion = GaussianDiffusion(learn_sigma=False, prediction_type="v_prediction")
    x_start, noise, _, _ = _toy_setup((3, 4, 5, 5), seed=4)
    t = torch.tensor([0, 400, 999])
    a, s = _coefficients(diffusion, t)
    velocity = a * noise - s * x_start
    exact = diffusion.training_losses(lambda x_t, ts: velocity, x_start, t, noise=noise)
    torch.testing.assert_close(exact["mse"], torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    # The noise is not the v target: at t = 999 (abar ~ 4e-5) v is about -x_0.
    wrong = diffusion.training_losses(lambda x_t, ts: noise, x_start, t, noise=noise)
    torch.testing.assert_close(wrong["mse"], ((noise - velocity) ** 2).mean(dim=(1, 2, 3)))
    assert wrong["mse"][2] > 0.5


def test_v_prediction_bound_sees_the_implied_noise():
    """The variance term of a v model equals the epsilon model's for the v that implies the same noise."""
    eps_diffusion = GaussianDiffusion(prediction_type="epsilon")
    v_diffusion = GaussianDiffusion(prediction_type="v_prediction")
    x_start, noise, _, _ = _toy_setup((3, 4, 5, 5), seed=5)
    t = torch.tensor([0, 17, 613])
    gen = torch.Generator().manual_seed(6)
    eps_pred = torch.randn(noise.shape, generator=gen, dtype=torch.float64)
    var_values = torch.rand(noise.shape, generator=gen, dtype=torch.float64) * 2 - 1
    a, s = _coefficients(v_diffusion, t)
    x_t = v_diffusion.q_sample(x_start, t, noise)
    v_pred = (eps_pred - s * x_t) / a  # so that a * v + s * x_t = eps_pred
    eps_out = eps_diffusion.training_losses(lambda *_: torch.cat([eps_pred, var_values], 1), x_start, t, noise=noise)
    v_out = v_diffusion.training_losses(lambda *_: torch.cat([v_pred, var_values], 1), x_start, t, noise=noise)
    # Not 1e-10: the loss gathers its coefficients through float32, this test's are float64.
    torch.testing.assert_close(v_out["vb"], eps_out["vb"], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(v_out["mse"], eps_out["mse"])


def test_unknown_prediction_type_is_refused():
    with pytest.raises(CascadeVError, match="prediction_type"):
        GaussianDiffusion(prediction_type="sample")


def test_model_kwargs_are_passed_and_default_noise_is_gaussian():
    diffusion = GaussianDiffusion()
    seen = {}

    def model_fn(x_t, t, cond=None):
        seen["cond"] = cond
        return torch.zeros(x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])

    torch.manual_seed(0)
    out = diffusion.training_losses(
        model_fn, torch.zeros(4, 4, 16, 16), torch.full((4,), 999), model_kwargs={"cond": "c"}
    )
    assert seen["cond"] == "c"
    # Zero prediction against unit Gaussian noise: the MSE is the noise's second moment, about 1.
    assert out["mse"].mean().item() == pytest.approx(1.0, abs=0.1)


def test_half_precision_inputs_are_computed_in_float32():
    diffusion = GaussianDiffusion()
    x = torch.rand(2, 4, 4, 4).mul(2).sub(1).to(torch.bfloat16)
    noise = torch.randn(2, 4, 4, 4).to(torch.bfloat16)
    out = diffusion.training_losses(
        lambda x_t, t: torch.zeros(2, 8, 4, 4, dtype=torch.bfloat16), x, torch.tensor([0, 10]), noise=noise
    )
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"]).all()


def test_sample_timesteps_uniform_and_reproducible():
    diffusion = GaussianDiffusion()
    a = diffusion.sample_timesteps(20000, generator=torch.Generator().manual_seed(5))
    b = diffusion.sample_timesteps(20000, generator=torch.Generator().manual_seed(5))
    assert a.dtype == torch.long and a.shape == (20000,)
    assert torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) <= 999
    counts = torch.bincount(a // 100, minlength=10).double()
    # Each tenth of the range holds about 2000 draws (binomial std ~ 42).
    assert (counts - 2000).abs().max() < 250
    assert math.isclose(a.double().mean().item(), 499.5, abs_tol=10)
