#!/usr/bin/env python
"""Time the DiT on one window: forward latency, achieved TFLOP/s and peak memory.

    python tools/benchmark_dit.py --config configs/s1024_effn_f32.py --device cuda --dtype bf16
    python tools/benchmark_dit.py --config configs/tiny.py --device cpu

Random weights (speed does not depend on them). FLOPs are counted analytically: the linear layers
(24 N D^2 per block: qkv, projection, 4x MLP) plus the two attention products (4 n^2 D per grid cell
of n tokens), patch embedding and output head; one multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from cascadev.argparsing import Parser
from cascadev.argtypes import positive_int
from cascadev.cli import add_device_options
from cascadev.conditioning import dit_spec
from cascadev.loading import cast, load_config, resolve_device, resolve_dtype
from cascadev.models import build_model
from cascadev.models.dit import CascadeDiT


def dit_flops_parts(model: CascadeDiT, frames: int, height: int, width: int) -> dict[str, float]:
    """Analytic FLOPs of one forward over a (frames, height, width) latent window, by kind of work:
    ``linear`` (patch embedding, qkv, projection, MLP, head) and ``attention`` (q k^T and attn v)."""
    p, d = model.patch_size, model.hidden_size
    rows, cols = height // p, width // p
    n = frames * rows * cols
    linear = 2 * n * model.in_channels * p * p * d + 2 * n * d * p * p * model.out_channels
    attention = 0
    mlp = model.blocks[0].mlp.fc1.out_features
    for i in range(len(model.blocks)):
        cells = model.grid_cells(model.attn_strides[i % len(model.attn_strides)], frames)
        groups = 1 if cells is None else cells[0] * cells[1] ** 2
        linear += 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * mlp  # qkv, proj, mlp
        attention += 4 * (n // groups) ** 2 * d * groups  # q k^T and attn v
    return {"linear": float(linear), "attention": float(attention)}


def calls_flops_parts(model, shapes: list[tuple[int, ...]]) -> dict[str, float]:
    """:func:`dit_flops_parts` summed over DiT calls with inputs of ``shapes`` (B, C, T, H, W)."""
    total = {"linear": 0.0, "attention": 0.0}
    for b, _, frames, height, width in shapes:
        for kind, work in dit_flops_parts(model, frames, height, width).items():
            total[kind] += b * work
    return total


def dit_flops(model, frames: int, height: int, width: int) -> float:
    """Analytic FLOPs of one forward over a (frames, height, width) latent window."""
    return sum(dit_flops_parts(model, frames, height, width).values())


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/s1024_effn_f32.py")
    add_device_options(parser)
    parser.add_argument("--batch", type=positive_int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument(
        "--2x", dest="hires", action="store_true", help="2x mode: twice the size, a quarter of the frames"
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    cfg = load_config(args.config)
    model = cast(build_model(dit_spec(cfg)), device, dtype).eval()
    size = model.input_size * (2 if args.hires else 1)
    frames = model.window_frames(size, size)
    x = torch.randn(args.batch, model.in_channels, frames, size, size, device=device, dtype=dtype)
    t = torch.full((args.batch,), 500.0, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        model(x, t)  # warm-up (kernel selection)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.repeats):
            model(x, t)
        sync()
    seconds = (time.perf_counter() - start) / args.repeats
    flops = dit_flops(model, frames, size, size) * args.batch
    report = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "window": [args.batch, model.in_channels, frames, size, size],
        "params": sum(p.numel() for p in model.parameters()),
        "seconds_per_forward": round(seconds, 4),
        "tflops": round(flops / 1e12, 3),
        "achieved_tflop_per_s": round(flops / seconds / 1e12, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
