#!/usr/bin/env python
"""Ways to run the SVD temporal decoder, each timed and checked against a float32 copy of it.

    python tools/svd_probe.py --device cuda -o svd_probe.json
    python tools/svd_probe.py --config configs/tiny.py --device cpu --frames 2 --size 64x64 --variants eager compile

One chunk of ``--frames`` frames (default 4, the release's chunk) at ``--size``, random weights at the
default precision. Per variant: seconds per chunk (median after a warm-up), the first call's seconds (the
compile), the relative error of its frames against float32 eager, and peak device memory. Variants:

- ``eager``: diffusers' decoder as it is;
- ``channels_last``: its 2D convolutions' weights in channels-last layout (cuDNN's NHWC kernels);
- ``compile``: the whole decoder through torch.compile (``sampling.vae_compile``,
  :func:`cascadev.models.svd_vae.compile_decoder`);
- ``compile_channels_last``: both;
- ``compile_blocks``: its mid block and each up block compiled on its own;
- ``compile_resblocks``: each spatio-temporal ResNet block compiled on its own (regional compilation).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import check_clip  # noqa: E402
from profile_cascade import timed  # noqa: E402

from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.argtypes import positive_int, width_by_height  # noqa: E402
from cascadev.atomic import atomic_output, check_output_path  # noqa: E402
from cascadev.cli import add_device_options  # noqa: E402
from cascadev.conditioning import VAE_STRIDE  # noqa: E402
from cascadev.errors import CascadeVError  # noqa: E402
from cascadev.loading import build_pipeline, load_config, resolve_device, resolve_precision  # noqa: E402
from cascadev.models import svd_vae  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile", "compile_channels_last", "compile_blocks", "compile_resblocks")


def prepared(vae: nn.Module, variant: str) -> nn.Module:
    """A copy of ``vae`` set up as ``variant`` (compiling happens at its first call)."""
    vae = copy.deepcopy(vae)
    if variant.endswith("channels_last"):
        for conv in (m for m in vae.modules() if isinstance(m, nn.Conv2d)):
            conv.to(memory_format=torch.channels_last)
    if variant in ("compile", "compile_channels_last"):
        svd_vae.compile_decoder(vae)
    elif variant == "compile_blocks":
        for block in [vae.decoder.mid_block, *vae.decoder.up_blocks]:
            block.compile(dynamic=False)
    elif variant == "compile_resblocks":
        for block in (m for m in vae.decoder.modules() if type(m).__name__ == "SpatioTemporalResBlock"):
            block.compile(dynamic=False)
    return vae


def measure(vae: nn.Module, z: torch.Tensor, reference: torch.Tensor, device: torch.device, repeats: int) -> dict:
    """Seconds, first-call seconds, error against ``reference`` and peak memory of decoding ``z``."""

    def decode() -> torch.Tensor:
        return vae.decode(z, num_frames=z.shape[0]).sample

    cuda = device.type == "cuda"
    tic = time.perf_counter()
    out = decode()
    if cuda:
        torch.cuda.synchronize(device)
    first = time.perf_counter() - tic
    seconds = timed(decode, device, repeats)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        decode()
    return {
        "seconds": seconds,
        "first_call_s": first,
        "rel_err_vs_fp32": ((out.float() - reference).norm() / reference.norm()).item(),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/s1024_effn_f32.py")
    add_device_options(parser)
    parser.add_argument("--frames", type=positive_int, default=4)
    parser.add_argument("--size", type=width_by_height, default=(1024, 1024), help="WxH (default 1024x1024)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per variant (median)")
    parser.add_argument("-o", "--output", default=None, help="JSON file")
    args = parser.parse_args(argv)
    try:
        width, height = args.size
        check_clip(args.frames, width, height, VAE_STRIDE)
        if args.output:
            check_output_path(args.output, "report")  # now, not after the measurements
        device = resolve_device(args.device)
        precision = resolve_precision(args.dtype, device)
        cfg = load_config(args.config)
        vae = build_pipeline(cfg, ["vae"], device=device, dtype=precision.dtype, random_init=True).vae
        z = torch.randn(args.frames, 4, height // VAE_STRIDE, width // VAE_STRIDE, device=device)
        report = {"config": args.config, "chunk": f"{args.frames}x{height}x{width}", "dtype": str(precision.dtype)}
        with torch.no_grad():
            reference = copy.deepcopy(vae).float().decode(z.float(), num_frames=args.frames).sample
            rows = {}
            for variant in args.variants:
                rows[variant] = measure(prepared(vae, variant), z.to(precision.dtype), reference, device, args.repeats)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(f"{variant}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[variant].items() if v is not None))
        report["variants"] = rows
        if args.output:
            with atomic_output(args.output, "report") as out:
                out.write_text(json.dumps(report, indent=1))
    except CascadeVError as exc:
        return fail("svd_probe", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
