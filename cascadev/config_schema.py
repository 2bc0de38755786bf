"""The config keys the code reads, with their types and ranges, checked once after the config is merged.

A hand-edited config or a ``--cfg-options`` typo (``model.depth=abc``, ``sampling.steps=0``) becomes one
line naming the key, instead of a failure deep inside a model or a training step. Keys not listed here
are left alone (configs may carry their own), and a listed key that is absent is fine: the code falls
back to its default, except for the sections every command builds from (``REQUIRED``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .conditioning import KINDS
from .config_defaults import MISSING, lookup, setting
from .errors import CascadeVError
from .rules import (
    ATTENTION_BACKENDS,
    BETA_SCHEDULES,
    COMPILE_MODES,
    CROPS,
    PREDICTION_TYPES,
    SCHEDULERS,
    SEED_LIMIT,
    SHORT_VIDEO_MODES,
    TRAIN_TIMESTEPS,
    attn_strides_problem,
    is_whole,
    whole_description,
)

__all__ = ["SCHEMA", "REQUIRED", "validate_config", "validate_section"]


@dataclass(frozen=True)
class Rule:
    """What one key may hold: ``check(value)`` is True for a good value; ``what`` describes a good one."""

    check: Callable[[Any], bool]
    what: str
    nullable: bool = False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def integer(lo: int = 0, hi: int | None = None, nullable: bool = False) -> Rule:
    """The rule of cascadev.rules.is_whole, which the CLI's integer options and the library use too."""
    return Rule(lambda v: is_whole(v, lo, hi), whole_description(lo, hi), nullable)


def number(lo: float = 0.0, hi: float | None = None, above: bool = False) -> Rule:
    """A finite number >= ``lo`` (> ``lo`` when ``above``) and <= ``hi``."""
    low = f"above {lo:g}" if above else f"at least {lo:g}"
    what = f"a number {low}" + (f" and at most {hi:g}" if hi is not None else "")
    return Rule(lambda v: _is_number(v) and (v > lo if above else v >= lo) and (hi is None or v <= hi), what)


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "True or False")


def string(choices: tuple[str, ...] | None = None, nullable: bool = False) -> Rule:
    what = f"one of {', '.join(choices)}" if choices else "a string"
    return Rule(lambda v: isinstance(v, str) and (choices is None or v in choices), what, nullable)


def section() -> Rule:
    return Rule(lambda v: isinstance(v, Mapping), "a dict of settings (key=value)")


def sequence(
    item: Callable[[Any], bool] | None = None,
    what: str = "a list",
    nullable: bool = False,
    length: int | None = None,
    min_length: int = 0,
) -> Rule:
    return Rule(
        lambda v: (
            isinstance(v, (list, tuple))
            and (length is None or len(v) == length)
            and len(v) >= min_length
            and (item is None or all(item(x) for x in v))
        ),
        what,
        nullable,
    )


def one_or_more_strings(nullable: bool = False) -> Rule:
    return Rule(
        lambda v: isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
        "a file name or a list of file names",
        nullable,
    )


def positive_or_pair_of_positive() -> Rule:
    return Rule(
        lambda v: (
            (_is_number(v) and v > 0) or (isinstance(v, (list, tuple)) and all(_is_number(x) and x > 0 for x in v))
        ),
        "a positive number or a list of positive numbers",
    )


COUNT = integer(1)

SCHEMA: dict[str, Rule] = {
    # the model and the frozen networks
    "num_frames_per_video": COUNT,
    "sr_scale": COUNT,
    "scale_factor": number(0, above=True),
    "condition": string(tuple(KINDS)),
    "model": section(),
    "model.type": string(),
    "model.input_size": COUNT,
    "model.patch_size": COUNT,
    "model.hidden_size": COUNT,
    "model.depth": COUNT,
    "model.num_heads": COUNT,
    "model.mlp_ratio": number(0, above=True),
    "model.pred_sigma": boolean(),
    "model.pe_interpolation": number(0, above=True),
    "model.attn_strides": sequence(what="a list of None or [ts, xs] items", nullable=True),  # and _check_strides
    "model.lats_per_vid": COUNT,
    "model.fp32_attention": boolean(),
    "compressor": section(),
    "compressor.c_latent": COUNT,
    "compressor.backbone": string(),
    "previewer": section(),
    "previewer.c_in": COUNT,
    "previewer.c_hidden": COUNT,
    "previewer.c_out": COUNT,
    "vae": section(),
    "vae.block_out_channels": sequence(
        lambda x: is_whole(x, 1), "a non-empty list of positive whole numbers", min_length=1
    ),
    "vae.layers_per_block": COUNT,
    "vae.latent_channels": COUNT,
    "vae.sample_size": COUNT,
    "vae.scaling_factor": number(0, above=True),
    "weights_dir": string(),
    "weights_note": string(nullable=True),
    "weights": section(),
    "weights.dit": one_or_more_strings(),
    "weights.compressor": string(),
    "weights.previewer": string(),
    "weights.vae": string(),
    "schedule": section(),
    "schedule.num_train_timesteps": COUNT,
    "schedule.beta_schedule": string(BETA_SCHEDULES),
    "schedule.beta_start": number(0, 1, above=True),
    "schedule.beta_end": number(0, 1, above=True),
    "schedule.prediction_type": string(PREDICTION_TYPES),
    # sampling
    "sampling": section(),
    "sampling.scheduler": string(SCHEDULERS),
    "sampling.steps": COUNT,
    "sampling.vae_chunk": COUNT,
    "sampling.segment_frames": integer(0),
    "sampling.tile_stride": integer(1, nullable=True),
    "sampling.batch_size": COUNT,
    "sampling.attention_backend": string(ATTENTION_BACKENDS),
    "sampling.compile": string(COMPILE_MODES, nullable=True),
    "sampling.vae_compile": boolean(),
    # training
    "video_list": one_or_more_strings(),
    "sample_size": COUNT,
    "time_stride": COUNT,
    "data": section(),
    "data.short_video": string(SHORT_VIDEO_MODES),
    "data.resize": boolean(),
    "data.hflip_prob": number(0, 1),
    "data.crop": string(CROPS),
    "data.scale_range": sequence(lambda x: _is_number(x) and x >= 1, "a list of two numbers of at least 1", length=2),
    "data.gamma_range": sequence(lambda x: _is_number(x) and x > 0, "a list of two positive numbers", length=2),
    "encode_chunk": COUNT,
    "cache_latents": boolean(),
    "latent_cache_epochs": COUNT,
    "latent_cache_dir": string(nullable=True),
    "joint_training": number(0, 1),
    "seed": integer(0, SEED_LIMIT - 1),
    "num_workers": integer(0),
    "train_batch_size": COUNT,
    "num_epochs": COUNT,
    "gradient_accumulation_steps": COUNT,
    "grad_checkpointing": boolean(),
    "gradient_clip": number(0, above=True),
    "mixed_precision": string(("no", "fp16", "bf16")),
    "fp32_attention": boolean(),
    "optimizer": section(),
    "optimizer.type": string(),
    "optimizer.lr": number(0, above=True),
    "optimizer.weight_decay": number(0),
    "optimizer.betas": sequence(lambda x: _is_number(x) and 0 <= x < 1, "a list of numbers from 0 to below 1"),
    "optimizer.eps": positive_or_pair_of_positive(),
    "lr_schedule_args": section(),
    "lr_schedule_args.num_warmup_steps": integer(0),
    "ema": section(),
    "ema.enabled": boolean(),
    "ema.decay": number(0, 1),
    "load_from": one_or_more_strings(nullable=True),
    "frozen_modules": sequence(lambda x: isinstance(x, str), "a list of submodule names"),
    "auto_lr": Rule(lambda v: isinstance(v, Mapping), "a dict such as dict(rule='sqrt')", nullable=True),
    "auto_lr.rule": string(("sqrt", "linear"), nullable=True),
    "log_interval": COUNT,
    "save_model_steps": COUNT,
    "keep_checkpoints": integer(0),
    "validation": section(),
    "validation.video": string(nullable=True),
    "validation.interval": integer(0),
    "validation.steps": COUNT,
    "validation.scheduler": string(SCHEDULERS),
    # autoencoder training (cascadev train-ae)
    "autoencoder_training": section(),
    "kl_weight": number(0),
}

# Sections every command builds its models from.
REQUIRED = ("model", "compressor", "previewer", "vae", "schedule", "scale_factor", "sr_scale")


def validate_config(cfg: Mapping[str, Any], source: str = "the config") -> None:
    """Check every key of ``SCHEMA`` present in ``cfg`` (and that ``REQUIRED`` ones are); one line per failure.

    Sections are checked before their keys, so ``model=abc`` is reported as ``model``, not as a missing
    ``model.depth``.
    """
    for key in REQUIRED:
        if lookup(cfg, key) is MISSING:
            raise CascadeVError(f"{source} lacks the key {key}, which every command needs.")
    for key, rule in SCHEMA.items():
        _check(key, lookup(cfg, key), rule, source)
    _check_strides(cfg["model"], "model.attn_strides", source)
    # PixArt's configs give the training steps apart (train_sampling_steps); here training and sampling
    # both take schedule.num_train_timesteps, so a PixArt value that differs is refused, not ignored.
    pixart_steps = lookup(cfg, "train_sampling_steps")
    steps = lookup(cfg, "schedule.num_train_timesteps")
    steps = TRAIN_TIMESTEPS if steps is MISSING else steps
    if pixart_steps is not MISSING and pixart_steps != steps:
        raise CascadeVError(
            f"config key train_sampling_steps={pixart_steps!r} disagrees with schedule.num_train_timesteps={steps}, "
            f"which training and sampling share; drop train_sampling_steps (in {source})."
        )


def validate_section(values: Mapping[str, Any], name: str, source: str) -> None:
    """The rules of the config section ``name`` applied to a dict of its keys: a saved model's
    ``config.json`` (``validate_section(json, "model", ...)`` reports ``hidden_size``, not a TypeError)."""
    prefix = f"{name}."
    for key, rule in SCHEMA.items():
        if key.startswith(prefix):
            _check(key[len(prefix) :], values.get(key[len(prefix) :], MISSING), rule, source)
    if name == "model":
        _check_strides(values, "attn_strides", source)


def _check(key: str, value: Any, rule: Rule, source: str) -> None:
    if value is MISSING or (value is None and rule.nullable) or rule.check(value):
        return
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise CascadeVError(f"config key {key} must be {rule.what}, got {shown} (in {source}).")


def _check_strides(model: Mapping[str, Any], key: str, source: str) -> None:
    """Each item of the DiT's attn_strides, by the rule the model asks too (against its window and grid)."""
    strides = model.get("attn_strides")
    if not isinstance(strides, (list, tuple)):
        return  # absent or None; any other value its rule has refused
    size, patch, frames = (
        setting({"model": model}, f"model.{k}") for k in ("input_size", "patch_size", "lats_per_vid")
    )
    for item in strides:
        problem = attn_strides_problem(item, frames, size // patch)
        if problem:
            raise CascadeVError(f"config key {key} has the item {item!r}: {problem} (in {source}).")
