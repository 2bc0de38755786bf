#!/usr/bin/env python
"""Error of the DiT and of a whole sampling loop in each inference precision, against float64.

Runs the golden-structure DiT of tests/fixtures (the reference implementation's weights and inputs) by
default, or a full-size random DiT with ``--config``. Prints a Markdown table and writes JSON with -o.

    python tools/precision_table.py                     # CPU, the golden-structure DiT
    python tools/precision_table.py --device cuda       # on a GPU
    python tools/precision_table.py --device cuda --config configs/s1024_effn_f32.py --frames 8
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascadev.argparsing import Parser  # noqa: E402
from cascadev.argtypes import device as device_name  # noqa: E402
from cascadev.argtypes import positive_int  # noqa: E402
from cascadev.loading import PRECISIONS, load_config, resolve_device  # noqa: E402
from cascadev.models import build_model  # noqa: E402
from cascadev.models.dit import CascadeDiT  # noqa: E402
from cascadev.pipeline import CascadeVPipeline  # noqa: E402
from cascadev.reference import load_golden  # noqa: E402

# (label, precision name of cascadev.loading.PRECISIONS, attention product in fp32)
CANDIDATES = [
    ("fp32", "fp32", False),
    ("bf16 weights", "bf16", False),
    ("fp16 autocast (release: model.half() + autocast)", "fp16", False),
    ("fp16 autocast + fp32 attention (the release's exact setting)", "fp16", True),
]


def golden_dit() -> tuple[CascadeDiT, torch.Tensor, torch.Tensor]:
    spec, tensors, model = load_golden("dit_golden_a")
    x = rearrange(tensors["io.video.x"], "(b t) c h w -> b c t h w", b=spec["videos"])
    return model, x, tensors["io.video.t"]


def random_dit(config: str, frames: int | None) -> tuple[CascadeDiT, torch.Tensor, torch.Tensor]:
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(dict(cfg.model)).eval()
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    size = model.input_size
    x = torch.randn(1, model.in_channels, frames or model.lats_per_vid, size, size)
    return model, x, torch.tensor([500.0])


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


def configure(
    model: CascadeDiT, precision: str, fp32_attention: bool, device: torch.device
) -> tuple[CascadeDiT, torch.dtype | None]:
    p = PRECISIONS[precision]
    dit = build_like(model).to(device, p.dtype)
    dit.set_fp32_attention(fp32_attention)
    return dit, p.autocast


def build_like(model: CascadeDiT) -> CascadeDiT:
    return copy.deepcopy(model).eval()


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_name, default="cpu", help="cpu (default), auto, cuda or cuda:N")
    parser.add_argument(
        "--config", default=None, help="a full-size random DiT from this config instead of the golden one"
    )
    parser.add_argument("--frames", type=positive_int, default=None)
    parser.add_argument("--steps", type=positive_int, default=8)
    parser.add_argument("-o", "--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    model, x, t = golden_dit() if args.config is None else random_dit(args.config, args.frames)
    x, t = x.to(device), t.to(device)
    reference = build_like(model).to(device, torch.float64)
    y_ref = reference(x.double(), t.double())
    cond = x[0, 4:].transpose(0, 1).float()  # (T, 16, H, W): the condition part of the input
    pipe64 = CascadeVPipeline(dit=reference, device=device, dtype=torch.float64)
    z_ref = pipe64.sample(cond, steps=args.steps, seed=0)

    rows = []
    for label, precision, fp32_attention in CANDIDATES:
        dit, autocast = configure(model, precision, fp32_attention, device)
        p = PRECISIONS[precision]
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            tic = time.perf_counter()
            y = dit(x.to(p.dtype), t)
            forward_s = time.perf_counter() - tic
        pipe = CascadeVPipeline(dit=dit, device=device, dtype=p.dtype, autocast_dtype=autocast)
        z = pipe.sample(cond, steps=args.steps, seed=0)
        rows.append(
            dict(
                candidate=label,
                precision=precision,
                fp32_attention=fp32_attention,
                forward_rel_err=rel_err(y, y_ref),
                sample_rel_err=rel_err(z, z_ref),
                forward_s=forward_s,
            )
        )

    print(f"| candidate | one forward, rel. error vs fp64 | {args.steps}-step Euler-a sample, rel. error vs fp64 |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r['candidate']} | {r['forward_rel_err']:.2e} | {r['sample_rel_err']:.2e} |")
    if args.output:
        meta = dict(device=str(device), torch=torch.__version__, model="golden" if args.config is None else args.config)
        Path(args.output).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
