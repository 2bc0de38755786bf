"""Every sampler follows the schedule's ``prediction_type``: fed the exact prediction for a one-point data
distribution, each lands on that point, for epsilon and for v models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cascadev.errors import CascadeVError
from cascadev.schedulers import SCHEDULERS, TRAINING_SCHEDULE, make_scheduler


def _exact_prediction(sample: torch.Tensor, t: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The noise or v that a perfect model of the one-point distribution ``target`` predicts.

    ``sample`` is the scheduler's model input, a variance-preserving x_t; abar at a fractional timestep is
    interpolated like diffusers' Euler sigmas (the last step, at t = 0, is exact in every scheduler).
    """
    abar = 1.0 / (1.0 + np.interp(float(t), np.arange(1000), _sigmas()) ** 2)
    a, s = abar**0.5, (1.0 - abar) ** 0.5
    noise = (sample - a * target) / s
    return noise if kind == "epsilon" else a * noise - s * target


def _sigmas() -> np.ndarray:
    betas = np.linspace(TRAINING_SCHEDULE["beta_start"], TRAINING_SCHEDULE["beta_end"], 1000)
    abar = np.cumprod(1.0 - betas)
    return ((1.0 - abar) / abar) ** 0.5


def _trajectory(name: str, steps: int, model_kind: str, schedule_kind: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every sample of ``name`` over ``steps``, the scheduler told ``schedule_kind``, fed a perfect
    ``model_kind`` model of a one-point distribution; and that point."""
    sched = make_scheduler(name, {**TRAINING_SCHEDULE, "prediction_type": schedule_kind})
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 4, 6, 6, generator=gen) * 2 - 1
    samples = [torch.randn(target.shape, generator=gen) * sched.init_noise_sigma]
    for t in sched.timesteps:
        prediction = _exact_prediction(sched.scale_model_input(samples[-1], t), t, target, model_kind)
        samples.append(sched.step(prediction, t, samples[-1], generator=gen).prev_sample)
    return samples, target


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_v_model_steps_like_the_same_epsilon_model(name):
    """The same perfect model, as noise under "epsilon" and as v under "v_prediction", gives the same
    trajectory, and it lands on the data; a v model read as noise strays at the first step."""
    eps_run, target = _trajectory(name, 8, "epsilon", "epsilon")
    v_run, _ = _trajectory(name, 8, "v_prediction", "v_prediction")
    for eps_sample, v_sample in zip(eps_run, v_run):
        scale = eps_sample.norm()
        assert (v_sample - eps_sample).norm() / scale < 1e-3
    # PixArt's DPM-Solver stops at t = 1/N (sigma ~ 0.01), the others at 0.
    assert (v_run[-1] - target).norm() / target.norm() < 0.03
    misread, _ = _trajectory(name, 8, "v_prediction", "epsilon")
    assert (misread[1] - eps_run[1]).norm() / eps_run[1].norm() > 0.1


def test_pixart_dpm_solver_refuses_an_unknown_prediction_type():
    with pytest.raises(CascadeVError, match="prediction_type"):
        make_scheduler("dpm_solver_pixart", {**TRAINING_SCHEDULE, "prediction_type": "sample"})
