#!/usr/bin/env python
"""Where the time of a reconstruction goes, one level below the stages of tools/benchmark.py.

    python tools/profile_cascade.py --device cuda -o profile.json
    python tools/profile_cascade.py --config configs/tiny.py --device cpu --frames 4 --size 64x64

Full-size models with random weights at the default precision (speed does not depend on the weights),
an 8 x 1024 x 1024 clip unless told otherwise. Five measurements, each after a warm-up:

- ``attention``: the DiT's SDPA call alone at the shape of each attention pattern (cells x heads x
  tokens x head dim: 2,048, 8,192 and 32,768 tokens for the release), for each kernel, in TFLOP/s
  (q k^T and attn v: 4 n^2 d per cell). Which kernel wins at which length; and each kernel's rate at
  the head dims kernels are built for (64, 96, 128) beside the model's (72 for the release), to show
  what an unusual head dim costs.
- ``dit``: one sampling step under torch.profiler, device time by kind of kernel (attention, matrix
  product, the rest), and the TFLOP/s of the first two from the analytic FLOPs
  (tools/benchmark_dit.py): how far each is from the matmul peak, and what the rest costs.
- ``svd``: one SVD-decoder chunk (``vae_chunk`` frames): its FLOPs (``FlopCounterMode``) and TFLOP/s,
  device time by operator and input rank under torch.profiler (the 2D convolutions apart from the
  temporal Conv3d), and its time with cuDNN's autotuner (``torch.backends.cudnn.benchmark``) off and on,
  and compiled (``sampling.vae_compile``, :func:`cascadev.models.svd_vae.compile_decoder`; inductor on
  CUDA, on the CPU dynamo's ``eager`` backend, which checks the path but times nothing faster).
- ``transfer``: the one host round trip a segment makes between the DiT and the SVD decoder (the sampled
  latent, (T, 4, H/8, W/8) float32, to the host and back), each way timed with the copy synchronized:
  what keeping the latent on the device would save.
- ``host``: cProfile of the main thread over a whole recon (encode, then decode through the latent
  file): the functions that hold it outside the models, which tools/benchmark.py reports together as
  ``read_and_encode``.

The JSON (``-o``) holds every figure; the printout ends with a line or a few for each measurement.
"""

from __future__ import annotations

import copy
import cProfile
import json
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.argtypes import positive_int, width_by_height  # noqa: E402
from cascadev.atomic import atomic_output, check_output_path  # noqa: E402
from cascadev.cli import add_device_options  # noqa: E402
from cascadev.conditioning import VAE_STRIDE  # noqa: E402
from cascadev.errors import CascadeVError, first_line  # noqa: E402
from cascadev.latent_io import LATENT_CHANNELS, LATENT_STRIDE  # noqa: E402
from cascadev.loading import build_pipeline, load_config, resolve_device, resolve_precision  # noqa: E402
from cascadev.models import svd_vae  # noqa: E402
from cascadev.reconstruct import SamplingArgs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import (  # noqa: E402
    check_clip,
    measured_peak_tflops,
    recorded_dit_calls,
    run_task,
    source_commit,
    synthetic_video,
)
from benchmark_dit import calls_flops_parts  # noqa: E402

SECTIONS = ("attention", "dit", "svd", "transfer", "host")
# Kernel names by kind; attention first: cuDNN's attention kernels also carry "sm90" and "wgmma".
ATTENTION_KERNEL = re.compile(r"fmha|flash|attention|attn|sdpa", re.I)
MATMUL_KERNEL = re.compile(r"gemm|nvjet|cutlass|xmma|wgmma|matmul|aten::(addmm|mm|bmm|linear)$", re.I)
# The kernels timed on CUDA (the math kernel's 32,768² scores per head do not fit), by SDPBackend member.
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
# Head dims the attention kernels are tiled for, timed beside the model's: a rate at 72 near 72/96 of the
# rate at 96 means the kernel pads 72 up to 96.
COMPARED_HEAD_DIMS = (64, 96, 128)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up (device events on CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            tic = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tic)
    return statistics.median(times)


def profiled(fn: Callable[[], object], device: torch.device, shapes: bool = False) -> torch.profiler.profile:
    """torch.profiler over one call of ``fn`` (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=shapes) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof


def kernel_rows(prof: torch.profiler.profile, device: torch.device) -> list[tuple[str, float]]:
    """(name, seconds) of each device kernel (CUDA), or of each CPU operator's own time (CPU)."""
    if device.type == "cuda":
        from torch.autograd import DeviceType

        return [
            (e.key, e.self_device_time_total / 1e6)
            for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
        ]
    return [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages() if e.key.startswith("aten::")]


def attention_section(pipe, device: torch.device, repeats: int) -> list[dict]:
    """SDPA alone at the shape of each of the DiT's attention patterns over one window, per kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dit, dtype = pipe.dit, pipe.autocast_dtype or pipe.dtype
    p, heads = dit.patch_size, dit.blocks[0].attn.num_heads
    head_dim = dit.hidden_size // heads
    window, size = dit.lats_per_vid, dit.input_size
    tokens = window * (size // p) ** 2
    backends = SDPA_BACKENDS if device.type == "cuda" else {"math": "MATH"}
    scores = heads * tokens**2 * torch.finfo(dtype).bits // 8  # the math kernel's, for full attention
    if device.type == "cpu" and scores > 2**32:
        raise CascadeVError(
            f"the attention section on the CPU runs the math kernel, whose scores for {tokens} tokens would take "
            f"{scores / 2**30:.0f} GiB; run it on a GPU, or leave it out (--sections dit svd host)"
        )
    rows = []
    for strides in dict.fromkeys(dit.attn_strides):  # each pattern once, in order
        cells = dit.grid_cells(strides, window)
        groups = 1 if cells is None else cells[0] * cells[1] ** 2
        n = tokens // groups
        row = {"strides": None if strides is None else list(strides), "cells": groups, "tokens": n}
        for name, member in backends.items():
            with sdpa_kernel(getattr(SDPBackend, member)):
                try:
                    seconds = _sdpa_seconds(groups, heads, n, head_dim, device, dtype, repeats)
                except RuntimeError as exc:  # no kernel of this backend for the shape or device
                    row[name] = {"error": first_line(exc, 120)}
                    continue
                flops = 4 * n * n * head_dim * heads * groups
                row[name] = {"ms": seconds * 1e3, "tflop_per_s": flops / seconds / 1e12, "by_head_dim": {}}
                for d in COMPARED_HEAD_DIMS:
                    try:
                        other = _sdpa_seconds(groups, heads, n, d, device, dtype, repeats)
                    except RuntimeError:
                        continue
                    row[name]["by_head_dim"][str(d)] = 4 * n * n * d * heads * groups / other / 1e12
        rows.append(row)
    return rows


def _sdpa_seconds(
    groups: int, heads: int, n: int, head_dim: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> float:
    """Median seconds of one SDPA call on random (groups, heads, n, head_dim) q, k, v."""
    q, k, v = (torch.randn(groups, heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
    return timed(lambda: F.scaled_dot_product_attention(q, k, v), device, repeats)


def dit_section(pipe, latent: torch.Tensor, device: torch.device, peak: float | None) -> dict:
    """One sampling step under the profiler: device time by kind of kernel, and each kind's TFLOP/s."""
    cond = pipe.condition(latent)
    with recorded_dit_calls(pipe) as calls:  # cleared before each call: the profiled one's are kept
        prof = profiled(lambda: calls.clear() or pipe.sample(cond, steps=1), device)
    kinds = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    top = sorted(kernel_rows(prof, device), key=lambda r: -r[1])
    for name, seconds in top:
        kind = "attention" if ATTENTION_KERNEL.search(name) else "matmul" if MATMUL_KERNEL.search(name) else "other"
        kinds[kind] += seconds
    flops = calls_flops_parts(pipe.dit, calls)
    result = {"seconds": kinds, "dit_calls": len(calls), "top": [{"kernel": n[:160], "s": s} for n, s in top[:15]]}
    for kind, work in (("attention", flops["attention"]), ("matmul", flops["linear"])):
        if kinds[kind]:
            result[f"{kind}_tflop_per_s"] = work / kinds[kind] / 1e12
            result[f"{kind}_of_peak"] = work / kinds[kind] / 1e12 / peak if peak else None
    return result


def svd_section(pipe, height: int, width: int, device: torch.device, repeats: int, peak: float | None) -> dict:
    """One SVD-decoder chunk: its FLOPs (counted), device time by operator and input rank, and its time
    with cudnn.benchmark off and on."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(pipe.vae_chunk, 4, height // VAE_STRIDE, width // VAE_STRIDE, device=device)
    with FlopCounterMode(display=False) as counter:
        pipe.vae_decode(z)
    flops = counter.get_total_flops()
    prof = profiled(lambda: pipe.vae_decode(z), device, shapes=True)
    totals: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        if not e.key.startswith("aten::") or e.key in ("aten::empty", "aten::empty_strided"):
            continue
        rank = len(e.input_shapes[0]) if e.input_shapes and e.input_shapes[0] else 0
        name = f"{e.key} {rank}D" if e.key in ("aten::convolution", "aten::cudnn_convolution") else e.key
        spent = (e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total) / 1e6
        totals[name] = totals.get(name, 0.0) + spent
    result = {"chunk_frames": pipe.vae_chunk, "by_operator": dict(sorted(totals.items(), key=lambda kv: -kv[1])[:15])}
    saved = torch.backends.cudnn.benchmark
    try:
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            result[f"seconds_cudnn_benchmark_{str(flag).lower()}"] = timed(lambda: pipe.vae_decode(z), device, repeats)
    finally:
        torch.backends.cudnn.benchmark = saved
    reference = pipe.vae_decode(z)
    # sampling.vae_compile on a copy, so that the pipeline's own decoder (the host section's) stays as the
    # config has it. The first call compiles (seconds, or ~45 s for the full decoder on an H100).
    compiled = copy.copy(pipe)
    compiled.vae = copy.deepcopy(pipe.vae)
    backend = "inductor" if device.type == "cuda" else "eager"
    svd_vae.compile_decoder(compiled.vae, backend=backend)
    tic = time.perf_counter()
    out = compiled.vae_decode(z)
    result["compiled"] = {
        "backend": backend,
        "first_call_s": time.perf_counter() - tic,
        "seconds": timed(lambda: compiled.vae_decode(z), device, repeats),
        "rel_err": ((out - reference).norm() / reference.norm()).item(),
    }
    result["tflop_per_chunk"] = flops / 1e12
    result["tflop_per_s"] = flops / result["seconds_cudnn_benchmark_false"] / 1e12
    result["of_peak"] = result["tflop_per_s"] / peak if peak else None
    return result


def transfer_section(frames: int, height: int, width: int, device: torch.device, repeats: int) -> dict:
    """Seconds of the sampled latent's trip to the host (``CascadeVPipeline.sample`` returns it there)
    and back (``vae_decode``), per segment of ``frames`` frames."""
    latent = torch.randn(frames, 4, height // VAE_STRIDE, width // VAE_STRIDE, device=device)  # (T, 4, h, w)
    on_host = latent.cpu()
    return {
        "latent_mib": latent.numel() * latent.element_size() / 2**20,
        "to_host_s": timed(lambda: latent.cpu(), device, repeats),  # .cpu() waits for the copy
        "to_device_s": timed(lambda: on_host.to(device), device, repeats),
    }


def host_section(pipe, frames: int, height: int, width: int, work: Path) -> dict:
    """cProfile of the main thread over a recon (encode + decode through the latent file), after a warm-up."""
    src = work / "in.mp4"
    synthetic_video(src, frames, height, width)
    run_task(pipe, src, work / "warmup", SamplingArgs(steps=1, progress=False), None)
    profiler = cProfile.Profile()
    tic = time.perf_counter()
    profiler.enable()
    run_task(pipe, src, work / "timed", SamplingArgs(steps=8, seed=0, progress=False), None)
    profiler.disable()
    total = time.perf_counter() - tic
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append(
            {
                "function": f"{Path(path).name}:{line}({function})",
                "calls": calls,
                "own_s": own,
                "cumulative_s": cumulative,
            }
        )
    return {
        "seconds": total,
        "by_own_time": sorted(rows, key=lambda r: -r["own_s"])[:20],
        "cascadev_by_cumulative": sorted(
            (r for r in rows if not r["function"].startswith(("<", "{"))), key=lambda r: -r["cumulative_s"]
        )[:25],
    }


def summary(report: dict) -> str:
    lines = [f"Device: {report['device']}; torch {report['torch']}; {report['clip']}."]
    for row in report.get("attention", []):
        kernels = ", ".join(
            f"{k} {v['tflop_per_s']:.0f}" + _at_head_dims(v.get("by_head_dim")) if "tflop_per_s" in v else f"{k} -"
            for k, v in row.items()
            if isinstance(v, dict)
        )
        lines.append(f"attention {row['strides']}: {row['cells']} cells x {row['tokens']} tokens: TFLOP/s {kernels}")
    if "dit" in report:
        d = report["dit"]
        spent = ", ".join(f"{k} {v:.3f}" for k, v in d["seconds"].items())
        rates = ", ".join(
            f"{k} {d[f'{k}_tflop_per_s']:.0f}" for k in ("attention", "matmul") if f"{k}_tflop_per_s" in d
        )
        lines.append(f"dit step: seconds {spent}; TFLOP/s {rates}")
    if "svd" in report:
        s = report["svd"]
        ops = ", ".join(f"{k} {v:.3f}" for k, v in list(s["by_operator"].items())[:6])
        lines.append(
            f"svd chunk of {s['chunk_frames']}: {s['tflop_per_chunk']:.2f} TFLOP in {s['seconds_cudnn_benchmark_false']:.3f} s "
            f"(cudnn.benchmark {s['seconds_cudnn_benchmark_true']:.3f} s; compiled, {s['compiled']['backend']}: "
            f"{s['compiled']['seconds']:.3f} s after {s['compiled']['first_call_s']:.0f} s), "
            f"{s['tflop_per_s']:.0f} TFLOP/s; {ops}"
        )
    if "transfer" in report:
        t = report["transfer"]
        lines.append(
            f"latent round trip per segment ({t['latent_mib']:.1f} MiB): to the host {t['to_host_s'] * 1e3:.2f} ms, "
            f"back {t['to_device_s'] * 1e3:.2f} ms"
        )
    if "host" in report:
        h = report["host"]
        own = ", ".join(f"{r['function']} {r['own_s']:.3f}" for r in h["by_own_time"][:6])
        lines.append(f"host: recon {h['seconds']:.2f} s; most own time: {own}")
    return "\n".join(lines)


def _at_head_dims(rates: dict | None) -> str:
    """ " (head dim 64: 410, 96: ...)" from a kernel's ``by_head_dim`` rates; nothing where none were timed."""
    if not rates:
        return ""
    return " (head dim " + ", ".join(f"{d}: {r:.0f}" for d, r in rates.items()) + ")"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/s1024_effn_f32.py")
    add_device_options(parser)
    parser.add_argument("--frames", type=positive_int, default=8)
    parser.add_argument("--size", type=width_by_height, default=(1024, 1024), help="WxH (default 1024x1024)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed runs per figure (median)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    parser.add_argument("-o", "--output", default=None, help="JSON file")
    args = parser.parse_args(argv)
    try:
        width, height = args.size
        check_clip(args.frames, width, height, LATENT_STRIDE)
        if args.output:
            check_output_path(args.output, "report")  # now, not after the measurements
        device = resolve_device(args.device)
        precision = resolve_precision(args.dtype, device)
        cfg = load_config(args.config, args.cfg_options)
        pipe = build_pipeline(
            cfg,
            ["dit", "compressor", "vae"],
            device=device,
            dtype=precision.dtype,
            autocast_dtype=precision.autocast,
            random_init=True,
        )
        report = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "commit": source_commit(),
            "config": args.config,
            "clip": f"{args.frames}x{height}x{width}",
            "precision": {"weights": str(precision.dtype), "autocast": str(precision.autocast)},
            "peak_tflop_per_s": measured_peak_tflops(device, torch.float16),
        }
        latent = torch.randn(
            LATENT_CHANNELS, args.frames, height // LATENT_STRIDE, width // LATENT_STRIDE
        )  # (C, T, h, w)
        with torch.no_grad():
            if "attention" in args.sections:
                report["attention"] = attention_section(pipe, device, args.repeats)
            if "dit" in args.sections:
                report["dit"] = dit_section(pipe, latent, device, report["peak_tflop_per_s"])
            if "svd" in args.sections:
                report["svd"] = svd_section(pipe, height, width, device, args.repeats, report["peak_tflop_per_s"])
            if "transfer" in args.sections:
                report["transfer"] = transfer_section(args.frames, height, width, device, args.repeats)
        if "host" in args.sections:
            with tempfile.TemporaryDirectory() as tmp:
                report["host"] = host_section(pipe, args.frames, height, width, Path(tmp))
        text = json.dumps(report, indent=1)
        if args.output:
            with atomic_output(args.output, "report") as out:
                out.write_text(text)
        print(summary(report))
    except CascadeVError as exc:
        return fail("profile_cascade", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
