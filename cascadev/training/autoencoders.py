"""Training the networks the DiT stands on: the semantic compressor with its previewer, and the video VAE.

``cascadev train-ae CONFIG --part compressor|vae --work-dir DIR`` runs the :class:`Trainer`'s loop
(accelerate, logging to ``metrics.jsonl`` and tensorboard, checkpoints, resume from the newest one)
on another network and loss:

* ``compressor``: the semantic compressor (backbone + mapper) and the previewer, trained together as an
  autoencoder: frames -> 1/32 latent -> previewer -> 1/4-size image, against the frames downscaled 4x
  (L1 + MSE in [0, 1]). The previewer shows what the latent holds; the DiT later learns the rest.
* ``vae``: diffusers' ``AutoencoderKLTemporalDecoder`` on clips: L1 + MSE of the reconstruction in
  [-1, 1] plus ``kl_weight`` times the KL divergence per latent element; the temporal decoder sees the
  clip's ``num_frames_per_video`` frames together.

Keys of ``autoencoder_training[part]`` in the config override the top-level training keys
(``train_batch_size``, ``optimizer``, ``num_frames_per_video``, ...) for that part. When a run ends, the
trained weights are exported under the config's ``weights`` names into ``--export`` (default
``WORK_DIR/weights``), where ``--weights-dir`` of every other command finds them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import publish_mode
from ..checkpoint import save_safetensors
from ..conditioning import COMPRESSOR_STRIDE, VAE_STRIDE
from ..config_defaults import setting
from ..config_schema import validate_config
from ..errors import CascadeVError
from ..frames import resize, to_uint8
from ..loading import build_pipeline
from ..models import build_model
from ..models.compressor import PREVIEWER_UPSAMPLING
from ..rules import AUTOENCODER_PARTS, check_choice
from .trainer import Trainer, TrainOptions

if TYPE_CHECKING:
    from mmengine.config import Config

PARTS = AUTOENCODER_PARTS


class CompressorAutoencoder(nn.Module):
    """The semantic compressor and its previewer as one trainable autoencoder."""

    def __init__(self, compressor: nn.Module, previewer: nn.Module) -> None:
        super().__init__()
        self.compressor, self.previewer = compressor, previewer

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [-1, 1] -> previews (N, 3, H/4, W/4), roughly in [0, 1]."""
        return self.previewer(self.compressor.encode_frames(frames))


def part_config(cfg: Config, part: str) -> Config:
    """``cfg`` with ``autoencoder_training[part]`` merged over its top-level keys."""
    check_choice(part, PARTS, "part")
    cfg = cfg.copy()
    cfg.load_from = None  # the top-level load_from is the DiT's file; a part names its own start
    overrides = dict(cfg.get("autoencoder_training", {}).get(part, {}))
    source = f"config {Path(cfg.filename).name}" + (f" with autoencoder_training.{part}" if overrides else "")
    if overrides:
        cfg.merge_from_dict(overrides)
        validate_config(cfg.to_dict(), source)
    cfg.cache_latents = False  # latent caching is the DiT's, whatever a part says: these networks see pixels
    # The crops must tile the network's latent grid: 1/32 for the compressor, 1/8 for the VAE.
    stride = COMPRESSOR_STRIDE if part == "compressor" else VAE_STRIDE
    size = setting(cfg, "sample_size")
    if size % stride:
        raise CascadeVError(f"sample_size {size} must be a multiple of {stride} to train the {part} (in {source}).")
    return cfg


class AutoencoderTrainer(Trainer):
    """The Trainer's loop on the compressor + previewer or on the VAE (``self.dit`` is the trained network)."""

    def __init__(self, cfg: Config, options: TrainOptions, part: str, export_dir: str | Path | None = None) -> None:
        self.part = part
        self.model_folder = part  # the VAE's save_pretrained folder in checkpoints
        self.export_dir = Path(export_dir) if export_dir is not None else Path(options.work_dir) / "weights"
        super().__init__(part_config(cfg, part), options)

    def build_model(self) -> nn.Module:
        """The trained network, compressor + previewer or the VAE: on a fresh run from the weights folder
        ``load_from`` names (as ``--weights-dir`` would, under the config's ``weights`` names), else at
        random (seeded)."""
        cfg = self.cfg
        start = setting(cfg, "load_from") if self.resume_from is None else None
        if start:
            return self._load_start(start)
        torch.manual_seed(self.seed)
        if self.part == "compressor":
            return CompressorAutoencoder(build_model(dict(cfg.compressor)), build_model(dict(cfg.previewer)))
        return build_model(dict(cfg.vae))

    def _load_start(self, folder) -> nn.Module:
        """The exported weights of an earlier run (``load_from``), made trainable again."""
        key = f"autoencoder_training.{self.part}.load_from"
        if not isinstance(folder, (str, Path)) or not Path(folder).is_dir():
            raise CascadeVError(
                f"{key} must be a folder of exported weights (what --weights-dir names), got {folder!r}"
            )
        names = ["compressor", "previewer"] if self.part == "compressor" else ["vae"]
        for name in names:
            file = setting(self.cfg, f"weights.{name}")
            if not (Path(folder) / file).exists():
                raise CascadeVError(f"{key} {folder} has no {file} (the {name} a train-ae run exports)")
        nets = build_pipeline(self.cfg, names, weights_dir=folder)
        model = CompressorAutoencoder(nets.compressor, nets.previewer) if self.part == "compressor" else nets.vae
        return model.requires_grad_(True)  # build_pipeline hands out frozen networks

    def _loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        video = batch["video"].to(self.accelerator.device)
        frames = video.flatten(0, 1)  # (B, T, 3, S, S) -> (B*T, 3, S, S)
        if self.part == "compressor":
            preview = self.dit(frames)  # (B*T, 3, S/4, S/4), about [0, 1]: the previewer's 8x of the 1/32 latent
            factor = COMPRESSOR_STRIDE // PREVIEWER_UPSAMPLING
            target = F.avg_pool2d((frames + 1) / 2, factor)  # (B*T, 3, S/4, S/4), the frames' [0, 1] range
            return F.l1_loss(preview, target) + F.mse_loss(preview, target)
        posterior = self.dit.encode(frames).latent_dist
        # The posterior sample draws from the step's generator, so a resumed run repeats it exactly.
        eps = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device)
        latent = posterior.mean + posterior.std * eps  # (B*T, 4, S/8, S/8)
        recon = self.dit.decode(latent, num_frames=video.shape[1]).sample  # (B*T, 3, S, S)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return F.l1_loss(recon, frames) + F.mse_loss(recon, frames) + float(setting(self.cfg, "kl_weight")) * kl

    @torch.no_grad()
    def _validate(self, step: int) -> None:
        """Save original | reconstruction of the first training clip (up to four frames) as a labelled PNG."""
        acc = self.accelerator
        if acc.is_main_process:
            model = self._unwrapped()
            model.eval()
            clip = self.dataset.load_clip(0, np.random.default_rng(0))[None].to(acc.device)
            frames = clip.flatten(0, 1)  # (1, T, 3, S, S) -> (T, 3, S, S)
            if self.part == "compressor":
                recon = resize(model(frames), frames.shape[-2:]) * 2 - 1  # previewer: [0, 1] at 1/4 size
            else:
                recon = model(frames, num_frames=clip.shape[1]).sample
            self.save_validation(step, [to_uint8(frames), to_uint8(recon)], ["original", f"step {step}"])
            model.train()
        acc.wait_for_everyone()

    def fit(self) -> Path | None:
        last = super().fit()
        if self.accelerator.is_main_process:
            self.export(self.export_dir)
        self.accelerator.wait_for_everyone()
        return last

    @torch.no_grad()
    def _recalibrate_batchnorm(self, model: nn.Module, batches: int = 16) -> None:
        """Recompute every BatchNorm's running statistics with the final weights, over ``batches`` training
        batches (torch's ``update_bn``: a plain average). The running averages gathered while the weights
        moved lag behind them, and inference (eval mode) uses them."""
        from torch.optim.swa_utils import update_bn

        device = self.accelerator.device
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(self.dataset))
        size = self.batch_size

        def frames():
            for b in range(min(batches, len(order) // size)):
                clips = [self.dataset[int(i)]["video"] for i in order[b * size : (b + 1) * size]]
                yield torch.cat(clips).to(device)  # B clips (T, 3, S, S) -> (B*T, 3, S, S)

        update_bn(frames(), model)
        model.eval()

    def export(self, out_dir: Path) -> list[Path]:
        """Write the trained weights under the config's ``weights`` names in ``out_dir``; returns the paths."""
        model = self._unwrapped()
        out_dir.mkdir(parents=True, exist_ok=True)
        names = {name: setting(self.cfg, f"weights.{name}") for name in ("compressor", "previewer", "vae")}
        if self.part == "compressor":
            self._recalibrate_batchnorm(model)
            written = [out_dir / names["compressor"], out_dir / names["previewer"]]
            for module, path in zip((model.compressor, model.previewer), written):
                save_safetensors({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, path)
            return written
        final = out_dir / names["vae"]
        tmp = out_dir / f".{final.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        publish_mode(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return [final]
