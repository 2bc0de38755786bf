"""The training loop of the LDM-VAE's DiT: the release's recipe (README.md, "Train the LDM-VAE") on accelerate.

One process per device (``accelerate launch`` / ``train_vae.sh``); accelerate handles DDP (or FSDP and
DeepSpeed through its config), mixed precision and gradient accumulation. Every random draw of a step
(posterior sample, timesteps, noise, image mode) comes from a generator seeded by (seed, micro-step,
process), and the data order from a permutation seeded by (seed, epoch), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .. import conditioning
from ..atomic import atomic_output
from ..checkpoint import DTYPES, check_fit, load_weights, read_state_dict, save_safetensors
from ..config_defaults import setting, shipped
from ..data import BadVideoWarning, VideoClipDataset
from ..diffusion import GaussianDiffusion
from ..errors import CascadeVError, Interrupted
from ..frames import to_uint8
from ..inputs import read_video_list
from ..loading import build_pipeline, dit_weights_file
from ..models import build_model
from ..pictures import contact_sheet, save_image, side_by_side
from ..pipeline import CascadeVPipeline, seeded_generator
from ..reconstruct import COMPARE_TITLES
from ..schedulers import check_steps, noise_schedule
from ..video_io import probe_video
from . import checkpoints, metrics_log
from .interrupts import StopRequest
from .optim import build_lr_scheduler, build_optimizer, scaled_lr
from .targets import FrozenEncoders, LatentCache

if TYPE_CHECKING:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel
    from mmengine.config import Config


@dataclass
class TrainOptions:
    work_dir: Path
    max_steps: int | None = None  # total optimizer steps (a resumed run counts from where it stopped)
    weights_dir: str | None = None  # frozen VAE / compressor / previewer files (default: the config's)
    random_init: bool = False  # frozen networks at random: smoke tests without weights
    device: str = "auto"  # auto or cpu
    progress: bool = True


class EpochSampler(Sampler[int]):
    """This process's share of the epoch's seeded permutation, after ``skip_batches`` of its batches.

    Global batch k is ``perm[k*B*R:(k+1)*B*R]``, dealt round-robin to the R processes; the tail that
    does not fill a global batch is dropped.
    """

    def __init__(
        self, size: int, batch_size: int, replicas: int, rank: int, seed: int, epoch: int, skip_batches: int = 0
    ):
        self.size, self.batch_size, self.replicas, self.rank = size, batch_size, replicas, rank
        self.seed, self.epoch, self.skip = seed, epoch, skip_batches

    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.replicas)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip) * self.batch_size

    def __iter__(self):
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        mine = perm[: self.batches_per_epoch() * self.batch_size * self.replicas][self.rank :: self.replicas]
        return iter(mine[self.skip * self.batch_size :].tolist())


class IndexDataset(Dataset):
    """Items of a latent cache: only their indices travel through the DataLoader.

    Item ``i`` is cache entry ``offset + i``: the cache holds ``latent_cache_epochs`` versions of every
    item, and an epoch reads one of them (``Trainer._loader``).
    """

    def __init__(self, size: int, offset: int = 0):
        self.size, self.offset = size, offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return {"index": self.offset + index, "substituted": False}


def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The noise and timesteps of one micro-step on one process: the same after a resume."""
    return seeded_generator(seed, micro_step, rank)


def _load_from_path(load_from) -> Path:
    """The config's ``load_from`` (a path, or a list whose first existing entry is used), checked: a weights
    file, a ``save_pretrained`` folder or a training checkpoint folder."""
    candidates = [Path(p) for p in ([load_from] if isinstance(load_from, (str, Path)) else load_from)]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        shipped_start = shipped().get("load_from")
        released = [Path(p) for p in ([shipped_start] if isinstance(shipped_start, str) else shipped_start or [])]
        what = (
            " (the released DiT, ByteDance/CascadeV s1024.effn-f32.pth: run pretrained/download.sh)"
            if candidates[0] in released
            else ""
        )
        raise CascadeVError(
            f"load_from {candidates[0]} does not exist{what}; to train from scratch pass --cfg-options load_from=None"
        )
    return found


def _mixed_precision(requested: str, cpu: bool) -> str:
    """The config's mixed_precision (no, fp16 or bf16: config_schema checked it) for this machine."""
    if cpu and requested == "fp16":
        warnings.warn("fp16 mixed precision needs a GPU; training in fp32 on the CPU")
        return "no"
    return requested


# What a run writes in its work dir before its first step: the effective config and TensorBoard's folder.
CONFIG_COPY, LOGS_FOLDER = "config.py", "logs"


def written_before_training(work_dir: Path, file: Path) -> bool:
    """Whether ``file`` (in ``work_dir``) tells nothing of training: the config copy, TensorBoard's log (the
    steps it holds are in metrics.jsonl too) or an empty file."""
    parts = file.relative_to(work_dir).parts
    return parts == (CONFIG_COPY,) or parts[0] == LOGS_FOLDER or file.stat().st_size == 0


# ---------------------------------------------------------------------- builders (accelerate-examples style)


def build_accelerator(cfg: Config, options: TrainOptions) -> Accelerator:
    """accelerate's Accelerator for the config's mixed precision and accumulation, logging to WORK_DIR/logs."""
    from accelerate import Accelerator

    cpu = options.device == "cpu" or not torch.cuda.is_available()
    return Accelerator(
        mixed_precision=_mixed_precision(setting(cfg, "mixed_precision"), cpu),
        gradient_accumulation_steps=int(setting(cfg, "gradient_accumulation_steps")),
        log_with="tensorboard",
        project_dir=str(Path(options.work_dir) / LOGS_FOLDER),
        cpu=cpu,
    )


def clip_geometry(cfg: Config) -> tuple[int, int, int]:
    """A training clip's frames, frame stride and side in pixels: (num_frames_per_video, time_stride, sample_size)."""
    return tuple(int(setting(cfg, key)) for key in ("num_frames_per_video", "time_stride", "sample_size"))


def build_dataset(cfg: Config, seed: int, clips_per_batch: int) -> VideoClipDataset:
    """The training clips of the config's video lists."""
    videos = read_video_list(cfg.video_list)
    # A list smaller than one batch of all processes (a smoke run on one video) draws several clips per video
    # per epoch; real lists keep the release's one clip per video per epoch.
    return VideoClipDataset(
        videos,
        *clip_geometry(cfg),
        seed=seed,
        clips_per_video=-(-clips_per_batch // len(videos)),
        **dict(setting(cfg, "data")),
    )


def freeze_modules(model: torch.nn.Module, names: Sequence[str]) -> None:
    """Keep the weights of ``model``'s submodules ``names`` (dotted, as ``get_submodule``) as they are.

    They get no gradients, so the optimizer (built over the parameters that need them) and the
    checkpoint's optimizer state leave them out; e.g. ``['encoder', 'quant_conv']`` fine-tunes a VAE's
    decoder while its latents, on which a DiT may already be trained, stay the same.
    """
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children())
            raise CascadeVError(f"frozen_modules names {name!r}, which the trained network lacks (it has: {children})")
        module.requires_grad_(False)
    if names and not any(p.requires_grad for p in model.parameters()):
        raise CascadeVError(
            f"frozen_modules {list(names)} freezes every weight of the trained network: nothing to train"
        )


def build_ema(model: torch.nn.Module, cfg: Config, device: torch.device) -> EMAModel | None:
    """diffusers' EMAModel of ``model``'s parameters when the config's ``ema.enabled``, else None."""
    if not setting(cfg, "ema.enabled"):
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(model.parameters(), decay=float(setting(cfg, "ema.decay")))
    ema.to(device)
    return ema


def build_latent_cache(cfg: Config, work_dir: Path) -> LatentCache | None:
    """The on-disk cache of encoded clips when the config's ``cache_latents``, else None."""
    if not setting(cfg, "cache_latents"):
        return None
    folder = Path(setting(cfg, "latent_cache_dir") or work_dir / "latent_cache")
    try:
        return LatentCache(folder)
    except OSError as exc:  # a file there, or a place that cannot be written
        raise CascadeVError(f"latent_cache_dir {folder} is not a writable folder: {exc.strerror or exc}") from None


class Trainer:
    """Builds everything from the config, resumes from the work dir, and runs ``fit()``.

    ``__init__`` reads as the steps of accelerate's examples: accelerator, data, model, EMA, optimizer and
    schedule, ``prepare``, resume. Subclasses (:mod:`.autoencoders`) replace ``build_model`` and the loss.
    """

    #: Checkpoint subfolder of the trained network when it is a diffusers model (``save_pretrained``).
    model_folder = checkpoints.MODEL_DIR

    def __init__(self, cfg: Config, options: TrainOptions) -> None:
        from accelerate.utils import set_seed

        self.cfg, self.opts = cfg, options
        self.work_dir = Path(options.work_dir)
        self.accelerator = acc = build_accelerator(cfg, options)
        self.seed = int(setting(cfg, "seed"))
        set_seed(self.seed, device_specific=True)
        if setting(cfg, "validation.video"):  # checked now (every process), not at the first validation
            check_steps(int(setting(cfg, "validation.steps")), noise_schedule(cfg.get("schedule")))
            try:
                probe_video(setting(cfg, "validation.video"))
            except CascadeVError as exc:
                raise CascadeVError(f"validation.video: {exc}") from None

        self.batch_size = int(setting(cfg, "train_batch_size"))
        clips_per_batch = self.batch_size * acc.num_processes  # one micro-step of every process
        self.dataset = build_dataset(cfg, self.seed, clips_per_batch)
        self.batches_per_epoch = len(self.dataset) // clips_per_batch
        self.resume_from = self._resume_point()
        model = self.build_model()
        freeze_modules(model, setting(cfg, "frozen_modules"))
        model.to(acc.device).train()
        self.ema = build_ema(model, cfg, acc.device)
        optimizer = build_optimizer(model, self._optimizer_spec())
        # accelerate's prepared scheduler steps once per process at each optimizer step, so the warm-up is
        # counted in process-steps (as diffusers' training scripts do): num_warmup_steps optimizer steps on
        # any number of GPUs.
        warmup = int(setting(cfg, "lr_schedule_args.num_warmup_steps")) * acc.num_processes
        scheduler = build_lr_scheduler(optimizer, warmup)
        self.dit, self.optimizer, self.lr_scheduler = acc.prepare(model, optimizer, scheduler)
        self._register_checkpoint_hooks()
        self.state = self._resume()
        self.cache = build_latent_cache(cfg, self.work_dir)

    def build_model(self) -> torch.nn.Module:
        """The frozen networks the DiT learns from (``self.frozen``, ``self.encoders``), then the DiT itself."""
        self._build_frozen()
        return self._build_dit()

    def _build_frozen(self) -> None:
        """The diffusion, and the frozen VAE / compressor (/ previewer for validation) through ``build_pipeline``."""
        cfg, acc, options = self.cfg, self.accelerator, self.opts
        self.diffusion = GaussianDiffusion.from_schedule(noise_schedule(cfg.get("schedule")))
        weight_dtype = DTYPES.get(acc.mixed_precision, torch.float32)  # accelerate's "no" is float32
        condition = conditioning.condition_kind(cfg)
        parts = conditioning.with_encoder(condition, ["vae"])
        if setting(cfg, "validation.video") and "compressor" in parts:  # a preview needs a semantic latent
            parts.append("previewer")
        frozen = build_pipeline(
            cfg,
            parts,
            device=acc.device,
            dtype=weight_dtype,
            weights_dir=options.weights_dir,
            random_init=options.random_init,
        )
        self.frozen = frozen
        self.encoders = FrozenEncoders(
            frozen.vae,
            frozen.compressor,
            condition=condition,
            scale_factor=cfg.scale_factor,
            sr_scale=cfg.sr_scale,
            chunk=int(setting(cfg, "encode_chunk")),
            dtype=weight_dtype,
        )

    def _build_dit(self) -> torch.nn.Module:
        """The DiT of the config's ``model``: from ``load_from`` on a fresh run, at random (seeded) otherwise."""
        cfg = self.cfg
        spec = dict(conditioning.dit_spec(cfg), fp32_attention=bool(setting(cfg, "fp32_attention")))
        torch.manual_seed(self.seed)
        dit = build_model(spec)
        # A training clip is one DiT window: its frames, and its SVD latent (1/8 of the crop) one tile.
        frames, _, size = clip_geometry(cfg)
        pixels = conditioning.VAE_STRIDE * dit.input_size
        if (frames, size) != (dit.lats_per_vid, pixels):
            raise CascadeVError(
                f"config keys num_frames_per_video={frames} and sample_size={size} must be the DiT's window: "
                f"model.lats_per_vid={dit.lats_per_vid} frames of {pixels} pixels ({conditioning.VAE_STRIDE} x model.input_size)"
            )
        dit.gradient_checkpointing = bool(setting(cfg, "grad_checkpointing"))
        if self.resume_from is None and setting(cfg, "load_from"):
            load_weights(
                dit, dit_weights_file(_load_from_path(cfg.load_from)), "the DiT of the training config (load_from)"
            )
        return dit

    def _resume(self) -> dict:
        """The loop's counters: from the resume point (with accelerate's and EMA's states), else fresh."""
        acc = self.accelerator
        state = {"step": 0, "micro_step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped": 0}
        if self.resume_from is not None:
            held = checkpoints.held_model(self.resume_from)
            if held not in (None, self.model_folder):  # e.g. train-ae --part compressor in the vae's work dir
                raise CascadeVError(
                    f"{self.work_dir} holds checkpoints of the {held}, not of the {self.model_folder}: "
                    "give this run a work dir of its own (--work-dir)"
                )
            saved = checkpoints.read_state(self.resume_from)
            self._check_resumable(saved)
            acc.load_state(str(self.resume_from))
            state.update(saved)
            state.pop("model", None)
            state.pop("optimizer", None)
            if self.ema is not None:
                self._load_ema(self.resume_from, int(state.get("ema_step", 0)))
            self._say(f"resuming from {self.resume_from.name} (step {state['step']})")
        return state

    @property
    def optimizer_kind(self) -> str:
        """The config's optimizer, as checkpoints record it (CAMEWrapper is CAME)."""
        kind = dict(self.cfg.optimizer).get("type", "CAME")
        return "CAME" if kind == "CAMEWrapper" else kind

    def _check_resumable(self, saved: dict) -> None:
        """The checkpoint holds the states this config's run needs: its optimizer's, and EMA weights if asked."""
        name, other = self.resume_from.name, "or give this run a work dir of its own (--work-dir)"
        trained_with = saved.get("optimizer", self.optimizer_kind)  # older checkpoints do not say
        if trained_with != self.optimizer_kind:
            raise CascadeVError(
                f"{name} was trained with {trained_with} and the config says optimizer.type={self.optimizer_kind}: "
                f"resume with {trained_with}, {other}"
            )
        has_ema = (self.resume_from / self.ema_folder).is_dir() or (self.resume_from / checkpoints.EMA_FILE).is_file()
        if self.ema is not None and not has_ema:
            raise CascadeVError(f"{name} holds no EMA weights (trained with ema.enabled=False): resume so, {other}")

    @property
    def ema_folder(self) -> str:
        """Checkpoint subfolder of the EMA weights when the network is saved as a ``save_pretrained`` folder."""
        return f"{self.model_folder}_ema"

    def _saves_pretrained(self) -> bool:
        """Whether checkpoints hold the network (and its EMA) as ``save_pretrained`` folders: a diffusers
        model, unless a sharded engine (DeepSpeed, FSDP, Megatron) saves it itself."""
        from diffusers.models.modeling_utils import ModelMixin

        return isinstance(self._unwrapped(), ModelMixin) and self.accelerator.distributed_type.value not in (
            "DEEPSPEED",
            "FSDP",
            "MEGATRON_LM",
        )

    def _register_checkpoint_hooks(self) -> None:
        """A diffusers model goes into checkpoints as a ``save_pretrained`` folder (``model_folder``), the way
        diffusers' training examples hook accelerate's save_state/load_state; other networks stay in
        accelerate's ``model.safetensors``, and so do checkpoints of the previous layout, which still resume."""
        acc = self.accelerator
        if not self._saves_pretrained():
            return

        def save(models: list, weights: list, output_dir: str) -> None:
            if acc.is_main_process:
                self._unwrapped().save_pretrained(str(Path(output_dir) / self.model_folder), safe_serialization=True)
            weights.pop()  # accelerate then writes no model.safetensors

        def load(models: list, input_dir: str) -> None:
            folder = Path(input_dir) / self.model_folder
            if not (folder / "config.json").is_file():
                return  # the previous layout: accelerate loads the top-level model.safetensors
            models.pop()
            path = folder / checkpoints.MODEL_WEIGHTS
            state = read_state_dict(path)
            model = self._unwrapped()
            check_fit(model, state, f"the {self.model_folder} of {Path(input_dir).name}", source=path)
            model.load_state_dict(state, strict=True)  # in place: the optimizer holds these parameters

        acc.register_save_state_pre_hook(save)
        acc.register_load_state_pre_hook(load)

    def _optimizer_spec(self) -> dict:
        """The config's optimizer with PixArt's ``auto_lr`` rule applied for this run's global batch."""
        acc, spec = self.accelerator, dict(self.cfg.optimizer)
        global_batch = self.batch_size * acc.num_processes * acc.gradient_accumulation_steps
        rule = (setting(self.cfg, "auto_lr") or {}).get("rule")
        base = spec.get("lr", 0)
        spec["lr"] = scaled_lr(float(base), global_batch, rule)  # a positive number: config_schema checked it
        if acc.is_main_process and self.opts.progress:
            how = f" = {base:g} x {rule}({global_batch}/256) (auto_lr)" if rule else " (auto_lr off)"
            print(f"learning rate {spec['lr']:.4g}{how}, global batch {global_batch}")
        return spec

    # ------------------------------------------------------------------ checkpoints

    def _say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(f"cascadev: {message}", file=sys.stderr, flush=True)

    def _resume_point(self) -> Path | None:
        """The newest intact checkpoint, chosen by the main process (damaged ones moved aside) for all."""
        acc = self.accelerator
        found: list[str | None] = [None]
        if acc.is_main_process:
            checkpoints.remove_leftovers(self.work_dir)
            path, messages = checkpoints.resume_point(self.work_dir)
            for message in messages:
                self._say(message)
            found = [str(path) if path is not None else None]
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(found)
        return Path(found[0]) if found[0] else None

    # ------------------------------------------------------------------ pieces of a step

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.dit)

    def _load_ema(self, ckpt: Path, ema_step: int) -> None:
        from safetensors.torch import load_file

        folder = ckpt / self.ema_folder
        shadow = load_file(folder / checkpoints.MODEL_WEIGHTS if folder.is_dir() else ckpt / checkpoints.EMA_FILE)
        names = [n for n, _ in self._unwrapped().named_parameters()]
        for param, name in zip(self.ema.shadow_params, names):
            param.data.copy_(shadow[name].to(param.device))
        self.ema.optimization_step = ema_step

    def _fill_cache(self) -> None:
        """Encode every item's clips of epochs 0 .. latent_cache_epochs - 1 once (each process its share):
        entry ``epoch * len(dataset) + i``. Later steps read the cache; epoch e reads version e % K."""
        acc, size = self.accelerator, len(self.dataset)
        todo = [
            (epoch, i)
            for epoch in range(int(setting(self.cfg, "latent_cache_epochs")))
            for i in range(acc.process_index, size, acc.num_processes)
            if epoch * size + i not in self.cache
        ]
        for epoch, i in tqdm(todo, desc="caching latents", disable=not (self.opts.progress and acc.is_main_process)):
            self.dataset.set_epoch(epoch)  # the epoch draws the clip's start, crop, scale and flip
            encoded = self.encoders.encode(self.dataset[i]["video"][None].to(acc.device))
            self.cache.save(epoch * size + i, {k: v[0] for k, v in encoded.items()})
        acc.wait_for_everyone()

    def _loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        device = self.accelerator.device
        if self.cache is not None:
            encoded = self.cache.load(batch["index"].tolist(), device)
        else:
            encoded = self.encoders.encode(batch["video"].to(device))
        x_start, cond = self.encoders.training_pair(encoded, generator)  # (B, 4, T, s, s), (B, Cc, T, s, s)
        b, _, frames = x_start.shape[:3]
        # The release draws image mode per batch and keeps one timestep per video in both modes.
        as_images = torch.rand((), generator=generator).item() < float(setting(self.cfg, "joint_training"))
        t = self.diffusion.sample_timesteps(b, generator=generator).to(device)
        noise = torch.randn(x_start.shape, generator=generator).to(device)

        def model_fn(x_t: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
            inputs = torch.cat([x_t, cond], dim=1)  # (B, 4 + Cc, T, s, s): the DiT's in_channels
            if as_images:  # each frame its own image, all at the video's timestep: ts (B,) -> (B, T)
                return self.dit(inputs, ts[:, None].expand(b, frames), as_images=True)
            return self.dit(inputs, ts)

        return self.diffusion.training_losses(model_fn, x_start, t, noise=noise)["loss"].mean()

    def _loader(self) -> DataLoader:
        acc = self.accelerator
        epoch = self.state["epoch"]
        sampler = EpochSampler(
            len(self.dataset),
            self.batch_size,
            acc.num_processes,
            acc.process_index,
            self.seed,
            epoch,
            self.state["batch_in_epoch"],
        )
        if self.cache is not None:
            version = epoch % int(setting(self.cfg, "latent_cache_epochs"))
            items = IndexDataset(len(self.dataset), offset=version * len(self.dataset))
            return DataLoader(items, batch_size=self.batch_size, sampler=sampler)
        self.dataset.set_epoch(epoch)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=int(setting(self.cfg, "num_workers")),
            drop_last=True,
        )

    # ------------------------------------------------------------------ the loop

    def total_steps(self) -> int:
        if self.opts.max_steps is not None:
            return int(self.opts.max_steps)
        accum = self.accelerator.gradient_accumulation_steps
        return int(setting(self.cfg, "num_epochs")) * self.batches_per_epoch // accum

    def fit(self) -> Path | None:
        """Train until ``total_steps()``; returns the last checkpoint folder."""
        acc, cfg, state = self.accelerator, self.cfg, self.state
        total = self.total_steps()
        if state["step"] >= total:  # a resumed run that is done already, or asked to stop before its checkpoint
            asked = f"--max-steps {total}" if self.opts.max_steps is not None else f"num_epochs: {total} steps"
            if state["step"] > total:
                raise CascadeVError(
                    f"{asked} is below step {state['step']} of {self.resume_from}: ask for more steps, "
                    "or give this run a work dir of its own (--work-dir)"
                )
            self._say(f"nothing to train: {self.resume_from.name} is at step {total} already ({asked})")
            return None  # the work dir is left as it was
        if acc.is_main_process:  # only now: a run that stops before training writes nothing in the work dir
            self.work_dir.mkdir(parents=True, exist_ok=True)
            text = cfg.pretty_text  # what Config.dump writes for a .py file, written whole or not at all
            with atomic_output(self.work_dir / CONFIG_COPY, "config copy") as tmp:
                tmp.write_text(text)
            # The steps after the checkpoint are trained and logged again: metrics.jsonl drops them, and
            # TensorBoard (purge_step) their events.
            metrics_log.keep_until(self.work_dir / "metrics.jsonl", state["step"])
            acc.init_trackers("cascadev", init_kwargs={"tensorboard": {"purge_step": state["step"] + 1}})
        if self.cache is not None:
            self._fill_cache()
        log_every = int(setting(cfg, "log_interval"))
        save_every = int(setting(cfg, "save_model_steps"))
        val_every = int(setting(cfg, "validation.interval") or 0)
        if val_every and not setting(cfg, "validation.video"):  # said once set-up has succeeded
            self._say("validation is off: validation.video is not set (validation.interval needs a clip)")
        bar = tqdm(
            total=total,
            initial=state["step"],
            desc="training",
            unit="step",
            disable=not (self.opts.progress and acc.is_main_process),
        )
        window = {"loss": [], "grad_norm": [], "samples": 0, "skipped": 0, "tic": time.time(), "indices": None}
        last_saved = None
        with warnings.catch_warnings(), StopRequest() as stop:
            warnings.simplefilter("once", BadVideoWarning)
            while state["step"] < total:
                for batch in self._loader():
                    loss, grad_norm = self._micro_step(batch)
                    state["batch_in_epoch"] += 1
                    window["loss"].append(loss)
                    window["samples"] += self.batch_size * acc.num_processes
                    window["skipped"] += int(batch["substituted"].sum())
                    if grad_norm is not None:
                        window["grad_norm"].append(grad_norm)
                        window["indices"] = acc.gather(batch["index"].to(acc.device)).tolist()
                    if not acc.sync_gradients:
                        continue
                    state["step"] += 1
                    bar.update(1)
                    step = state["step"]
                    if step % log_every == 0 or step == total:
                        self._log(window, bar)
                    if val_every and step % val_every == 0:
                        self._validate(step)
                    saved = step % save_every == 0 or step == total
                    if saved:
                        last_saved = self._save(step)
                    if step >= total:
                        break
                    signum = stop.agreed(acc)  # SIGINT/SIGTERM: the step is finished; save it and stop
                    if signum:
                        if not saved:
                            last_saved = self._save(step)
                        bar.close()
                        acc.end_training()
                        raise Interrupted(f"interrupted, saved {last_saved.name}", signum)
                else:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
        bar.close()
        self._check_replicas()
        acc.end_training()
        return last_saved

    def _check_replicas(self) -> None:
        """Data-parallel replicas must hold the same weights; record each one's checksum."""
        acc = self.accelerator
        checksum = torch.stack([p.detach().double().sum() for p in self._unwrapped().parameters()]).sum()
        sums = acc.gather(checksum[None].to(acc.device)).tolist()
        if acc.is_main_process:
            (self.work_dir / "replica_checksums.json").write_text(
                json.dumps({"step": self.state["step"], "checksums": sums})
            )
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {sums}")

    def _micro_step(self, batch: dict) -> tuple[torch.Tensor, float | None]:
        acc, state = self.accelerator, self.state
        generator = step_generator(self.seed, state["micro_step"], acc.process_index)
        state["micro_step"] += 1
        grad_norm = None
        with acc.accumulate(self.dit):
            loss = self._loss(batch, generator)
            acc.backward(loss)
            if acc.sync_gradients:
                grad_norm = acc.clip_grad_norm_(self.dit.parameters(), float(setting(self.cfg, "gradient_clip")))
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        if acc.sync_gradients and self.ema is not None:
            self.ema.step(self._unwrapped().parameters())
        return loss.detach(), grad_norm

    def _log(self, window: dict, bar) -> None:
        acc, state = self.accelerator, self.state
        loss = acc.gather(torch.stack(window["loss"]).mean()[None]).mean().item()
        skipped = int(acc.gather(torch.tensor([window["skipped"]], device=acc.device)).sum())
        state["skipped"] += skipped
        elapsed = max(time.time() - window["tic"], 1e-9)
        record = {
            "step": state["step"],
            "epoch": state["epoch"],
            "loss": loss,
            "grad_norm": float(np.mean(window["grad_norm"])) if window["grad_norm"] else None,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "samples_per_sec": window["samples"] / elapsed,
            "global_batch": self.batch_size * acc.num_processes * acc.gradient_accumulation_steps,
            "skipped_videos": state["skipped"],
            "indices": window["indices"],
        }
        window.update(loss=[], grad_norm=[], samples=0, skipped=0, tic=time.time())
        acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}, step=state["step"])
        if acc.is_main_process:
            with open(self.work_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.opts.progress:
                bar.write(
                    f"step {record['step']}: loss {loss:.4f}, grad_norm {record['grad_norm'] or math.nan:.4f}, "
                    f"lr {record['lr']:.2e}, {record['samples_per_sec']:.2f} samples/s"
                )

    def _save(self, step: int) -> Path | None:
        acc = self.accelerator
        tmp = checkpoints.partial_dir(self.work_dir, step)
        final = None
        try:
            if acc.is_main_process:
                tmp.mkdir(parents=True, exist_ok=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp))
            acc.wait_for_everyone()  # every process's random_states file is in before the manifest
            if acc.is_main_process:
                if self.ema is not None:
                    self._save_ema(tmp)
                ema_step = self.ema.optimization_step if self.ema is not None else 0
                state = dict(self.state, ema_step=ema_step, model=self.model_folder, optimizer=self.optimizer_kind)
                final = checkpoints.finish(self.work_dir, step, state, int(setting(self.cfg, "keep_checkpoints")))
        except Exception as exc:  # a full disk above all: one line, and no partial checkpoint left
            error = checkpoints.save_failed(exc, self.work_dir, step) if acc.is_main_process else None
            if error is not None:
                raise error from None
            raise
        acc.wait_for_everyone()
        return final or checkpoints.checkpoint_dir(self.work_dir, step)

    def _save_ema(self, checkpoint: Path) -> None:
        """The EMA weights: a diffusers model's as a ``save_pretrained`` folder beside its own (``dit_ema/``,
        what inference loads: ``--ckpt checkpoint-N/dit_ema``), another network's as ``ema.safetensors``."""
        model = self._unwrapped()
        if not self._saves_pretrained():
            names = [n for n, _ in model.named_parameters()]
            save_safetensors(dict(zip(names, self.ema.shadow_params)), checkpoint / checkpoints.EMA_FILE)
            return
        # diffusers' way: swap the EMA weights in, save, and put the trained ones back.
        self.ema.store(model.parameters())
        self.ema.copy_to(model.parameters())
        try:
            model.save_pretrained(str(checkpoint / self.ema_folder), safe_serialization=True)
        finally:
            self.ema.restore(model.parameters())

    def validation_pipeline(self) -> CascadeVPipeline:
        """``build_pipeline`` (the sampler of ``cascadev decode``) on the live DiT, unwrapped, and the frozen
        networks: the config's sampling options, in the training's precision."""
        live = {
            "dit": self._unwrapped(),
            "vae": self.frozen.vae,
            "compressor": self.frozen.compressor,
            "previewer": self.frozen.previewer,
        }
        live = {part: module for part, module in live.items() if module is not None}
        dtype = self.encoders.dtype
        return build_pipeline(
            self.cfg,
            tuple(live),
            device=self.accelerator.device,
            dtype=dtype,
            modules=live,
            autocast_dtype=None if dtype == torch.float32 else dtype,
        )

    @torch.no_grad()
    def validation_recon(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CascadeVPipeline]:
        """The held-out clip (T, 3, S, S) in [-1, 1], its condition latent (C, T, S/32, S/32) and its
        reconstruction (T, 3, S, S) by :meth:`validation_pipeline`, with the pipeline."""
        cfg = self.cfg
        pipe = self.validation_pipeline()
        # The whole held-out frame, resized (no crop at native size, no flip), padded when the clip is short.
        clip = VideoClipDataset(
            [setting(cfg, "validation.video")],
            *clip_geometry(cfg),
            seed=self.seed,
            short_video="pad",
            resize=True,
            hflip_prob=0.0,
        ).load_clip(0, np.random.default_rng(0))
        # The condition's one implementation (cascadev.conditioning), as in training: (C, T, h, w) on the CPU.
        cond = pipe.conditioner.latent(clip).cpu().transpose(0, 1)  # (T, C, h, w) -> (C, T, h, w)
        # Seed 0 every time: successive validation pictures differ only by the weights.
        recon = torch.cat(
            list(
                pipe.decode(
                    lambda a, b: cond[:, a:b],
                    cond.shape[1],
                    progress=False,
                    seed=0,
                    steps=int(setting(cfg, "validation.steps")),
                    scheduler=setting(cfg, "validation.scheduler"),
                )
            )
        )
        return clip, cond, recon, pipe

    def save_validation(self, step: int, columns: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
        """uint8 videos (T, S, S, 3), one per title -> ``work_dir/validation/step_N.png``: their first (up to)
        four frames side by side, labelled (``contact_sheet``). Returns those rows, (min(T, 4), S, len(titles) * S, 3)."""
        rows = side_by_side(*columns)[:4]
        out = self.work_dir / "validation" / f"step_{step:08d}.png"
        out.parent.mkdir(exist_ok=True)
        save_image(out, contact_sheet(list(rows), titles, range(len(rows))))
        return rows

    @torch.no_grad()
    def _validate(self, step: int) -> None:
        """Reconstruct the held-out clip with the current weights and save original | preview | recon."""
        acc = self.accelerator
        if acc.is_main_process and setting(self.cfg, "validation.video"):
            dit = self._unwrapped()
            dit.eval()
            clip, cond, recon, pipe = self.validation_recon()
            columns, titles = [to_uint8(clip)], ["original"]
            if pipe.previewer is not None:
                columns.append(to_uint8(pipe.preview(cond.cpu(), recon.shape[-2:])))  # (T, 3, S, S)
                titles.append(COMPARE_TITLES[1])  # as recon's comparison names it
            columns.append(to_uint8(recon))
            titles.append(f"step {step}")
            rows = self.save_validation(step, columns, titles)
            for tracker in acc.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_images("validation", np.stack(list(rows)), step, dataformats="NHWC")
            dit.train()
        acc.wait_for_everyone()
