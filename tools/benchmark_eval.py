"""Time `cascadev eval` on a measured subset and extrapolate the paper's protocol (200 videos x 64 frames).

    python tools/benchmark_eval.py --videos 2 --frames 8 --size 1024 --workers 1 2 [--cores 16]

Writes synthetic REF/REC pairs (a lossy copy), times PSNR + SSIM + flickering through `evaluate` with
each --workers value, and LPIPS (AlexNet, random weights: the same cost as the real ones) per frame on
this machine's CPU (and GPU when there is one). Prints the measured figures and the extrapolation:
the CPU metrics scale with cores (one video per worker), LPIPS runs in the main process.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cascadev.argparsing import Parser
from cascadev.argtypes import positive_int
from cascadev.evaluation import metrics as M
from cascadev.evaluation.runner import EvalOptions, evaluate
from cascadev.rules import VIDEO_CRF
from cascadev.video_io import write_video

PAPER_VIDEOS, PAPER_FRAMES = 200, 64


def make_pairs(root: Path, videos: int, frames: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for folder in ("ref", "rec"):
        (root / folder).mkdir()
    for i in range(videos):
        y, x = np.mgrid[0:size, 0:size]
        ref = np.stack([((x + y + 7 * t) % 256)[..., None].repeat(3, -1) for t in range(frames)]).astype(np.uint8)
        rec = np.clip(ref + rng.integers(-12, 13, size=ref.shape), 0, 255).astype(np.uint8)
        write_video(root / "ref" / f"{i}.mp4", ref, 30.0, crf=VIDEO_CRF)
        write_video(root / "rec" / f"{i}.mp4", rec, 30.0, crf=VIDEO_CRF)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=positive_int, default=2)
    p.add_argument("--frames", type=positive_int, default=8)
    p.add_argument("--size", type=positive_int, default=1024)
    p.add_argument(
        "--workers", type=positive_int, nargs="+", default=[1, 2], help="include 1: its CPU time is extrapolated"
    )
    p.add_argument("--cores", type=positive_int, default=16, help="cores of the machine to extrapolate to")
    args = p.parse_args(argv)
    total = args.videos * args.frames
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pairs(root, args.videos, args.frames, args.size)
        per_frame = {}
        for workers in args.workers:
            options = EvalOptions(
                str(root / "ref"),
                str(root / "rec"),
                str(root / "r.json"),
                metrics="psnr,ssim,temporal_flickering",
                workers=workers,
                progress=False,
            )
            started, cpu = time.perf_counter(), time.process_time()
            evaluate(options)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            line = f"psnr+ssim+flicker, {workers} worker(s): {seconds:.1f} s wall for {total} frames"
            if workers == 1:  # in this process: its CPU time is the cost per core, whatever else runs here
                per_frame[workers] = cpu / total
                line += f", {cpu:.1f} s CPU ({cpu / total:.3f} CPU s/frame)"
            print(line)
    torch.manual_seed(0)
    model = M.load_lpips("alex", "cpu", random_backbone=True)
    frames = np.random.default_rng(1).integers(0, 256, size=(4, args.size, args.size, 3), dtype=np.uint8)
    lpips = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        metric = M.LPIPSMetric(model.to(device), batch_size=4)
        metric(frames[:1], frames[:1])  # warm-up
        started, cpu = time.perf_counter(), time.process_time()
        metric(frames, frames[::-1].copy())
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        lpips[device] = (cpu if device == "cpu" else wall) / len(frames)
        print(f"lpips on {device}: {wall / len(frames):.3f} s/frame wall, {cpu / len(frames):.3f} CPU s/frame")
    paper = PAPER_VIDEOS * PAPER_FRAMES
    cpu_metrics = per_frame[1] * paper / args.cores
    lpips_cpu = lpips["cpu"] * paper / args.cores
    print(
        f"extrapolated, {PAPER_VIDEOS} x {PAPER_FRAMES} frames at {args.size}^2 on {args.cores} cores: "
        f"psnr+ssim+flicker {cpu_metrics / 60:.1f} min; with lpips on the CPU too {(cpu_metrics + lpips_cpu) / 60:.1f} min"
        + (
            f"; lpips on the GPU {lpips['cuda'] * paper / 60:.1f} min, beside the CPU metrics"
            if "cuda" in lpips
            else ""
        )
    )


if __name__ == "__main__":
    main()
