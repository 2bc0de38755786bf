"""The ``cascadev`` command: ``encode``, ``decode`` and ``recon`` (video -> latent -> video), ``upscale`` and
``interpolate`` (another model's video, 4x larger or 4x smoother), ``train`` and ``eval``."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import tempfile
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Sequence

from .argtypes import frame_size, non_negative_int, positive_int, seed
from .atomic import disk_full_error, is_disk_full, remove_partials
from .errors import CascadeVError, Interrupted
from .outlock import output_lock

DEFAULT_CONFIG = "configs/s1024_effn_f32.py"


def _default_config() -> str:
    here = Path(DEFAULT_CONFIG)
    if here.is_file():
        return str(here)
    return str(Path(__file__).resolve().parents[1] / DEFAULT_CONFIG)  # a source checkout's configs/


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", default=None, help=f"model config (default {DEFAULT_CONFIG})")
    g.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    g.add_argument("--ckpt", default=None, help="DiT checkpoint (.safetensors or .pth); default from the config")
    g.add_argument("--weights-dir", default=None, help="folder of the weight files (default: the config's, pretrained/)")
    g.add_argument("--random-init", action="store_true", help="random weights instead of released ones (smoke tests only)")
    g.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (the release's: half "
                   "weights under fp16 autocast) or bf16")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_preset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default",
                   help="default (this project's improved behaviour) or release (the release's recon step by step; "
                        "README: Default vs release)")


def _add_frame_options(p: argparse.ArgumentParser, size_help: str = "resize so the short side has this many pixels (default: keep)") -> None:
    g = p.add_argument_group("frames")
    g.add_argument("--size", type=frame_size, default=None, help=size_help)
    g.add_argument("--start", type=non_negative_int, default=0, help="first frame (default 0)")
    g.add_argument("--num-frames", type=positive_int, default=None, help="number of frames (default: all)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default from the config: 8)")
    g.add_argument("--scheduler", default=None, help="euler_a (default), ddim or dpm_solver")
    g.add_argument("--seed", type=seed, default=0, help="noise seed, 0 to 2**63 - 1; the same seed gives the same video")
    g.add_argument("--segment-frames", type=non_negative_int, default=None, help="latent frames sampled at once (0 = all)")
    g.add_argument("--batch-size", type=positive_int, default=None, help="windows x tiles per DiT call")
    g.add_argument("--vae-chunk", type=positive_int, default=None, help="frames per SVD decoder call")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output video")
    g.add_argument("--codec", default="libx264", help="video encoder (default libx264; e.g. libx265, libx264rgb)")
    g.add_argument("--crf", type=non_negative_int, default=18, help="x264 quality of the written videos (0 = lossless)")
    g.add_argument("--pix-fmt", default=None, help="pixel format (default yuv420p, yuv444p for odd sizes)")


def _add_enhance_options(p: argparse.ArgumentParser, count: str, count_help: str) -> None:
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="video file to write (.mp4, .mkv, .mov); the input's audio is copied")
    p.add_argument(count, default=None, metavar="N", help=count_help)
    p.add_argument("--mode", default="tiles",
                   help="tiles (default: trained-size tiles, the trained path); 2x or auto (2x for latents >= twice "
                        "the trained size): the DiT's 2x mode, experimental (the release never trained it)")
    _add_sampling_options(p)
    _add_output_options(p)
    _add_model_options(p)


def _whole(value: str | None, option: str, default: int) -> int:
    """A count option parsed here, not by argparse, so a bad value is a one-line error (exit 2)."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < 1:
        raise CascadeVError(f"The {option} option must be a whole number of at least 1, got {value!r}.")
    return number


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one ``cascadev: error:`` line (exit 2) like every other bad input."""

    def error(self, message: str):
        command = self.prog.removeprefix("cascadev").strip()
        print(f"cascadev: error: {command + ': ' if command else ''}{message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cascadev", description="CascadeV: 1x32x32 video compression and LDM-VAE decoding.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("encode", help="video -> semantic latent (.safetensors)")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="latent file to write (.safetensors)")
    _add_frame_options(p)
    _add_preset_option(p)
    _add_model_options(p)

    p = sub.add_parser("decode", help="semantic latent -> video (DiT refinement + SVD decoding)")
    p.add_argument("latent")
    p.add_argument("-o", "--output", required=True, help="video file to write (.mp4)")
    _add_sampling_options(p)
    _add_output_options(p)
    _add_preset_option(p)
    _add_model_options(p)

    p = sub.add_parser("recon", help="video -> latent -> video, with previews and a comparison")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_frame_options(p)
    _add_sampling_options(p)
    _add_output_options(p)
    _add_preset_option(p)
    _add_model_options(p)

    p = sub.add_parser("upscale", help="another model's video -> 4x resolution (2x mode up to 2K), streamed")
    _add_frame_options(p, size_help="short side of the output in pixels, instead of --scale")
    _add_enhance_options(p, "--scale", "output size = N x the input's (default 4)")

    p = sub.add_parser("interpolate", help="another model's video -> 4x frame rate, streamed")
    _add_frame_options(p, size_help="resize the output so its short side has this many pixels (default: keep)")
    _add_enhance_options(p, "--factor", "N - 1 new frames between each pair of input frames, N x the frame rate (default 4)")

    p = sub.add_parser("train", help="train the DiT on a list of videos (accelerate; resumes from the work dir)")
    p.add_argument("config", help="training config, e.g. configs/s1024_effn_f32.py")
    p.add_argument("--work-dir", required=True, help="checkpoints, logs, metrics.jsonl and the effective config")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps in all")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--weights-dir", default=None, help="folder of the frozen networks' weights (default: the config's)")
    p.add_argument("--random-init", action="store_true", help="frozen VAE/compressor at random (smoke tests only)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto (GPU when available) or cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar or console log lines")

    from .evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def _preset(args: argparse.Namespace):
    from .presets import PRESETS

    name = getattr(args, "preset", "default")
    if name not in PRESETS:
        raise CascadeVError(f"unknown --preset {name!r}; choose {' or '.join(PRESETS)}")
    return PRESETS[name]


def _loader(args: argparse.Namespace, cfg, parts: Sequence[str]):
    from .loading import build_pipeline, resolve_device, resolve_precision, resolve_weights

    device = resolve_device(args.device)
    preset = _preset(args)
    dtype_name = args.dtype
    if preset.fp32_attention and dtype_name == "auto":
        dtype_name = "fp16" if device.type == "cuda" else "fp32"  # the release's precision where it can run
    precision = resolve_precision(dtype_name, device)
    if not args.random_init:
        resolve_weights(cfg, parts, args.weights_dir, args.ckpt)  # fail before any heavy work
    overrides = {k: getattr(args, k, None) for k in ("segment_frames", "batch_size", "vae_chunk")}
    if preset.whole_clip:
        overrides["segment_frames"] = 0
    if preset.name != "default":
        from .presets import NOISE_NOTE

        print(f"cascadev: {NOISE_NOTE}", file=sys.stderr)

    def load():
        return build_pipeline(
            cfg, parts, device=device, dtype=precision.dtype, autocast_dtype=precision.autocast,
            weights_dir=args.weights_dir, ckpt=args.ckpt, random_init=args.random_init,
            tile_blend=preset.tile_blend, round_timesteps=preset.round_timesteps,
            fp32_attention=preset.fp32_attention and precision.autocast is not None, **overrides,
        )

    return load


def _enhance_parts(cfg) -> list[str]:
    kind = cfg.get("condition", "semantic")
    if kind not in ("semantic", "resize"):
        raise CascadeVError(f"unknown condition {kind!r} in the config; choose semantic or resize")
    return ["dit", "compressor", "vae"] if kind == "semantic" else ["dit", "vae"]


def _sampling(args: argparse.Namespace, cfg):
    from .reconstruct import SamplingArgs
    from .schedulers import make_scheduler

    defaults = cfg.get("sampling", {})
    scheduler = args.scheduler or defaults.get("scheduler", "euler_a")
    make_scheduler(scheduler)  # an unknown name fails here, before any work
    return SamplingArgs(scheduler=scheduler, steps=args.steps or defaults.get("steps", 8), seed=args.seed,
                        progress=not args.quiet, preset=_preset(args))


def _check_work_dir(work_dir: Path) -> None:
    """The training work dir must be (or become) a writable folder; checked before anything is built."""
    if work_dir.exists() and not work_dir.is_dir():
        raise CascadeVError(f"--work-dir {work_dir} is a file, not a folder.")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=work_dir):  # access() says nothing of read-only mounts for root
            pass
    except OSError as exc:
        raise CascadeVError(f"--work-dir {work_dir} is not a writable folder: {exc.strerror or exc}.") from None


def _check_model_files_are_not_outputs(args: argparse.Namespace) -> None:
    """--config and --ckpt are inputs too (each command checks its main input itself)."""
    from .overwrite import check_not_inputs
    from .reconstruct import recon_outputs

    outputs = {"output": [args.output]}
    if args.command == "recon":
        outputs = {"output folder": [args.output], "output": recon_outputs(args.output).values()}
    check_not_inputs({"config": args.config or _default_config(), "--ckpt": args.ckpt}, outputs)


def _output_location(args: argparse.Namespace) -> str:
    return str(getattr(args, "work_dir", None) or getattr(args, "output", None) or ".")


def run(args: argparse.Namespace) -> None:
    from .loading import load_config
    from . import reconstruct

    if args.command == "train":
        from .training.trainer import Trainer, TrainOptions

        cfg = load_config(args.config, args.cfg_options)
        _check_work_dir(Path(args.work_dir))
        options = TrainOptions(Path(args.work_dir), args.max_steps, args.weights_dir, args.random_init, args.device,
                               progress=not args.quiet)
        Trainer(cfg, options).fit()
        return
    _check_model_files_are_not_outputs(args)
    cfg = load_config(args.config or _default_config(), args.cfg_options)
    if args.command == "encode":
        reconstruct.encode_video(_loader(args, cfg, ["compressor"]), args.video, args.output, size=args.size,
                                 start=args.start, num_frames=args.num_frames, progress=not args.quiet,
                                 preset=_preset(args))
    elif args.command == "decode":
        sampling = _sampling(args, cfg)
        reconstruct.decode_latent(_loader(args, cfg, ["dit", "vae"]), args.latent, args.output, sampling, crf=args.crf,
                                  codec=args.codec, pix_fmt=args.pix_fmt)
    elif args.command == "recon":
        sampling = _sampling(args, cfg)
        reconstruct.reconstruct_video(_loader(args, cfg, ["dit", "compressor", "previewer", "vae"]), args.video,
                                      args.output, sampling, size=args.size, start=args.start, num_frames=args.num_frames,
                                      codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt)
    elif args.command in ("upscale", "interpolate"):
        from . import enhance

        if args.command == "upscale":
            if args.scale is not None and args.size is not None:
                raise CascadeVError("Give either --scale or --size for upscale, not both.")
            task, count = enhance.upscale_video, {"scale": _whole(args.scale, "--scale", 4)}
        else:
            task, count = enhance.interpolate_video, {"factor": _whole(args.factor, "--factor", 4)}
        sampling = _sampling(args, cfg)
        task(_loader(args, cfg, _enhance_parts(cfg)), args.video, args.output, sampling, size=args.size, mode=args.mode,
             start=args.start, num_frames=args.num_frames, codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt, **count)


def _output_lock(args: argparse.Namespace) -> AbstractContextManager:
    """One writer per output file; recon locks its folder itself, once the folder exists."""
    if args.command in ("encode", "decode", "upscale", "interpolate"):
        return output_lock(args.output)
    return nullcontext()


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread so that ``finally`` blocks and writers clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_signals() -> None:
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _on_signal(signum: int, frame) -> None:
    # Later signals are ignored: a second Ctrl-C must not interrupt the cleanup (or decord's __del__).
    _ignore_signals()
    raise Signalled(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # a signal the shell ignores stays ignored
                previous[sig] = signal.signal(sig, _on_signal)
    code = 1
    try:
        code = _main(args)
        return code
    finally:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # after our cleanup the process ends: stay ignored
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _main(args: argparse.Namespace) -> int:
    interrupted = 0
    try:
        if args.command == "eval":
            from .evaluation.cli import run_eval

            return run_eval(args)
        with _output_lock(args):
            run(args)
    except CascadeVError as exc:
        print(f"cascadev: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # training saved its state and stopped
        print(f"cascadev: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        interrupted = getattr(exc, "signum", signal.SIGINT)
    except Exception as exc:
        if os.environ.get("CASCADEV_DEBUG"):
            raise
        if is_disk_full(exc):  # a write that no writer turned into a CascadeVError (e.g. a checkpoint's)
            where = exc.filename if isinstance(exc, OSError) and exc.filename else _output_location(args)
            print(f"cascadev: error: {disk_full_error(where)}", file=sys.stderr)
            return 2
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"cascadev: internal error: {type(exc).__name__}: {first} (set CASCADEV_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    if interrupted:
        # Out of the except block the traceback (holding readers and writers) is gone: with signals
        # ignored, collect them now and remove any partial file a writer did not.
        _ignore_signals()
        gc.collect()
        remove_partials()
        print("cascadev: interrupted", file=sys.stderr)
        return 128 + interrupted
    return 0


if __name__ == "__main__":
    sys.exit(main())
