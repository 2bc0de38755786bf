"""Optimisers and learning-rate schedules of the training configs."""

from __future__ import annotations

import torch
from diffusers.optimization import get_constant_schedule_with_warmup
from torch import nn

from ..errors import CascadeVError


def build_optimizer(model: nn.Module, spec: dict) -> torch.optim.Optimizer:
    """``dict(type='CAME' | 'AdamW', lr=..., weight_decay=..., betas=..., eps=...)`` over the trainable parameters.

    CAME (the release's optimiser, three betas and two eps) comes from the came-pytorch package.
    """
    spec = dict(spec)
    kind = spec.pop("type", "CAME")
    params = [p for p in model.parameters() if p.requires_grad]
    if not float(spec.get("lr", 0)) > 0:
        raise CascadeVError(f"optimizer.lr must be positive, got {spec.get('lr')}")
    if kind in ("CAME", "CAMEWrapper"):
        from came_pytorch import CAME

        return CAME(params, **spec)
    if kind == "AdamW":
        if len(tuple(spec.get("betas", (0.9, 0.999)))) != 2 or isinstance(spec.get("eps", 1e-8), (tuple, list)):
            raise CascadeVError("AdamW takes two betas and one eps: set optimizer.betas=(0.9,0.999) optimizer.eps=1e-8")
        return torch.optim.AdamW(params, **spec)
    raise CascadeVError(f"unknown optimizer {kind!r} in the config; choose CAME or AdamW")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, num_warmup_steps: int = 0):
    """Linear warm-up over ``num_warmup_steps`` optimiser steps, then constant (the release's schedule)."""
    return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=int(num_warmup_steps))
