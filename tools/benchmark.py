#!/usr/bin/env python
"""End-to-end benchmark of the cascade at real size: per-stage times, DiT TFLOP/s and MFU, peak memory.

Full-size models with random weights (speed does not depend on them): the DiT of the config (456M for
the release), the SVD VAE and the EfficientNetV2-S compressor. A synthetic input video is written
first (not timed); then the real file-level tasks run (``encode`` then ``decode``, or ``upscale``) with
every stage timed: reading + encoding, each DiT sampling step, SVD decoding, writing; end to end
without model loading, and model loading alone. The JSON report (``-o``) is rewritten after every run,
so that a benchmark stopped midway keeps what it measured. Each timed pass follows an
untimed one-step pass over the same input (``--no-warmup`` to time the cold start instead), so that the
figures are the steady state: compiling, cuDNN's autotuning and the allocator's growth happen there, and
its time is reported as ``warmup``.

Reading runs ahead and writing behind on background threads (:mod:`cascadev.overlap`); ``read`` and
``write`` are their busy times (decoding input frames; converting and encoding output frames),
``write_wait`` the part of the writing the main thread waited for (all of it with ``--io-depth 0``,
which runs the I/O inline: the overlap lever's baseline), and ``read_and_encode`` what the main thread
spent outside the models and the writer (``of_which_compressor``; ``of_which_video_close``, the output
file's closing: the encoder's flush, muxing, renaming).

    python tools/benchmark.py --device cuda --case 8x1024 --settings both -o bench_8x1024.json
    python tools/benchmark.py --device cuda --case all -o bench_all.json
    python tools/benchmark.py --device cuda --case 25x576x1024 8x2048 --settings default -o bench_more.json
    python tools/benchmark.py --config configs/tiny.py --device cpu --case custom --frames 4 --size 64x64
    python tools/benchmark.py --case 8x1024 --settings default --cfg-options sampling.compile=default

``--settings release`` runs "release settings" (fp16 weights under fp16 autocast, fp32 attention
math, one DiT call per window and tile, eager); ``default`` the project's defaults, with any
``--cfg-options`` (the speed levers: ``sampling.batch_size``, ``sampling.compile``,
``sampling.attention_backend``); ``both`` runs them one after the other and reports the speed ratio. MFU is the DiT's analytic FLOPs per second over the
measured peak of a large fp16 matrix product on the same device (``--peak-tflops`` to override).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmengine.config import Config  # noqa: E402

from cascadev import overlap, reconstruct  # noqa: E402
from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.argtypes import positive_float, positive_int, width_by_height  # noqa: E402
from cascadev.atomic import check_output_path  # noqa: E402
from cascadev.cli import add_device_options  # noqa: E402
from cascadev.conditioning import Conditioner  # noqa: E402
from cascadev.enhance import upscale_video  # noqa: E402
from cascadev.errors import CascadeVError  # noqa: E402
from cascadev.frames import to_uint8  # noqa: E402
from cascadev.loading import build_pipeline, load_config, resolve_device, resolve_precision  # noqa: E402
from cascadev.reconstruct import SamplingArgs  # noqa: E402
from cascadev.rules import MAX_SIZE_ENV, max_size, size_limit_problem  # noqa: E402
from cascadev.video_io import VideoReader, VideoWriter, write_video  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_dit import calls_flops_parts  # noqa: E402

# name -> (frames, output height, output width, upscale factor or None); the five cases. An
# upscale case reads a clip of the output size over the factor.
CASES = {
    "8x1024": (8, 1024, 1024, None),  # the release's clip
    "25x576x1024": (25, 576, 1024, None),  # an SVD clip
    "8x2048": (8, 2048, 2048, None),  # 2K, tiled
    "64x1024": (64, 1024, 1024, None),  # long: memory must stay flat
    "8x256-up4": (8, 1024, 1024, 4),  # another model's 256x256 output upscaled x4 to 1024x1024
}
# The custom case's options (dest, option, default): given without --case custom they would do nothing.
CUSTOM_OPTIONS = (("frames", "--frames", 8), ("size", "--size", (1024, 1024)), ("upscale", "--upscale", None))


# The most pixels a measured clip may hold, in frames at the size limit: 1,024 frames at 1024².
CLIP_FRAMES_AT_LIMIT = 16


def check_clip(frames: int, width: int, height: int, multiple: int = 1) -> None:
    """Refuse, in one line and before anything is built, a clip of ``frames`` frames of ``width`` x ``height``
    whose sides are not multiples of ``multiple``, or past the project's size limit
    (:func:`cascadev.rules.size_limit_problem`, ``cascadev recon --size``'s): the short side, then the
    whole clip, which these tools hold at once (the synthetic input, the latent, the decoded chunk),
    against the pixels of ``CLIP_FRAMES_AT_LIMIT`` frames at the limit."""
    if height % multiple or width % multiple:
        raise CascadeVError(f"--size {width}x{height}: both sides must be multiples of {multiple}")
    problem = size_limit_problem(min(width, height))
    if problem:
        raise CascadeVError(f"--size {width}x{height}: {problem}.")
    limit = max_size()
    if frames * width * height > CLIP_FRAMES_AT_LIMIT * limit * limit:
        gib = 3 * 4 * frames * width * height / 2**30  # float32 RGB, as size_limit_problem counts
        raise CascadeVError(
            f"--frames {frames}: {frames} frames of {width}x{height} are {gib:.1f} GiB as float32, more than "
            f"{CLIP_FRAMES_AT_LIMIT} frames of {limit}x{limit} (the most these tools hold at once; set {MAX_SIZE_ENV} "
            "to allow more)."
        )


def check_options(args: argparse.Namespace) -> None:
    """The checks of the options together, before any work: the custom case's options without
    ``--case custom``, a custom clip past the size limit, an output that cannot be written. Fills in the
    custom options' defaults."""
    given = [option for dest, option, _ in CUSTOM_OPTIONS if getattr(args, dest) is not None]
    if given and "custom" not in args.case:
        them = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
        verb, pronoun = ("needs", "it defines") if len(given) == 1 else ("need", "they define")
        raise CascadeVError(f"{them} {verb} --case custom ({pronoun} the custom case; the named cases are fixed).")
    for dest, _, default in CUSTOM_OPTIONS:
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    if "custom" in args.case:
        check_clip(args.frames, *args.size)
    if args.output:
        check_output_path(args.output, "report")


class Stages:
    """Accumulates wall time per stage, synchronising the device around each measured call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.dit_steps: list[float] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def time(self, stage: str):
        self.sync()
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - tic

    def wrap(self, obj, name: str, stage: str, sync: bool = True) -> None:
        """Time every call of ``obj.name`` as ``stage`` (``dit_step``: also kept per call).

        ``sync=False`` for CPU work on a background thread, which must not wait for the device.
        """
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            if sync:
                self.sync()
            tic = time.perf_counter()
            out = original(*args, **kwargs)
            if sync:
                self.sync()
            spent = time.perf_counter() - tic
            self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
            if stage == "dit_step":
                self.dit_steps.append(spent)
            return out

        setattr(obj, name, timed)


@contextmanager
def recorded_dit_calls(pipe) -> Iterator[list[tuple[int, ...]]]:
    """The input shapes (B, C, T, H, W) of the DiT's calls inside the block, for their FLOPs."""
    shapes: list[tuple[int, ...]] = []
    forward = pipe.dit.forward
    pipe.dit.forward = lambda x, t, **kw: shapes.append(tuple(x.shape)) or forward(x, t, **kw)
    try:
        yield shapes
    finally:
        del pipe.dit.forward  # the class's method again


def source_commit() -> str | None:
    """The commit of the code that measured: ``CASCADEV_COMMIT`` (a copy of the working tree without
    ``.git``, as on a lent GPU machine, is told it), else git's short hash with ``-dirty`` for uncommitted
    changes to tracked files; None when neither knows."""
    if os.environ.get("CASCADEV_COMMIT"):
        return os.environ["CASCADEV_COMMIT"]
    root = str(Path(__file__).resolve().parents[1])

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def measured_peak_tflops(device: torch.device, dtype: torch.dtype) -> float | None:
    """TFLOP/s of a large matrix product: the device's practical peak for ``dtype``."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - tic) / 1e12


def synthetic_video(path: Path, frames: int, height: int, width: int) -> None:
    """Smooth moving colour gradients (compressible, like real footage, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.stack(
        [
            np.stack([np.sin(x / 37 + t / 3), np.cos(y / 23 - t / 5), np.sin((x + y) / 51 + t / 7)])
            for t in range(frames)
        ]
    )  # (T, 3, H, W) in [-1, 1]
    write_video(path, to_uint8(torch.from_numpy(video), truncate=True), 24)


def run_case(
    args: argparse.Namespace,
    cfg: Config,
    name: str,
    spec: tuple[int, int, int, int | None],
    settings: str,
    device: torch.device,
    work: Path,
    peak: float | None,
) -> dict:
    """One case (``spec``: frames, height, width, upscale factor or None) under one ``settings`` ("default"
    or "release"): the stages timed on a synthetic input in ``work``; returns the case's JSON record."""
    frames, height, width, upscale = spec
    precision = resolve_precision("fp16" if settings == "release" and device.type == "cuda" else args.dtype, device)
    parts = ["dit", "compressor", "vae"]
    src = work / f"{name}_in.mp4"
    if not src.exists():  # before any stage is timed: its writing is not the benchmark's
        in_h, in_w = (height // upscale, width // upscale) if upscale else (height, width)
        synthetic_video(src, frames, in_h, in_w)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    stages = Stages(device)
    # The release: one DiT call per window and tile, eager, PyTorch's choice of attention kernel.
    overrides = dict(batch_size=1, compile=False, attention_backend="auto") if settings == "release" else {}
    with stages.time("load"):
        pipe = build_pipeline(
            cfg,
            parts,
            device=device,
            dtype=precision.dtype,
            autocast_dtype=precision.autocast,
            random_init=True,
            fp32_attention=settings == "release" and precision.autocast is not None,
            **overrides,
        )
    if args.warmup:
        # Untimed by the stages: one sampling step over the same input, so that the timed pass finds every
        # shape compiled (sampling.compile), every cuDNN algorithm chosen and the allocator's pool grown.
        tic = time.perf_counter()
        run_task(pipe, src, work / f"{name}_{settings}_warmup", SamplingArgs(steps=1, progress=False), upscale)
        stages.sync()
        warmup = time.perf_counter() - tic
    stages.wrap(pipe, "_predict", "dit_step")
    stages.wrap(pipe, "vae_decode", "svd_decode")
    # Class attributes, put back below: the writers and the hand-over are made inside the tasks.
    patched = {
        (Conditioner, "chunked"): Conditioner.chunked,
        (VideoReader, "read"): VideoReader.read,
        (VideoWriter, "write"): VideoWriter.write,
        (VideoWriter, "close"): VideoWriter.close,
        (overlap.WriteBehind, "submit"): overlap.WriteBehind.submit,
        (overlap.WriteBehind, "__exit__"): overlap.WriteBehind.__exit__,
    }
    # Every frozen-encoder call, in encode (pipe.encode) and in upscale (the ConditionStream's encoder).
    stages.wrap(Conditioner, "chunked", "encode")
    stages.wrap(VideoReader, "read", "read", sync=False)  # decoding input frames, mostly on the reader's thread
    stages.wrap(VideoWriter, "write", "write", sync=False)  # on the writer's thread
    # On the main thread after the last frame: the encoder's flush (x264 holds back its lookahead's
    # frames), the muxing and the rename into place.
    stages.wrap(VideoWriter, "close", "video_close", sync=False)
    stages.wrap(overlap.WriteBehind, "submit", "write_wait")  # on the main thread: handing over, waiting
    stages.wrap(overlap.WriteBehind, "__exit__", "write_wait")  # the last writes
    overlap.IO_DEPTH, io_depth = args.io_depth, overlap.IO_DEPTH
    sampling = SamplingArgs(scheduler="euler_a", steps=args.steps, seed=0, progress=False)
    try:
        with recorded_dit_calls(pipe) as dit_calls, stages.time("end_to_end"):
            run_task(pipe, src, work / f"{name}_{settings}", sampling, upscale)
    finally:
        for (owner, attr), original in patched.items():
            setattr(owner, attr, original)
        overlap.IO_DEPTH = io_depth
    flops = sum(calls_flops_parts(pipe.dit, dit_calls).values())
    dit_seconds = stages.seconds.get("dit_step", 0.0)
    s = stages.seconds
    report = {
        "case": name,
        "settings": settings,
        "frames": frames,
        "height": height,
        "width": width,
        "upscale": upscale,
        "precision": {
            "weights": str(precision.dtype).replace("torch.", ""),
            "autocast": str(precision.autocast).replace("torch.", "") if precision.autocast else None,
            "fp32_attention": settings == "release" and precision.autocast is not None,
        },
        "steps": args.steps,
        "io_depth": args.io_depth,
        "dit_calls": len(dit_calls),
        "seconds": {
            "model_loading": s.get("load", 0.0),
            # What the main thread spent outside the models and the writer: reading (what the reader's
            # thread had not done ahead) and encoding.
            "read_and_encode": s.get("end_to_end", 0.0)
            - dit_seconds
            - s.get("svd_decode", 0.0)
            - s.get("write_wait", 0.0),
            "of_which_compressor": s.get("encode", 0.0),
            "of_which_video_close": s.get("video_close", 0.0),
            "read": s.get("read", 0.0),
            "dit_per_step": stages.dit_steps,
            "dit_total": dit_seconds,
            "svd_decode": s.get("svd_decode", 0.0),
            "write": s.get("write", 0.0),
            "write_wait": s.get("write_wait", 0.0),
            "end_to_end_without_loading": s.get("end_to_end", 0.0),
            # The untimed one-step pass before (compiling, autotuning): the cold start's extra cost.
            "warmup": warmup if args.warmup else None,
        },
        "dit_tflop": flops / 1e12,
        "dit_tflop_per_s": flops / dit_seconds / 1e12 if dit_seconds else None,
        "mfu": flops / dit_seconds / 1e12 / peak if dit_seconds and peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return report


def run_task(pipe, src: Path, out: Path, sampling: SamplingArgs, upscale: int | None) -> None:
    """The file-level task of a case: ``upscale`` to ``out.mp4``, or ``encode`` then ``decode`` through
    ``out.safetensors``."""
    if upscale:
        upscale_video(lambda: pipe, src, out.with_suffix(".mp4"), sampling, scale=upscale)
    else:
        reconstruct.encode_video(lambda: pipe, src, out.with_suffix(".safetensors"), progress=False)
        reconstruct.decode_latent(lambda: pipe, out.with_suffix(".safetensors"), out.with_suffix(".mp4"), sampling)


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/s1024_effn_f32.py")
    add_device_options(parser)  # --dtype: the default settings' precision
    parser.add_argument(
        "--case", nargs="+", default=["8x1024"], choices=[*CASES, "all", "custom"], help="one or more cases"
    )
    parser.add_argument("--frames", type=positive_int, default=None, help="custom case: frames (default 8)")
    parser.add_argument(
        "--size",
        type=width_by_height,
        default=None,
        help="custom case: output WxH (default 1024x1024; the input is WxH over --upscale)",
    )
    parser.add_argument("--upscale", type=positive_int, default=None, help="custom case: upscale factor")
    parser.add_argument("--settings", default="both", choices=["default", "release", "both"])
    parser.add_argument("--steps", type=positive_int, default=8)
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="an untimed one-step pass over the same input before each timed run (default; --no-warmup: time "
        "the cold start)",
    )
    parser.add_argument(
        "--io-depth",
        type=int,
        default=overlap.IO_DEPTH,
        choices=range(0, 9),
        metavar="N",
        help=f"chunks read ahead and written behind on background threads (default {overlap.IO_DEPTH}; 0: inline)",
    )
    parser.add_argument("--peak-tflops", type=positive_float, default=None, help="instead of measuring a matmul")
    parser.add_argument("-o", "--output", default=None, help="JSON file")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. the speed levers sampling.compile=default sampling.attention_backend=flash "
        "sampling.batch_size=8 (the release settings keep one DiT call per window and tile)",
    )
    args = parser.parse_args(argv)
    try:
        return benchmark(args)
    except CascadeVError as exc:  # a lever the device cannot run, a config value out of range, ...
        return fail("benchmark", exc)


def benchmark(args) -> int:
    """``main`` after parsing: every case and setting, the JSON report."""
    check_options(args)
    device = resolve_device(args.device)
    # The levers (--cfg-options) are the defaults' alone: the release settings run the config as it is.
    configs = {"default": load_config(args.config, args.cfg_options), "release": load_config(args.config)}
    w, h = args.size
    cases = {}
    for case in args.case:
        if case == "custom":
            cases["custom"] = (args.frames, h, w, args.upscale)
        else:
            cases.update(CASES if case == "all" else {case: CASES[case]})
    peak = args.peak_tflops or measured_peak_tflops(device, torch.float16)
    settings = ["release", "default"] if args.settings == "both" else [args.settings]
    runs = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name, spec in cases.items():
            for setting in settings:
                runs.append(run_case(args, configs[setting], name, spec, setting, device, Path(tmp), peak))
                print(
                    json.dumps(
                        {k: runs[-1][k] for k in ("case", "settings", "seconds", "mfu", "peak_memory_gib")},
                        default=lambda v: round(v, 4) if isinstance(v, float) else v,
                    )
                )
                if args.output:  # after every run: a benchmark stopped later keeps what it measured
                    Path(args.output).write_text(json.dumps(report(args, device, peak, runs), indent=1))
    return 0


def report(args, device: torch.device, peak: float | None, runs: list[dict]) -> dict:
    """The JSON report of the runs so far, with the release-over-default ratio of each case that has both."""
    ratios = {}
    for name in dict.fromkeys(r["case"] for r in runs):
        by = {r["settings"]: r for r in runs if r["case"] == name}
        if {"release", "default"} <= by.keys():
            ratios[name] = (
                by["release"]["seconds"]["end_to_end_without_loading"]
                / by["default"]["seconds"]["end_to_end_without_loading"]
            )
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "commit": source_commit(),
        "config": args.config,
        "cfg_options": args.cfg_options,
        "peak_tflop_per_s": peak,
        "runs": runs,
        "release_over_default": ratios,
    }


if __name__ == "__main__":
    sys.exit(main())
