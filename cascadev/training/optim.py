"""Optimisers and learning-rate schedules of the training configs."""

from __future__ import annotations

import math

import torch
from diffusers.optimization import get_constant_schedule_with_warmup
from torch import nn

from ..errors import CascadeVError, first_line


def build_optimizer(model: nn.Module, spec: dict) -> torch.optim.Optimizer:
    """``dict(type='CAME' | 'AdamW', lr=..., weight_decay=..., betas=..., eps=...)`` over the trainable parameters.

    CAME (the release's optimiser, three betas and two eps) comes from the came-pytorch package.
    """
    spec = dict(spec)
    kind = spec.pop("type", "CAME")
    params = [p for p in model.parameters() if p.requires_grad]
    if kind in ("CAME", "CAMEWrapper"):
        from came_pytorch import CAME as optimizer

        # CAME indexes its betas and eps only at the first step: their counts are checked here.
        betas, eps, hint = 3, 2, "optimizer.betas=(0.9,0.999,0.9999) optimizer.eps=(1e-30,1e-16)"
    elif kind == "AdamW":
        optimizer, betas, eps, hint = torch.optim.AdamW, 2, 1, "optimizer.betas=(0.9,0.999) optimizer.eps=1e-8"
    else:
        raise CascadeVError(f"unknown optimizer {kind!r} in the config; choose CAME or AdamW")
    given_eps = spec.get("eps")
    eps_count = None if given_eps is None else len(given_eps) if isinstance(given_eps, (tuple, list)) else 1
    if ("betas" in spec and len(tuple(spec["betas"])) != betas) or eps_count not in (None, eps):
        raise CascadeVError(f"{kind} takes {betas} betas and {eps} eps: set {hint}")
    try:
        return optimizer(params, **spec)
    except (TypeError, ValueError) as exc:  # an unknown argument, or a value out of range
        raise CascadeVError(f"the config's optimizer {kind} cannot be built: {first_line(exc)}") from None


def scaled_lr(base_lr: float, global_batch: int, rule: str | None) -> float:
    """PixArt's ``auto_lr``: the learning rate for a global batch, from a base rate meant for 256.

    ``sqrt``: ``base_lr * sqrt(global_batch / 256)`` (the release: base 2e-5 with 4 clips per GPU gives
    2.5e-6 on 1 GPU, 7.07e-6 on 8, 2e-5 on 64); ``linear``: ``base_lr * global_batch / 256``; ``None``:
    ``base_lr`` as it is.
    """
    if rule is None:
        return float(base_lr)
    if rule == "sqrt":
        return float(base_lr) * math.sqrt(global_batch / 256)
    if rule == "linear":
        return float(base_lr) * global_batch / 256
    raise CascadeVError(f"auto_lr.rule must be sqrt or linear (or auto_lr=None), got {rule!r}")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, num_warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``num_warmup_steps`` scheduler steps, then constant (the release's schedule). The
    trainer passes optimizer steps x processes: accelerate steps a prepared scheduler once per process."""
    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=int(num_warmup_steps))
