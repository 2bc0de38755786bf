"""The training objective: improved-DDPM (Nichol & Dhariwal 2021) with a learned variance range.

The DiT is trained as the release trains it: ``num_timesteps`` (1000) steps with the "linear" beta
schedule, epsilon prediction, and a learned interpolation of the reverse-process log-variance. The
per-sample loss is

    loss = mse + vb

* ``mse``: mean over all non-batch dimensions of ``(prediction - target) ** 2``. The target is the
  noise (``prediction_type="epsilon"``, the release's) or the velocity ``v = sqrt(abar_t) noise -
  sqrt(1 - abar_t) x_0`` (``"v_prediction"``, Salimans & Ho 2022, diffusers' name);
* ``vb``: the variational-bound term in bits per dimension, computed with the predicted mean
  *detached* (so it trains only the variance channels): ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``
  for ``t > 0`` and the discretised Gaussian decoder negative log-likelihood at ``t = 0``. It is not
  rescaled (improved-diffusion's ``LossType.MSE``, not ``RESCALED_MSE``). A v prediction enters it as
  the noise it implies, ``sqrt(abar_t) v + sqrt(1 - abar_t) x_t``.

Why v: with epsilon, the x_0 estimate at the noisy end is ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``,
and ``1 / sqrt(abar_999)`` is about 150 on the linear schedule, so a small model's noise error becomes a
huge x_0 error there; a v model predicts about ``-x_0`` at that end instead. The released DiT is epsilon.

Latents may be images ``(N, C, H, W)`` or videos ``(N, C, T, H, W)``: every per-sample quantity is a
mean over all non-batch dimensions, and one timestep is used per sample (shared by its frames).
All schedule arrays are float64 numpy arrays. They are gathered per sample as float32 values, as the
reference implementation does (improved-diffusion's ``_extract_into_tensor`` ends in ``.float()``, and
the golden test reproduces the reference to 1e-10 only with that rounding), then cast to the dtype of
the input; float16/bfloat16 inputs are computed in float32, since the bound's logs and exps are not
safe in half precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from cascadev.errors import CascadeVError
from cascadev.rules import PREDICTION_TYPES, check_choice

__all__ = [
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
]

_LN2 = math.log(2.0)


def get_named_beta_schedule(
    name: str, num_timesteps: int, beta_start: float = 0.0001, beta_end: float = 0.02
) -> np.ndarray:
    """float64 betas ``(num_timesteps,)`` of a named schedule: the ones diffusers' schedulers build (in
    float32) from the same arguments, so that training and sampling share one noise schedule.

    ``"linear"``: ``beta_start`` .. ``beta_end`` evenly (the defaults are Ho et al.'s and the release's,
    over 1000 steps). ``"squaredcos_cap_v2"`` (alias ``"cosine"``): alpha_bar(s) =
    cos((s + 0.008) / 1.008 * pi / 2) ** 2, betas capped at 0.999 (``beta_start`` and ``beta_end`` unused).
    """
    if int(num_timesteps) != num_timesteps or num_timesteps < 2:
        raise CascadeVError(f"The number of diffusion steps must be a whole number of at least 2, got {num_timesteps}.")
    n = int(num_timesteps)
    if name == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if name in ("cosine", "squaredcos_cap_v2"):

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return np.asarray(betas, dtype=np.float64)
    raise CascadeVError(f"Unknown beta_schedule {name!r}; expected 'linear' or 'squaredcos_cap_v2' ('cosine').")


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: ``(N, ...) -> (N,)``."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats (broadcasts)."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF that improved-diffusion's bound uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of ``x`` in [-1, 1] under a Gaussian discretised to 256 bins.

    Each value owns the bin ``x +- 1/255``; values beyond +-0.999 own the whole tail on their side.
    Probabilities are clamped at 1e-12 before the log.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


class GaussianDiffusion:
    """improved-DDPM forward process and training loss (epsilon or v prediction, learned variance range).

    Attributes (float64 numpy, shape ``(num_timesteps,)``): ``betas``, ``alphas_cumprod``,
    ``alphas_cumprod_prev``, ``posterior_variance``, ``posterior_log_variance_clipped`` and the
    coefficients derived from them.

    With ``learn_sigma=True`` the model outputs ``2 * C`` channels for a ``C``-channel input: the first
    ``C`` are the prediction (the noise, or the velocity: ``prediction_type``), the last ``C`` are the
    variance values ``r`` in [-1, 1] (not enforced), which set the reverse-process log-variance to
    ``frac * log(beta_t) + (1 - frac) * log(posterior_variance_t)`` with ``frac = (r + 1) / 2``. With
    ``learn_sigma=False`` the model outputs ``C`` channels and the loss is the MSE alone (``vb`` is zero).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
        learn_sigma: bool = True,
        prediction_type: str = "epsilon",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ) -> None:
        betas = get_named_beta_schedule(beta_schedule, num_timesteps, beta_start, beta_end)
        self.num_timesteps = int(betas.shape[0])
        self.beta_schedule = beta_schedule
        self.learn_sigma = bool(learn_sigma)
        self.prediction_type = check_choice(prediction_type, PREDICTION_TYPES, "prediction_type")

        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log takes the t = 1 value there instead.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)
        # float32 copies of the arrays above, per device, made on first use (see _gather).
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    @classmethod
    def from_schedule(cls, schedule: Mapping[str, Any], learn_sigma: bool = True) -> GaussianDiffusion:
        """The training process of a config's ``schedule`` (:func:`cascadev.schedulers.noise_schedule`): the
        noise schedule the samplers are built on (``make_scheduler``), and its ``prediction_type``."""
        return cls(
            num_timesteps=schedule["num_train_timesteps"],
            beta_schedule=schedule["beta_schedule"],
            beta_start=schedule["beta_start"],
            beta_end=schedule["beta_end"],
            learn_sigma=learn_sigma,
            prediction_type=schedule["prediction_type"],
        )

    # ----------------------------------------------------------------------------------------
    # helpers
    # ----------------------------------------------------------------------------------------

    def _check_t(self, t: torch.Tensor, n: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.shape[0] != n:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"t must be a 1-D tensor of {n} timesteps, got {shape}")
        if t.is_floating_point():
            if not torch.equal(t, t.round()):
                raise ValueError("t must hold whole timesteps")
            t = t.long()
        if n and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}], got {int(t.min())}..{int(t.max())}")
        return t.long()

    @staticmethod
    def _work_dtype(x: torch.Tensor) -> torch.dtype:
        return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype

    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``self.<name>[t]`` as a ``(N, 1, 1, ...)`` tensor that broadcasts against ``like`` (N, ...).

        The float64 values pass through float32 on the way, exactly as the reference's
        ``_extract_into_tensor`` (``.float()``) does; the golden loss test pins this rounding.
        """
        key = (name, t.device)
        table = self._tables.get(key)
        if table is None:
            table = torch.from_numpy(getattr(self, name)).to(device=t.device, dtype=torch.float32)
            self._tables[key] = table
        values = table[t].to(device=like.device, dtype=self._work_dtype(like))
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    # ----------------------------------------------------------------------------------------
    # forward process
    # ----------------------------------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise ``x_start`` (N, ...) to timesteps ``t`` (N,): ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
        if noise.shape != x_start.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, x_start {tuple(x_start.shape)}; they must match")
        t = self._check_t(t, x_start.shape[0])
        return (
            self._gather("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``, both broadcastable to x_t."""
        mean = (
            self._gather("posterior_mean_coef1", t, x_t) * x_start + self._gather("posterior_mean_coef2", t, x_t) * x_t
        )
        return mean, self._gather("posterior_log_variance_clipped", t, x_t)

    def p_mean_log_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reverse-process ``(mean, log_variance, pred_xstart)`` from a ``(N, 2C, ...)`` model output.

        No clipping of the predicted x_0 (training uses the raw prediction).
        """
        eps, v = torch.split(model_output, x_t.shape[1], dim=1)
        min_log = self._gather("posterior_log_variance_clipped", t, x_t)
        max_log = self._gather("log_betas", t, x_t)
        frac = (v + 1.0) / 2.0
        log_variance = frac * max_log + (1.0 - frac) * min_log
        pred_xstart = (
            self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )
        mean, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return mean, log_variance, pred_xstart

    def vb_terms_bpd(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample variational-bound term in bits per dimension, ``(N,)``.

        ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` where ``t > 0``, the decoder NLL of ``x_start``
        where ``t == 0``. Gradients flow through whatever ``model_output`` carries (the caller detaches
        the eps half).
        """
        true_mean, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        mean, log_var, _ = self.p_mean_log_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / _LN2
        nll = -discretized_gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_var)
        nll = mean_flat(nll) / _LN2
        return torch.where(t == 0, nll, kl)

    # ----------------------------------------------------------------------------------------
    # training
    # ----------------------------------------------------------------------------------------

    def training_losses(
        self,
        model_fn: Callable[..., torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses for clean latents ``x_start`` (N, C, ...) at timesteps ``t`` (N,).

        ``model_fn(x_t, t, **model_kwargs)`` must return ``(N, 2C, ...)`` (``(N, C, ...)`` when
        ``learn_sigma`` is False). ``noise`` defaults to ``torch.randn_like(x_start)``. Returns
        ``{"loss", "mse", "vb"}``, each ``(N,)``; ``loss = mse + vb``.
        """
        if x_start.ndim < 2:
            raise ValueError(f"x_start must be (N, C, ...), got shape {tuple(x_start.shape)}")
        t = self._check_t(t, x_start.shape[0])
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = model_fn(x_t, t, **(model_kwargs or {}))
        n, c = x_start.shape[:2]
        expected = (n, 2 * c if self.learn_sigma else c, *x_start.shape[2:])
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise CascadeVError(
                f"The model returned {got} for a {tuple(x_start.shape)} latent but the loss needs "
                f"{expected} (learn_sigma={self.learn_sigma}); check the model's out_channels."
            )
        work = self._work_dtype(x_start)
        x_start, x_t, noise = x_start.to(work), x_t.to(work), noise.to(work)
        pred, var_values = torch.split(output.to(work), c, dim=1) if self.learn_sigma else (output.to(work), None)
        if self.prediction_type == "v_prediction":
            a, s = self._gather("sqrt_alphas_cumprod", t, x_t), self._gather("sqrt_one_minus_alphas_cumprod", t, x_t)
            target = a * noise - s * x_start
            eps = a * pred + s * x_t  # the noise the v prediction implies (a**2 + s**2 = 1)
        else:
            target, eps = noise, pred
        if var_values is not None:
            # The bound trains the variance only: the mean it sees is a constant.
            vb = self.vb_terms_bpd(torch.cat([eps.detach(), var_values], dim=1), x_start, x_t, t)
        else:
            vb = torch.zeros(n, dtype=work, device=x_start.device)
        mse = mean_flat((target - pred) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def sample_timesteps(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` timesteps drawn uniformly from ``[0, num_timesteps)``: long ``(n,)`` on ``device``.

        The draw happens on the generator's device (CPU for ``None``) and is then moved, so a CPU
        generator gives the same timesteps whatever ``device`` is.
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(0, self.num_timesteps, (int(n),), generator=generator, device=gen_device)
        return t.to(device) if device is not None else t
