"""The ``cascadev`` command: ``encode``, ``decode`` and ``recon`` (video -> latent -> video), ``upscale`` and
``interpolate`` (another model's video, 4x larger or 4x smoother), ``train`` and ``eval``."""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .argparsing import Parser, fail
from .argtypes import device, frame_size, non_negative_int, positive_float, positive_int, seed
from .atomic import disk_full_error, is_disk_full, remove_partials
from .errors import CascadeVError, Interrupted, first_line
from .outlock import output_lock
from .presets import PRESETS
from .rules import AUTOENCODER_PARTS, MODES, PRECISIONS, SCHEDULERS, SHARD_MB, VIDEO_CODEC, VIDEO_CRF

if TYPE_CHECKING:
    from mmengine.config import Config

    from .pipeline import CascadeVPipeline
    from .presets import Preset

    # A command's work on one input: task(input, output, load_pipeline), as cascadev.batch runs it.
    Task = Callable[[Path, Path, Callable[[], CascadeVPipeline]], object]

DEFAULT_CONFIG = "configs/s1024_effn_f32.py"


def _default_config() -> str:
    here = Path(DEFAULT_CONFIG)
    if here.is_file():
        return str(here)
    return str(Path(__file__).resolve().parents[1] / DEFAULT_CONFIG)  # a source checkout's configs/


def add_device_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device and --dtype, declared once for the commands and the tools that run the models."""
    p.add_argument("--device", type=device, default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=PRECISIONS,
        help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (the release's: half weights under fp16 autocast) or bf16",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--config", default=None, help=f"model config (default {DEFAULT_CONFIG})")
    g.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    g.add_argument(
        "--ckpt",
        default=None,
        help="DiT checkpoint (.safetensors or .pth), loaded even with --random-init; default from the config",
    )
    g.add_argument(
        "--weights-dir", default=None, help="folder of the weight files (default: the config's, pretrained/)"
    )
    g.add_argument(
        "--random-init",
        action="store_true",
        help="random weights for the parts --ckpt does not give (smoke tests only)",
    )
    add_device_options(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_preset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="default",
        choices=list(PRESETS),
        help="default (this project's improved behaviour) or release (the release's recon step by step; "
        "README: Default vs release)",
    )


def _add_frame_options(
    p: argparse.ArgumentParser, size_help: str = "resize so the short side has this many pixels (default: keep)"
) -> None:
    g = p.add_argument_group("frames")
    g.add_argument("--size", type=frame_size, default=None, help=size_help)
    g.add_argument("--start", type=non_negative_int, default=0, help="first frame (default 0)")
    g.add_argument("--num-frames", type=positive_int, default=None, help="number of frames (default: all)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampling steps (default: the config's sampling.steps, 8 for the release, 2 for nano)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        choices=SCHEDULERS,
        help="euler_a, ddim or dpm_solver (default: the config's sampling.scheduler, euler_a for the release)",
    )
    g.add_argument(
        "--seed", type=seed, default=0, help="noise seed, 0 to 2**63 - 1; the same seed gives the same video"
    )
    g.add_argument(
        "--segment-frames",
        type=non_negative_int,
        default=None,
        help="latent frames sampled at once (0 = all; else at least the DiT's window)",
    )
    g.add_argument("--batch-size", type=positive_int, default=None, help="windows x tiles per DiT call")
    g.add_argument("--vae-chunk", type=positive_int, default=None, help="frames per SVD decoder call")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output video")
    g.add_argument(
        "--codec", default=VIDEO_CODEC, help=f"video encoder (default {VIDEO_CODEC}; e.g. libx265, libx264rgb)"
    )
    g.add_argument(
        "--crf",
        type=non_negative_int,
        default=VIDEO_CRF,
        help=f"constant quality for libx264, libx264rgb and libx265: 0 (lossless) to 51 (default {VIDEO_CRF}); "
        "other codecs use their own defaults",
    )
    g.add_argument(
        "--pix-fmt",
        default=None,
        help="pixel format (default yuv420p, odd sizes padded to even by one pixel; yuv444p keeps them)",
    )


_MANY = "; several inputs (paths, folders, list files, globs) make OUTPUT a folder of outputs named after them"


def _add_enhance_options(p: argparse.ArgumentParser, count: str, count_help: str, size_help: str) -> None:
    p.add_argument("video", nargs="+", help="input video(s), e.g. another text-to-video model's output")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="video file to write (.mp4, .mkv, .mov); the input's audio is copied" + _MANY,
    )
    p.add_argument(count, type=positive_int, default=None, metavar="N", help=count_help)
    p.add_argument(
        "--mode",
        default="tiles",
        choices=MODES,
        help="tiles (default: trained-size tiles, the trained path); 2x or auto (2x for latents >= twice "
        "the trained size): the DiT's 2x mode, experimental (the release never trained it)",
    )
    _add_frame_options(p, size_help=size_help)
    _add_sampling_options(p)
    _add_output_options(p)
    _add_model_options(p)


def _add_store_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("latent store (many videos -> shards of clip latents)")
    g.add_argument("--shards", action="store_true", help="write a sharded latent store into the folder OUTPUT")
    g.add_argument(
        "--shard-size",
        type=positive_float,
        default=None,
        metavar="MB",
        help=f"largest shard in MB (default {SHARD_MB:g})",
    )
    g.add_argument(
        "--clip-frames",
        type=positive_int,
        default=None,
        metavar="N",
        help="cut each video into clips of N frames (default: one clip of all frames)",
    )


RECON_FILES_HELP = """files written to the output folder:
  latent.safetensors  the compressed representation (16, T, H/32, W/32)
  original.mp4        the input frames the model saw (after --start, --num-frames, --size), with audio
  preview.mp4         the latent decoded by StableCascade's previewer alone ("without LDM")
  recon.mp4           the LDM-VAE reconstruction, with the input's audio
  compare.mp4         original | preview | reconstruction, side by side
  compare.png         4 frames of compare.mp4, with column titles and frame numbers"""


def _subparser(sub, name: str, summary: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    # Raw description: the file lists and metric names keep their lines instead of being re-wrapped.
    return sub.add_parser(
        name, help=summary, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training config, e.g. configs/s1024_effn_f32.py")
    p.add_argument("--work-dir", required=True, help="checkpoints, logs, metrics.jsonl and the effective config")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps in all")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto (GPU when available) or cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar or console log lines")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="cascadev", description="CascadeV: 1x32x32 video compression and LDM-VAE decoding.")
    parser.add_argument("--version", action="version", version=f"cascadev {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subparser(
        sub,
        "encode",
        "video -> semantic latent (.safetensors)",
        "Compress a video to its semantic latent (16, T, H/32, W/32) with StableCascade's EfficientNet encoder.",
    )
    p.add_argument("video", nargs="+", help="input video file(s) (.mp4, .mkv, .mov, ...), folders, list files or globs")
    p.add_argument("-o", "--output", required=True, help="latent file to write (.safetensors)" + _MANY)
    _add_frame_options(p)
    _add_preset_option(p)
    _add_store_options(p)
    _add_model_options(p)

    p = _subparser(
        sub,
        "decode",
        "semantic latent -> video (DiT refinement + SVD decoding)",
        "Decode a latent from `cascadev encode`: the DiT samples the SVD latent, the SVD VAE makes frames.",
    )
    p.add_argument(
        "latent",
        nargs="+",
        help="latent file(s) written by cascadev encode (.safetensors), folders, list files or globs",
    )
    p.add_argument("-o", "--output", required=True, help="video file to write (.mp4, .mkv, .mov)" + _MANY)
    _add_sampling_options(p)
    _add_output_options(p)
    _add_preset_option(p)
    _add_model_options(p)

    p = _subparser(
        sub,
        "recon",
        "video -> latent -> video, with previews and a comparison",
        "Encode a video and decode it again (the release's recon.sh), writing the latent, the "
        "reconstruction and comparisons.",
        RECON_FILES_HELP,
    )
    p.add_argument("video", nargs="+", help="input video file(s) (.mp4, .mkv, .mov, ...), folders, list files or globs")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder (created if missing)" + _MANY.replace("make OUTPUT a folder of", "put in it"),
    )
    _add_frame_options(p)
    _add_sampling_options(p)
    _add_output_options(p)
    _add_preset_option(p)
    _add_model_options(p)

    p = _subparser(
        sub,
        "upscale",
        "another model's video -> 4x resolution (2x mode up to 2K), streamed",
        "Raise another model's video to N x its resolution with the LDM-VAE (paper Fig. 1), streamed, audio kept.",
    )
    _add_enhance_options(
        p,
        "--scale",
        "output size = N x the input's (default 4)",
        "short side of the output in pixels, instead of --scale",
    )

    p = _subparser(
        sub,
        "interpolate",
        "another model's video -> 4x frame rate, streamed",
        "Raise another model's video to N x its frame rate with the LDM-VAE (paper Fig. 1), streamed, audio kept.",
    )
    _add_enhance_options(
        p,
        "--factor",
        "N - 1 new frames between each pair of input frames, N x the frame rate (default 4)",
        "resize the output so its short side has this many pixels (default: keep)",
    )

    p = _subparser(
        sub,
        "train",
        "train the DiT on a list of videos (accelerate; resumes from the work dir)",
        "Train the LDM-VAE's DiT with the config's recipe; started again with the same --work-dir it resumes.",
    )
    _add_training_options(p)
    p.add_argument("--weights-dir", default=None, help="folder of the frozen networks' weights (default: the config's)")
    p.add_argument("--random-init", action="store_true", help="frozen VAE/compressor at random (smoke tests only)")

    p = _subparser(
        sub,
        "train-ae",
        "train the semantic compressor + previewer, or the video VAE (accelerate; resumes)",
        "Train the networks the DiT stands on with the same loop, logs, checkpoints and resume as train: "
        "--part compressor (compressor + previewer) or --part vae (AutoencoderKLTemporalDecoder).",
    )
    _add_training_options(p)
    p.add_argument("--part", required=True, choices=AUTOENCODER_PARTS, help="compressor (with its previewer) or vae")
    p.add_argument(
        "--export",
        default=None,
        help="folder for the trained weights, under the config's weights names "
        "(default: WORK_DIR/weights; pass it to other commands as --weights-dir)",
    )

    from .evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def _preset(args: argparse.Namespace) -> Preset:
    return PRESETS[getattr(args, "preset", "default")]  # a name the parser's choices let through


def _loader(args: argparse.Namespace, cfg: Config, parts: Sequence[str]) -> Callable[[], CascadeVPipeline]:
    from .loading import build_pipeline, resolve_device, resolve_precision, resolve_weights

    device = resolve_device(args.device)
    preset = _preset(args)
    dtype_name = args.dtype
    if preset.fp32_attention and dtype_name == "auto":
        dtype_name = "fp16" if device.type == "cuda" else "fp32"  # the release's precision where it can run
    precision = resolve_precision(dtype_name, device)
    if not args.random_init:
        resolve_weights(cfg, parts, args.weights_dir, args.ckpt)  # fail before any heavy work
    elif args.ckpt is not None and "dit" in parts:
        resolve_weights(cfg, ["dit"], args.weights_dir, args.ckpt)  # --ckpt counts under --random-init too
    overrides = {k: getattr(args, k, None) for k in ("segment_frames", "batch_size", "vae_chunk")}
    if preset.whole_clip:
        overrides["segment_frames"] = 0
    if preset.name != "default":
        from .presets import NOISE_NOTE

        print(f"cascadev: {NOISE_NOTE}", file=sys.stderr)

    def load() -> CascadeVPipeline:
        return build_pipeline(
            cfg,
            parts,
            device=device,
            dtype=precision.dtype,
            autocast_dtype=precision.autocast,
            weights_dir=args.weights_dir,
            ckpt=args.ckpt,
            random_init=args.random_init,
            tile_blend=preset.tile_blend,
            round_timesteps=preset.round_timesteps,
            fp32_attention=preset.fp32_attention and precision.autocast is not None,
            **overrides,
        )

    return load


def _enhance_parts(cfg) -> list[str]:
    from .conditioning import condition_kind, with_encoder

    return with_encoder(condition_kind(cfg), ["dit", "vae"])


def _sampling(args: argparse.Namespace, cfg):
    from .config_defaults import setting
    from .reconstruct import SamplingArgs
    from .schedulers import check_steps, make_scheduler, noise_schedule

    scheduler = args.scheduler or setting(cfg, "sampling.scheduler")  # the parser and the schema checked both
    preset, schedule = _preset(args), noise_schedule(cfg.get("schedule"))
    make_scheduler(preset.scheduler(scheduler), schedule)  # one that cannot sample the schedule fails now
    return SamplingArgs(
        scheduler=scheduler,
        steps=check_steps(args.steps or setting(cfg, "sampling.steps"), schedule),
        seed=args.seed,
        progress=not args.quiet,
        preset=preset,
    )


def _check_folder(folder: Path, option: str) -> bool:
    """A folder training writes (``--work-dir``, ``--export``) must be (or become) a writable folder;
    checked before anything is built. Returns whether it was made here."""
    if folder.exists() and not folder.is_dir():
        raise CascadeVError(f"{option} {folder} is a file, not a folder.")
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # access() says nothing of read-only mounts for root
            pass
    except OSError as exc:
        raise CascadeVError(f"{option} {folder} is not a writable folder: {exc.strerror or exc}.") from None
    return made


def _remove_if_untrained(folder: Path) -> None:
    """A folder this run made (the work dir, the export) and stopped in before it wrote anything of a step
    (a checkpoint, a metrics record, the export): only what set-up writes, if that."""
    from .training.trainer import written_before_training

    if folder.is_dir() and all(written_before_training(folder, p) for p in folder.rglob("*") if p.is_file()):
        shutil.rmtree(folder, ignore_errors=True)


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


def _check_inputs(args: argparse.Namespace) -> None:
    """The cheap checks (input files, config file) that run before torch and diffusers are imported,
    so that a typo costs a fraction of a second, not the ten seconds those imports take."""
    if args.command == "encode" and not args.shards:
        given = [
            o for o, v in (("--clip-frames", args.clip_frames), ("--shard-size", args.shard_size)) if v is not None
        ]
        if given:  # a store's options on a plain encode would be ignored
            raise CascadeVError(f"{' and '.join(given)} shape a latent store: add --shards, or leave them out.")
    if args.command in ("train", "train-ae"):
        files = [(args.config, "config")]
    else:
        files = [(args.config or _default_config(), "config")]
        inputs = getattr(args, "latent", None) or args.video
        if len(inputs) == 1 and not any(c in inputs[0] for c in "*?["):  # one path (a file, folder or list)
            if not Path(inputs[0]).exists():
                raise CascadeVError(f"The input file {inputs[0]} does not exist.")
    for path, what in files:
        path = Path(path)
        if not path.exists():
            raise CascadeVError(f"The {what} file {path} does not exist.")
        if not path.is_file():
            raise CascadeVError(f"The {what} file {path} is not a file.")


def _fps(fps: float) -> str:
    return f"{round(float(fps), 3):g} fps"


def _video_summary(path: str | os.PathLike) -> str:
    from .video_io import probe_video

    info = probe_video(path)
    return f"{info.num_frames} frames, {info.width}x{info.height}, {_fps(info.fps)}"


def _wrote(path: str | os.PathLike, summary: str) -> None:
    """Every command ends with one line on stdout saying what it wrote."""
    print(f"cascadev: wrote {path} ({summary})")


def run(args: argparse.Namespace) -> None:
    """The command, its inputs checked already (``_check_inputs``, in ``_main``)."""
    from .loading import load_config

    if args.command in ("train", "train-ae"):
        from .training.trainer import Trainer, TrainOptions

        cfg = load_config(args.config, args.cfg_options)
        options = TrainOptions(
            Path(args.work_dir),
            args.max_steps,
            getattr(args, "weights_dir", None),
            getattr(args, "random_init", False),
            args.device,
            progress=not args.quiet,
        )
        made: list[Path] = []  # folders made here, removed again if the run stops before it writes in them
        try:
            # The export is written after training: its folder is checked now, with the work dir's.
            for folder, option in ((args.work_dir, "--work-dir"), (getattr(args, "export", None), "--export")):
                if folder is not None and _check_folder(Path(folder), option):
                    made.append(Path(folder))
            if args.command == "train-ae":
                from .training.autoencoders import AutoencoderTrainer

                trainer = AutoencoderTrainer(cfg, options, args.part, args.export)
            else:
                trainer = Trainer(cfg, options)
            saved = trainer.fit()
        except BaseException:
            for folder in made:
                _remove_if_untrained(folder)
            raise
        if trainer.accelerator.is_main_process:
            step = f"step {trainer.state['step']}"
            if args.command == "train-ae":  # the export is what --weights-dir takes
                _wrote(trainer.export_dir, step if saved is None else f"{step}, checkpoint {saved}")
            elif saved is not None:  # a resumed run with nothing left to train writes no checkpoint
                _wrote(saved, step)
        return
    _check_model_files_are_not_outputs(args)
    cfg = load_config(args.config or _default_config(), args.cfg_options)
    from . import batch
    from .inputs import is_batch

    inputs = args.latent if args.command == "decode" else args.video
    batch.use_process_device(args)
    if args.command == "encode" and args.shards:
        from .latent_store import encode_store

        encode_store(
            args.video,
            args.output,
            _loader(args, cfg, ["compressor"]),
            size=args.size,
            start=args.start,
            num_frames=args.num_frames,
            clip_frames=args.clip_frames,
            shard_mb=args.shard_size,
            preset=_preset(args).name,
            progress=not args.quiet,
        )
    elif is_batch(inputs):
        batch.run_command(args, inputs, lambda parts: _loader(args, cfg, parts), _task(args, cfg))
    else:
        parts, task = _task(args, cfg, single=True)
        batch.on_main_process(
            lambda: task(inputs[0], args.output, _loader(args, cfg, parts)),
            everyone=args.command in ("decode", "recon"),
        )
        if batch.distributed_state().is_main_process:
            written = os.path.join(args.output, "") if args.command == "recon" else args.output  # a folder: "out/"
            _wrote(written, _summary(args.command, args.output))


def _summary(command: str, output: str) -> str:
    """What one input's outputs hold, for the final "cascadev: wrote" line."""
    if command == "encode":
        from .latent_io import LatentReader

        with LatentReader(output) as reader:
            meta, shape = reader.meta, reader.shape
        return f"latent {'x'.join(map(str, shape))} of {shape[1]} frames, {meta.width}x{meta.height}, {_fps(meta.fps)}"
    if command == "recon":
        from .reconstruct import RECON_FILES

        return f"{', '.join(RECON_FILES)}; {_video_summary(Path(output) / 'recon.mp4')}"
    return _video_summary(output)


def _task(args: argparse.Namespace, cfg: Config, single: bool = False) -> tuple[list[str], Task]:
    """The command's model parts and ``task(input, output, load_pipeline)`` that runs it on one input."""
    from . import reconstruct

    if args.command == "encode":
        return ["compressor"], lambda source, output, load: reconstruct.encode_video(
            load,
            source,
            output,
            size=args.size,
            start=args.start,
            num_frames=args.num_frames,
            progress=not args.quiet,
            preset=_preset(args),
        )
    sampling = _sampling(args, cfg)
    video_options = dict(codec=args.codec, crf=args.crf, pix_fmt=args.pix_fmt)
    if args.command in ("decode", "recon"):
        from .conditioning import DEFAULT_KIND, condition_kind

        kind = condition_kind(cfg)
        if kind != DEFAULT_KIND:  # before any model loads or any frame is encoded
            raise CascadeVError(
                f"{args.command} decodes semantic latents, and this config's DiT takes the {kind} condition "
                "(condition in the config); upscale and interpolate take it"
            )
    if args.command == "decode":
        from .segments import decode_latent_split

        # One latent: the processes share its segments.
        decode = decode_latent_split if single else reconstruct.decode_latent
        return ["dit", "vae"], lambda source, output, load: decode(load, source, output, sampling, **video_options)
    if args.command == "recon":
        from .segments import reconstruct_split

        # One video: the processes share its segments.
        recon = reconstruct_split if single else reconstruct.reconstruct_video
        return ["dit", "compressor", "previewer", "vae"], lambda source, output, load: recon(
            load,
            source,
            output,
            sampling,
            size=args.size,
            start=args.start,
            num_frames=args.num_frames,
            **video_options,
        )
    from . import enhance

    if args.command == "upscale":
        if args.scale is not None and args.size is not None:
            raise CascadeVError("Give either --scale or --size for upscale, not both.")
        fn, count = enhance.upscale_video, {"scale": args.scale or 4}
    else:
        fn, count = enhance.interpolate_video, {"factor": args.factor or 4}
    return _enhance_parts(cfg), lambda source, output, load: fn(
        load,
        source,
        output,
        sampling,
        size=args.size,
        mode=args.mode,
        start=args.start,
        num_frames=args.num_frames,
        **video_options,
        **count,
    )


def _output_lock(args: argparse.Namespace) -> AbstractContextManager:
    """One writer per output file; recon locks its folder itself, once the folder exists, and a batch
    locks each of its outputs (cascadev.batch). A latent store (``encode --shards``) is a folder that
    every run adds shards to under names of its own, so it takes no lock, with one input or many. Under
    ``accelerate launch`` the main process writes a single output (the others share its work or wait),
    so it alone holds the lock."""
    from .batch import distributed_state
    from .inputs import is_batch

    inputs = getattr(args, "latent", None) or getattr(args, "video", None) or []
    single_file = not is_batch(inputs) and not getattr(args, "shards", False)
    if args.command in ("encode", "decode", "upscale", "interpolate") and single_file:
        # The input is checked first: a bad input is reported as such, whatever the output.
        if args.command == "decode":
            from .latent_io import LatentReader

            LatentReader(inputs[0]).close()
        else:
            from .video_io import probe_video

            probe_video(inputs[0])
        if distributed_state().is_main_process:
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


_PYTHON_FORMAT = warnings.formatwarning
_PACKAGE = Path(__file__).resolve().parent


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """cascadev's own warnings as one line, like its errors; other libraries' as Python prints them. Ours are
    those raised in the package or of a category it defines (a dataset's, raised where torch's loader
    called it)."""
    if category.__module__.split(".")[0] == "cascadev" or Path(filename).resolve().is_relative_to(_PACKAGE):
        return f"cascadev: warning: {message}\n"
    return _PYTHON_FORMAT(message, category, filename, lineno, line)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _format_warning
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
        _check_inputs(args)  # before the output lock, whose input probe imports torch
        with _output_lock(args):
            run(args)
    except CascadeVError as exc:
        return fail("cascadev", exc)
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
            return fail("cascadev", disk_full_error(where))
        print(f"cascadev: internal error: {first_line(exc)} (set CASCADEV_DEBUG=1 for the traceback)", file=sys.stderr)
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
