#!/usr/bin/env python
"""Error of the DiT and of a whole sampling loop in each inference precision, against float64.

Runs the golden-structure DiT of tests/fixtures (the reference implementation's weights and inputs) by
default, or a full-size random DiT with ``--config``, against the same DiT in float64 (``--reference
fp32``: in float32 without TF32, for the full-size DiT, whose float64 attention does not fit on a GPU).
Prints a Markdown table and writes JSON with -o.

    python tools/precision_table.py                     # CPU, the golden-structure DiT
    python tools/precision_table.py --device cuda       # on a GPU
    python tools/precision_table.py --device cuda --config configs/s1024_effn_f32.py --reference fp32
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
from cascadev.conditioning import dit_spec  # noqa: E402
from cascadev.loading import PRECISIONS, cast, load_config, resolve_device  # noqa: E402
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
    model = build_model(dit_spec(cfg)).eval()
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
    dit = cast(build_like(model), device, p.dtype)
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
    parser.add_argument(
        "--reference",
        default="fp64",
        choices=["fp64", "fp32"],
        help="the reference's precision (fp32 for the full-size DiT on a GPU: float64 attention has only the "
        "math kernel, whose 32,768² scores per head do not fit)",
    )
    parser.add_argument("-o", "--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    model, x, t = golden_dit() if args.config is None else random_dit(args.config, args.frames)
    x, t = x.to(device), t.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    ref_dtype = torch.float64 if args.reference == "fp64" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
    reference = cast(build_like(model), device, ref_dtype)
    y_ref = reference(x.to(ref_dtype), t.to(ref_dtype))
    cond = x[0, 4:].transpose(0, 1).float()  # (T, 16, H, W): the condition part of the input
    pipe_ref = CascadeVPipeline(dit=reference, device=device, dtype=ref_dtype)
    z_ref = pipe_ref.sample(cond, steps=args.steps, seed=0)
    del reference, pipe_ref  # the full-size DiT: one copy on the device at a time

    rows = []
    for label, precision, fp32_attention in CANDIDATES:
        dit, autocast = configure(model, precision, fp32_attention, device)
        p = PRECISIONS[precision]
        seconds = []  # the first call (kernels chosen and built: cuDNN's attention graphs), then the steady state
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            for _ in range(2):
                sync()
                tic = time.perf_counter()
                y = dit(x.to(p.dtype), t)
                sync()
                seconds.append(time.perf_counter() - tic)
        pipe = CascadeVPipeline(dit=dit, device=device, dtype=p.dtype, autocast_dtype=autocast)
        z = pipe.sample(cond, steps=args.steps, seed=0)
        rows.append(
            dict(
                candidate=label,
                precision=precision,
                fp32_attention=fp32_attention,
                forward_rel_err=rel_err(y, y_ref),
                sample_rel_err=rel_err(z, z_ref),
                first_forward_s=seconds[0],
                forward_s=seconds[1],
            )
        )
        del dit, pipe

    ref = args.reference
    print(f"| candidate | one forward, rel. error vs {ref} | {args.steps}-step Euler-a sample, rel. error vs {ref} |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r['candidate']} | {r['forward_rel_err']:.2e} | {r['sample_rel_err']:.2e} |")
    if args.output:
        meta = dict(
            device=str(device),
            torch=torch.__version__,
            model="golden" if args.config is None else args.config,
            reference=args.reference,
        )
        Path(args.output).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
