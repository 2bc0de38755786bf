"""The samplers offered for the DiT: diffusers schedulers on the training noise schedule, and PixArt's
DPM-Solver++ (the release's ``dpms``; ``--preset release`` uses it for ``dpm_solver``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .dpm_solver import PixArtDPMSolverScheduler
from .errors import CascadeVError, first_line
from .rules import TRAIN_TIMESTEPS, check_choice

# The release samples with Euler-ancestral (8 steps); DDIM and DPM-Solver are its alternatives. The names
# a user may give are cascadev.rules.SCHEDULERS; dpm_solver_pixart is what --preset release makes of dpm_solver.
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "euler_a": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
    "dpm_solver_pixart": PixArtDPMSolverScheduler,
}

# Improved-DDPM "linear" schedule of the training recipe (1000 steps), which is diffusers' "linear", and
# the release's epsilon prediction (a config's ``schedule.prediction_type`` may say "v_prediction").
TRAINING_SCHEDULE = dict(
    num_train_timesteps=TRAIN_TIMESTEPS,
    beta_schedule="linear",
    beta_start=0.0001,
    beta_end=0.02,
    prediction_type="epsilon",
)


def noise_schedule(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """A config's ``schedule`` section with every key, the absent ones from ``TRAINING_SCHEDULE``: the one
    noise schedule that training's loss (``GaussianDiffusion.from_schedule``) and the samplers
    (``make_scheduler``) are both built on."""
    return {**TRAINING_SCHEDULE, **dict(section or {})}


def check_steps(steps: int, schedule: Mapping[str, Any]) -> int:
    """``steps`` if the schedule has that many training steps to sample at (DDIM would refuse more)."""
    if steps > schedule["num_train_timesteps"]:
        raise CascadeVError(
            f"{steps} sampling steps are more than the noise schedule's {schedule['num_train_timesteps']} "
            "training steps (schedule.num_train_timesteps)"
        )
    return steps


def make_scheduler(name: str, schedule: dict | None = None) -> SchedulerMixin:
    """A fresh scheduler by name (``euler_a``, ``ddim``, ``dpm_solver``) on the given noise schedule.

    Each scheduler otherwise keeps its diffusers defaults, as the release constructs them.
    """
    scheduler = SCHEDULERS[check_choice(name, SCHEDULERS, "scheduler")]
    try:
        return scheduler(**(schedule or TRAINING_SCHEDULE))
    except ValueError as exc:  # e.g. PixArt's DPM-Solver (--preset release) on a cosine schedule
        raise CascadeVError(f"the {name} scheduler cannot sample this noise schedule: {first_line(exc)}") from None
