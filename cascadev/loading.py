"""From a config file and a weights folder to a ready CascadeVPipeline on a device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import conditioning, rules
from .checkpoint import check_finite, load_weights
from .config_defaults import setting
from .config_schema import validate_config, validate_section
from .errors import CascadeVError, first_line
from .models import build_model, svd_vae
from .pipeline import CascadeVPipeline
from .rules import check_choice, check_device_name
from .schedulers import noise_schedule

if TYPE_CHECKING:
    from mmengine.config import Config

# Where each released file comes from, for the message a user gets when one is missing.
WEIGHT_SOURCES = {
    "dit": "the CascadeV DiT, ByteDance/CascadeV on Hugging Face",
    "compressor": "StableCascade's semantic compressor, stabilityai/StableWurst on Hugging Face",
    "previewer": "StableCascade's previewer, stabilityai/StableWurst on Hugging Face",
    "vae": "Stable Video Diffusion's VAE, stabilityai/stable-video-diffusion-img2vid-xt (subfolder vae)",
}


def cast(module: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """``module.to(device, dtype)`` through torch's ``.to``: diffusers' own (0.42) warns of "modules kept in
    float32" on any dtype, though none of this project's models has any."""
    return nn.Module.to(module, device=device, dtype=dtype)


@dataclass(frozen=True)
class Precision:
    """An inference precision: every part's weights in ``dtype``; the DiT call under ``autocast`` if set."""

    dtype: torch.dtype
    autocast: torch.dtype | None = None


# "fp16" is the release's: model.half() under fp16 autocast (LayerNorm and its modulation in fp32).
PRECISIONS = {
    "fp32": Precision(torch.float32),
    "bf16": Precision(torch.bfloat16),
    "fp16": Precision(torch.float16, torch.float16),
}
# The CUDA default, chosen from the measured table in docs/benchmarks.md ("Inference precision").
CUDA_PRECISION = "fp16"


def load_config(path: str | os.PathLike, options: Sequence[str] | None = None) -> Config:
    """An mmengine Config from a Python config file, with ``key=value`` overrides applied, then checked
    against :data:`cascadev.config_schema.SCHEMA` (one error line naming the first bad key)."""
    from mmengine.config import Config, DictAction

    path = Path(path)
    if not path.is_file():
        raise CascadeVError(f"config {path} does not exist")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine reports syntax and _base_ errors with many exception types
        raise CascadeVError(f"config {path} cannot be read: {first_line(exc)}")
    for option in options or ():
        if "=" not in option:
            raise CascadeVError(f"--cfg-options takes key=value pairs, got {option!r}")
        key, value = option.split("=", 1)
        if any(not part.strip() for part in key.split(".")):
            raise CascadeVError(f"--cfg-options {option!r} has an empty key; write key=value, e.g. sampling.steps=8")
        try:
            parsed = DictAction._parse_iterable(value)
        except AssertionError:  # mmengine asserts its brackets balance
            raise CascadeVError(f"--cfg-options {key}: the value {value!r} has unbalanced brackets") from None
        except RecursionError:  # a call such as dict(a=1,b=2): mmengine parses lists and tuples, not calls
            raise CascadeVError(
                f"--cfg-options {key}: the value {value!r} cannot be parsed; give a section's keys one by one "
                f"({key}.name=value)"
            ) from None
        try:
            cfg.merge_from_dict({key: parsed})
        except (TypeError, KeyError, AttributeError):  # e.g. scale_factor.x=1: a number has no keys
            raise CascadeVError(
                f"--cfg-options {key}: {key.rsplit('.', 1)[0]} is not a section of config {path.name}, so it has no keys"
            ) from None
    validate_config(cfg.to_dict(), f"config {path.name}" + (" with --cfg-options" if options else ""))
    return cfg


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    if check_device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():  # cuda or cuda:N
        raise CascadeVError(f"--device {name} was asked for but no CUDA device is available")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise CascadeVError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve_precision(name: str, device: torch.device) -> Precision:
    """``auto`` (CUDA_PRECISION on CUDA, fp32 on CPU), ``fp32``, ``fp16`` (the release's) or ``bf16``."""
    if check_choice(name, rules.PRECISIONS, "dtype") == "auto":
        name = CUDA_PRECISION if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise CascadeVError("--dtype fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return PRECISIONS[name]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The weights' dtype of :func:`resolve_precision`."""
    return resolve_precision(name, device).dtype


def resolve_weights(
    cfg: Config,
    parts: Iterable[str],
    weights_dir: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """The file (or folder) of each part's weights; one error naming every missing one.

    ``ckpt`` replaces the DiT's file; the others are looked up in ``weights_dir`` (default: the
    config's ``weights_dir``). For the DiT the first existing file of the config's list is used.
    Each missing file is named with the option (or config key) that points at it.
    """
    root = Path(weights_dir if weights_dir is not None else setting(cfg, "weights_dir"))
    found, missing = {}, []
    for part in parts:
        if part == "dit" and ckpt is not None:
            candidates, hint = [Path(ckpt)], "the file given with --ckpt"
        else:
            names = setting(cfg, f"weights.{part}")
            candidates = [root / n for n in ([names] if isinstance(names, str) else names)]
            # Which option or config key moves each file: --ckpt only ever replaces the DiT.
            hint = f"{'--ckpt or ' if part == 'dit' else ''}--weights-dir, config key weights.{part}"
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            missing.append((candidates[0], f"{WEIGHT_SOURCES[part]}; {hint}"))
        else:
            found[part] = path
    if missing:
        note = cfg.get("weights_note")
        if note:  # a config whose weights come from elsewhere says where (nano's ship with the repository)
            raise CascadeVError(f"missing weights: {'; '.join(str(path) for path, _ in missing)}; {note}")
        named = "; ".join(f"{path} ({where})" for path, where in missing)
        raise CascadeVError(
            f"missing weights: {named}; run pretrained/download.sh, or use --random-init for a smoke test"
        )
    return found


def _build_random(spec: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec)


def _load(spec: dict, path: Path, name: str) -> nn.Module:
    if path.is_dir() and spec.get("type") == "CascadeDiT":
        path = _checkpoint_dit(path)
        if path.is_dir():
            return load_dit_folder(path)
    with torch.device("meta"):
        model = build_model(spec)
    return load_weights(model, path, name)


def _checkpoint_dit(path: Path) -> Path:
    """A training checkpoint folder stands for its DiT: the ``dit/`` save_pretrained folder, or the previous
    layout's top-level ``model.safetensors``; any other path stands for itself."""
    if path.is_dir() and not (path / "config.json").is_file():
        for inner in (path / "dit", path / "model.safetensors"):
            if inner.exists():
                return inner
    return path


def dit_weights_file(path: str | os.PathLike) -> Path:
    """The weights file of a DiT given as a file, a ``save_pretrained`` folder or a training checkpoint."""
    path = _checkpoint_dit(Path(path))
    return path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path


def load_dit_folder(path: str | os.PathLike) -> nn.Module:
    """A DiT saved with ``save_pretrained`` (config.json + weights): it describes itself, so the
    config file's ``model`` section is not used (its in_channels also gives the condition kind)."""
    from .models.dit import CascadeDiT

    path = Path(path)
    weights = path / "diffusion_pytorch_model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        raise CascadeVError(
            f"DiT folder {path} needs config.json and diffusion_pytorch_model.safetensors (save_pretrained)"
        )
    try:
        config = CascadeDiT.load_config(str(path))
    except Exception as exc:  # diffusers raises OSError/EnvironmentError for unreadable JSON
        raise CascadeVError(f"DiT folder {path} has an unreadable config.json: {first_line(exc)}")
    if not isinstance(config, Mapping):
        raise CascadeVError(f"DiT folder {path} has a config.json that is not a JSON object")
    validate_section(config, "model", f"{path / 'config.json'}")
    try:
        with torch.device("meta"):
            model = CascadeDiT.from_config(config)
    except Exception as exc:  # diffusers raises ValueError/TypeError/OSError for bad configs
        raise CascadeVError(f"DiT folder {path} has an unusable config.json: {first_line(exc)}")
    return load_weights(model, weights, f"the DiT of {path}")


def _load_vae(path: Path, dtype: torch.dtype) -> nn.Module:
    from diffusers import AutoencoderKLTemporalDecoder

    if not (path / "config.json").is_file():
        raise CascadeVError(f"SVD VAE folder {path} has no config.json; run pretrained/download.sh")
    variant = "fp16" if (path / "diffusion_pytorch_model.fp16.safetensors").exists() else None
    if variant is None and not (path / "diffusion_pytorch_model.safetensors").is_file():
        raise CascadeVError(
            f"SVD VAE folder {path} has no diffusion_pytorch_model(.fp16).safetensors (a pickled .bin is not "
            "loaded); run pretrained/download.sh"
        )
    try:
        # safetensors only: a folder holding a pickled .bin is refused, never unpickled (nor tried and logged).
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            str(path), variant=variant, torch_dtype=dtype, use_safetensors=True
        )
    except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError for broken folders
        raise CascadeVError(f"SVD VAE folder {path} cannot be loaded: {first_line(exc)}")
    if vae.config.latent_channels != 4:
        raise CascadeVError(f"SVD VAE folder {path} has {vae.config.latent_channels} latent channels, not 4")
    check_finite(vae.state_dict(), path)  # as the other networks' weights are
    return vae


# The cfg.sampling keys that configure the pipeline (the others, scheduler and steps, are a call's).
SAMPLING_OPTIONS = (
    "vae_chunk",
    "segment_frames",
    "tile_stride",
    "batch_size",
    "attention_backend",
    "compile",
    "vae_compile",
)


def build_pipeline(
    cfg: Config,
    parts: Sequence[str] = ("dit", "compressor", "previewer", "vae"),
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    weights_dir: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
    random_init: bool = False,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    fp32_attention: bool = False,
    tile_blend: str = "blend",
    round_timesteps: bool = False,
    modules: Mapping[str, nn.Module] | None = None,
    **sampling,
) -> CascadeVPipeline:
    """Build the pipeline's ``parts`` from ``cfg``, with weights or (``random_init``) at random.

    Random initialisation is seeded and gives the DiT a small random output head instead of PixArt's
    zero one, so that smoke tests exercise every path; an explicit ``ckpt`` is loaded even then.
    ``sampling`` overrides ``cfg.sampling`` keys (``SAMPLING_OPTIONS``; compile: a torch.compile mode
    for the DiT's blocks; vae_compile: the SVD decoder through torch.compile,
    :mod:`cascadev.models.svd_vae`). ``dtype`` and ``autocast_dtype`` are a
    :class:`Precision`; ``fp32_attention``, ``tile_blend`` and ``round_timesteps`` come from a preset
    (:mod:`cascadev.presets`). ``modules`` gives parts that already exist (the trainer's live DiT and
    frozen networks, for validation): they are used as they are, neither loaded, cast, moved nor frozen.
    """
    device = torch.device(device)
    given = dict(modules or {})
    to_load = [part for part in parts if part not in given]
    paths = {} if random_init else resolve_weights(cfg, to_load, weights_dir, ckpt)
    if random_init and ckpt is not None and "dit" in to_load:
        paths = resolve_weights(cfg, ["dit"], weights_dir, ckpt)  # an explicit --ckpt is always loaded
    dit_spec = conditioning.dit_spec(cfg)
    built: dict[str, nn.Module] = {part: given[part] for part in parts if part in given}
    for part in to_load:
        spec = dit_spec if part == "dit" else dict(cfg[part])
        if random_init and part not in paths:
            built[part] = _build_random(spec, seed)
            if part == "dit":
                nn.init.normal_(built[part].final_layer.linear.weight, std=0.02)
        elif part == "vae":
            built[part] = _load_vae(paths[part], dtype)
        else:
            built[part] = _load(spec, paths[part], f"the {part} of config {Path(cfg.filename).name}")
        module = built[part]
        if any(p.dtype != dtype for p in module.parameters()):
            cast(module, dtype=dtype)
        module.to(device).eval().requires_grad_(False)
        if part == "dit":
            module.set_fp32_attention(fp32_attention)

    options = {k: v for k, v in dict(cfg.get("sampling", {})).items() if k in SAMPLING_OPTIONS}
    options["encode_chunk"] = int(setting(cfg, "encode_chunk"))  # frames per frozen-encoder call, as in training
    options.update({k: v for k, v in sampling.items() if v is not None})
    compile_mode = options.pop("compile", None)
    if compile_mode and "dit" in to_load:  # a given (live, training) DiT stays as it is
        built["dit"].compile_blocks(None if compile_mode == "default" else compile_mode)
    if options.pop("vae_compile", False) and "vae" in to_load:
        svd_vae.compile_decoder(built["vae"])
    return CascadeVPipeline(
        **built,
        scale_factor=cfg.scale_factor,
        sr_scale=cfg.sr_scale,
        schedule=noise_schedule(cfg.get("schedule")),
        device=device,
        dtype=dtype,
        autocast_dtype=autocast_dtype,
        tile_blend=tile_blend,
        round_timesteps=round_timesteps,
        **options,
    )
