"""PixArt's DPM-Solver++ (the release's ``dpms`` sampler) as a diffusers-style scheduler.

diffusers' ``DPMSolverMultistepScheduler`` discretises time differently, so ``--scheduler dpm_solver``
with the ``release`` preset uses this one: DPM-Solver++ (data prediction), multistep order 2, on the
continuous-time view of the discrete schedule (log alpha interpolated piecewise linearly between the
N training steps at t = (i + 1) / N), time-uniform steps from t = 1 to t = 1 / N, first order for the
first step and (fewer than 10 steps) the last one, no final denoising step. The DiT sees the discrete
time ``1000 * (t - 1 / N)``. Every operation follows PixArt's ``dpm_solver.py`` in float32.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from .diffusion import get_named_beta_schedule
from .rules import PREDICTION_TYPES, TRAIN_TIMESTEPS, check_choice


class PixArtDPMSolverScheduler(SchedulerMixin, ConfigMixin):
    """Multistep DPM-Solver++ (order 2) on PixArt's continuous-time noise schedule.

    Use as a diffusers scheduler: ``set_timesteps(steps)``, then for each ``t`` in ``timesteps``
    ``sample = step(noise_prediction, t, sample).prev_sample``. ``init_noise_sigma`` is 1.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = TRAIN_TIMESTEPS,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        solver_order: int = 2,
        lower_order_final: bool = True,
        prediction_type: str = "epsilon",
    ):
        if beta_schedule != "linear":
            raise ValueError(f"PixArtDPMSolverScheduler supports the linear schedule only, got {beta_schedule!r}")
        check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")
        # PixArt's get_named_beta_schedule('linear') is a float64 numpy linspace, as training's is.
        betas = torch.from_numpy(get_named_beta_schedule("linear", num_train_timesteps, beta_start, beta_end))
        self.log_alpha_array = (0.5 * torch.log(1 - betas).cumsum(0)).float()  # (N,) at t = (i + 1) / N
        self.t_array = torch.linspace(0.0, 1.0, num_train_timesteps + 1)[1:].float()
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.empty(0)

    # ------------------------------------------------------------------ the continuous noise schedule

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear log alpha at continuous times t in [1/N, 1] (float32)."""
        xs, ys = self.t_array.to(t.device), self.log_alpha_array.to(t.device)
        i = torch.searchsorted(xs, t).clamp(1, xs.numel() - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def _coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t, lambda_t) for a scalar time."""
        log_alpha = self._log_alpha(t.reshape(1))[0]
        sigma = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
        return torch.exp(log_alpha), sigma, log_alpha - torch.log(sigma)

    # ------------------------------------------------------------------ diffusers' scheduler interface

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        n = self.config.num_train_timesteps
        self.num_inference_steps = int(num_inference_steps)
        self.t_continuous = torch.linspace(1.0, 1.0 / n, self.num_inference_steps + 1, device=device)
        # The model is evaluated at every time but the last; it sees the discrete time N * (t - 1/N), in [0, N)
        # as in training (PixArt writes 1000 for its N = 1000).
        self.timesteps = (self.t_continuous[:-1] - 1.0 / n) * n
        self._step_index = 0
        self._history: list[torch.Tensor] = []  # data predictions x0 of the last steps, oldest first

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor | float,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One solver step from time ``t_k`` to ``t_{k+1}``, given the model's prediction at ``t_k``."""
        k, steps = self._step_index, self.num_inference_steps
        s, t = self.t_continuous[k], self.t_continuous[k + 1]
        alpha_s, sigma_s, lambda_s = self._coefficients(s)
        alpha_t, sigma_t, lambda_t = self._coefficients(t)
        # DPM-Solver++ works on data predictions x0.
        if self.config.prediction_type == "v_prediction":
            x0 = alpha_s * sample - sigma_s * model_output
        else:
            x0 = (sample - sigma_s * model_output) / alpha_s
        self._history = (self._history + [x0])[-self.config.solver_order :]
        order = min(self.config.solver_order, len(self._history))
        if self.config.lower_order_final and steps < 10:
            order = min(order, steps - k)  # the release's rule: lower orders on the final steps
        h = lambda_t - lambda_s
        phi_1 = torch.expm1(-h)
        if order == 1:
            prev = sigma_t / sigma_s * sample - alpha_t * phi_1 * x0
        else:
            lambda_prev = self._coefficients(self.t_continuous[k - 1])[2]
            r0 = (lambda_s - lambda_prev) / h
            d1 = (1.0 / r0) * (x0 - self._history[-2])
            prev = (sigma_t / sigma_s) * sample - (alpha_t * phi_1) * x0 - 0.5 * (alpha_t * phi_1) * d1
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)
