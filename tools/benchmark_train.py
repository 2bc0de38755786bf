#!/usr/bin/env python
"""Training benchmark at real size: a few optimizer steps of `cascadev train`, with samples/s, peak GPU
memory, the DiT's MFU and the loss.

    python tools/benchmark_train.py --steps 3 -o train_1024.json
    python tools/benchmark_train.py --config configs/tiny.py --device cpu --steps 2

It runs the real trainer (``cascadev train --random-init``, frozen VAE and compressor at random) with the
config's recipe; for configs/s1024_effn_f32.py that is the release's: 8-frame clips at 1024x1024, fp16
mixed precision with fp32 attention, gradient checkpointing, CAME, batch 4. The clip is synthetic
(written first, not timed) and listed ``train_batch_size`` times, so every step has a full batch.

samples/s is the mean over the steps after the first (which includes the warm-up). MFU is the DiT's
model FLOPs per sample, 3x its forward (a forward and a backward of twice the cost; gradient
checkpointing's recomputed forward is not counted, as in PaLM's definition), times samples/s, over the
measured peak of a large fp16 matrix product (``--peak-tflops`` to override). The frozen VAE and
compressor that encode each clip are in the time but not in the FLOPs.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascadev import conditioning  # noqa: E402
from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.argtypes import positive_float, positive_int  # noqa: E402
from cascadev.atomic import atomic_output  # noqa: E402
from cascadev.cli import main as cascadev_main  # noqa: E402
from cascadev.config_defaults import setting  # noqa: E402
from cascadev.errors import CascadeVError  # noqa: E402
from cascadev.loading import load_config  # noqa: E402
from cascadev.models import build_model  # noqa: E402
from cascadev.training import metrics_log  # noqa: E402
from cascadev.training.trainer import clip_geometry  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import measured_peak_tflops, source_commit, synthetic_video  # noqa: E402
from benchmark_dit import dit_flops  # noqa: E402


def train_flops_per_sample(cfg) -> float:
    """Model FLOPs of one training clip through the DiT: 3x the forward of one window."""
    with torch.device("meta"):  # the FLOP count needs the architecture, not the weights
        dit = build_model(conditioning.dit_spec(cfg))
    size = dit.input_size
    return 3 * dit_flops(dit, dit.window_frames(size, size), size, size)


def run(config: str, steps: int, device: str, peak: float | None, work: Path, cfg_options: list[str]) -> dict:
    cfg = load_config(config, cfg_options)
    window, stride, size = clip_geometry(cfg)
    batch = int(setting(cfg, "train_batch_size"))
    clip = work / "clip.mp4"
    synthetic_video(clip, window * stride, size, size)  # the frames one clip spans
    listing = work / "train.txt"
    listing.write_text(f"{clip}\n" * batch)
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # A DiT from scratch: the released one (load_from) is not needed to time a step.
    options = [
        f"video_list=['{listing}']",
        "load_from=None",
        "log_interval=1",
        f"save_model_steps={steps + 1}",
        "num_workers=0",
    ]
    args = ["train", config, "--work-dir", str(work / "run"), "--max-steps", str(steps), "--random-init"]
    if cascadev_main([*args, "--quiet", "--device", device, "--cfg-options", *options, *cfg_options]) != 0:
        raise CascadeVError("the training run failed (its error is above)")
    records = metrics_log.read(work / "run")
    losses = [r["loss"] for r in records]
    if not all(math.isfinite(loss) for loss in losses):
        raise CascadeVError(f"the loss is not finite: {losses}")
    timed = records[1:] or records  # the first step pays for the warm-up
    samples_per_sec = sum(r["samples_per_sec"] for r in timed) / len(timed)
    flops = train_flops_per_sample(cfg)
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "commit": source_commit(),
        "config": config,
        "cfg_options": cfg_options,
        "clip": {"frames": window, "size": size, "batch": batch},
        "recipe": {key: setting(cfg, key) for key in ("mixed_precision", "fp32_attention", "grad_checkpointing")}
        | {"optimizer": cfg.optimizer["type"]},
        "steps": steps,
        "losses": losses,
        "samples_per_sec": samples_per_sec,
        "dit_train_tflop_per_sample": flops / 1e12,
        "peak_tflop_per_s": peak,
        "mfu": flops * samples_per_sec / 1e12 / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/s1024_effn_f32.py")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto (GPU when available) or cpu")
    parser.add_argument("--steps", type=positive_int, default=3, help="optimizer steps (default 3)")
    parser.add_argument("--peak-tflops", type=positive_float, default=None, help="instead of measuring a matmul")
    parser.add_argument("-o", "--output", default=None, help="JSON file")
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, e.g. fp32_attention=False"
    )
    args = parser.parse_args(argv)
    try:
        cuda = args.device != "cpu" and torch.cuda.is_available()
        peak = args.peak_tflops or (measured_peak_tflops(torch.device("cuda"), torch.float16) if cuda else None)
        with tempfile.TemporaryDirectory() as tmp:
            report = run(args.config, args.steps, args.device, peak, Path(tmp), args.cfg_options)
        text = json.dumps(report, indent=1)
        print(text)
        if args.output:
            with atomic_output(args.output, "report") as out:
                out.write_text(text)
    except CascadeVError as exc:
        return fail("benchmark_train", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
