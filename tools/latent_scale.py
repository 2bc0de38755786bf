"""Print the scale_factor that gives a VAE's latents unit standard deviation on a config's training clips.

    python tools/latent_scale.py CONFIG [--weights-dir DIR] [--clips 8]

Latent diffusion scales the VAE latent so that it has about unit variance (Stable Diffusion's 0.18215,
SDXL's 0.13025); a VAE trained here (cascadev train-ae --part vae) needs its own value: 1 / std of the
posterior samples of the first ``--clips`` clips of ``video_list``.
"""

from __future__ import annotations

import torch
from mmengine.config import Config

from cascadev.argparsing import Parser, fail
from cascadev.argtypes import positive_int
from cascadev.config_defaults import setting
from cascadev.errors import CascadeVError
from cascadev.loading import build_pipeline, load_config
from cascadev.training.trainer import build_dataset


def latent_scale(cfg: Config, weights_dir: str | None, clips: int) -> float:
    """1 / std of unscaled posterior samples of the first ``clips`` training clips, drawn as training does."""
    # The posterior through the pipeline's Conditioner (chunked, as the trainer's FrozenEncoders call it).
    conditioner = build_pipeline(cfg, ["vae"], weights_dir=weights_dir).conditioner
    dataset = build_dataset(cfg, int(setting(cfg, "seed")), clips_per_batch=1)  # the clips, as the trainer reads them
    generator = torch.Generator().manual_seed(0)
    samples = []
    with torch.no_grad():
        for i in range(min(clips, len(dataset))):
            mean, std = conditioner.posterior(dataset[i]["video"])  # (T, 3, S, S) -> 2 x (T, 4, S/8, S/8)
            samples.append((mean + std * torch.randn(mean.shape, generator=generator)).flatten())
    return float(1.0 / torch.cat(samples).std())


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--weights-dir", default=None, help="folder with the VAE (default: the config's)")
    parser.add_argument("--clips", type=positive_int, default=8, help="training clips to measure (default 8)")
    args = parser.parse_args(argv)
    try:
        print(f"{latent_scale(load_config(args.config), args.weights_dir, args.clips):.5g}")
    except CascadeVError as exc:
        return fail("latent_scale", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
