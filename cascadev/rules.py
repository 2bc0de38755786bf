"""The value rules, each written once: the command line, the config schema and the library all ask here.

Each rule is a predicate plus a ``check_*`` function that raises :class:`CascadeVError` with one line.
The parser (:mod:`cascadev.argparsing`, :mod:`cascadev.argtypes`) turns that line into its own error,
:mod:`cascadev.config_schema` builds its rules from the same predicates, and the library calls the
``check_*`` functions at its public entry points, so a Python caller gets the same refusal as the CLI.

Nothing heavy is imported: the parser runs these rules before torch is.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Collection
from typing import Any

from .errors import CascadeVError

# Seeds feed numpy's SeedSequence and torch.Generator.manual_seed, which take 0 <= seed < 2**63.
SEED_LIMIT = 2**63
# The highest frame rate a video or latent may have: far above high-speed footage (1,000-10,000 fps), so a
# rate beyond it is damage, a unit mistake or a runaway --factor (interpolate's output: input rate x factor).
MAX_FPS = 100_000
DEFAULT_FPS = 30.0  # the frame rate of outputs made from a video whose file does not give one
# The output videos' encoder and quality unless told otherwise: H.264, visually lossless (x264's crf scale).
VIDEO_CODEC = "libx264"
VIDEO_CRF = 18
SHARD_MB = 1024.0  # a latent store's largest shard, in MB, unless --shard-size says otherwise
# The names a user may give; the modules that act on them map each name to its implementation.
SCHEDULERS = ("euler_a", "ddim", "dpm_solver")  # cascadev.schedulers
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # cascadev.loading.PRECISIONS, plus auto
# Noise schedules (diffusers' names) that the training loss (cascadev.diffusion) and diffusers' samplers
# build alike from a config's ``schedule``.
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
TRAIN_TIMESTEPS = 1000  # the release's (improved-DDPM's) number of training steps
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the DiT predicts (diffusers' names): cascadev.diffusion
MODES = ("auto", "tiles", "2x")  # how the DiT covers a latent: cascadev.pipeline.CascadeVPipeline.plan
# The SDPA kernel the DiT's attention may be pinned to (auto: PyTorch's choice): cascadev.pipeline
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
SHORT_VIDEO_MODES = ("pad", "skip")  # a training video too short for a clip: cascadev.data (data.short_video)
CROPS = ("center", "random")  # how a training clip is made square: cascadev.data (data.crop)
# torch.compile modes for the DiT's blocks ("default" is torch's None): cascadev.models.dit.compile_blocks
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
AUTOENCODER_PARTS = ("compressor", "vae")  # what cascadev train-ae trains: cascadev.training.autoencoders
DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


# Largest short side (pixels) of frames a command makes, unless CASCADEV_MAX_SIZE raises it: one
# 8192x8192 frame is already 0.8 GB as float32 RGB, and the models' activations are many times that.
MAX_SIZE = 8192
MAX_SIZE_ENV = "CASCADEV_MAX_SIZE"


def max_size() -> int:
    """The largest short side allowed: ``MAX_SIZE``, or the ``CASCADEV_MAX_SIZE`` environment variable."""
    raw = os.environ.get(MAX_SIZE_ENV)
    if raw is None:
        return MAX_SIZE
    try:
        return max(1, int(raw))
    except ValueError:
        return MAX_SIZE


def size_limit_problem(short_side: int) -> str | None:
    """Why a frame short side of ``short_side`` pixels is refused, or None when it is allowed."""
    limit = max_size()
    if short_side <= limit:
        return None
    gib = 3 * 4 * short_side * short_side / 2**30  # one square float32 RGB frame
    return (
        f"{short_side} pixels is above the maximum short side of {limit} (one such frame alone is "
        f"{gib:.1f} GiB as float32; set {MAX_SIZE_ENV} to allow more)"
    )


def either(choices: Collection[str]) -> str:
    """``a, b or c``: the choices as a message lists them."""
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def is_whole(value: Any, lo: int = 0, hi: int | None = None) -> bool:
    """A whole number (not a bool, not a float) with ``lo <= value`` and, given ``hi``, ``value <= hi``."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and value >= lo
        and (hi is None or value <= hi)
    )


def whole_description(lo: int = 0, hi: int | None = None) -> str:
    """What :func:`is_whole` accepts, in words: "a whole number of at least 1", "... from 0 to 2**63 - 1"."""
    if hi is None:
        return f"a whole number of at least {lo}"
    return f"a whole number from {lo} to {'2**63 - 1' if hi == SEED_LIMIT - 1 else hi}"


def whole_problem(value: Any, lo: int = 0, hi: int | None = None) -> str | None:
    """None if :func:`is_whole`, else what is wrong: "must be a whole number of at least 1, got 0"."""
    return None if is_whole(value, lo, hi) else f"must be {whole_description(lo, hi)}, got {value!r}"


def check_whole(value: Any, what: str, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an int if :func:`is_whole`, else one line: "``what`` must be a whole number ...".

    ``what`` names the culprit as the caller's user knows it: an option (``--steps``) or a parameter.
    """
    problem = whole_problem(value, lo, hi)
    if problem:
        raise CascadeVError(f"{what} {problem}.")
    return int(value)


def attn_strides_problem(item: Any, frames: int, tokens: int) -> str | None:
    """Why ``item`` of a DiT's ``attn_strides`` cannot run, or None: it is None (full attention) or a pair
    [ts, xs] of whole numbers of at least 1, ts dividing the ``frames`` of a window (lats_per_vid) and those
    of a 2x-mode window (a quarter, where ts is capped at that), xs the ``tokens`` per side (input_size /
    patch_size): the cells of :class:`cascadev.models.dit.CascadeDiT`'s grid attention."""
    if item is None:
        return None
    if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(is_whole(x, 1) for x in item)):
        return "it must be None or a pair [ts, xs] of whole numbers of at least 1"
    ts, xs = item
    if frames % ts:
        return f"ts {ts} does not divide the {frames} frames of a window (lats_per_vid)"
    if tokens % xs:
        return f"xs {xs} does not divide the {tokens} tokens per side (input_size / patch_size)"
    frames_2x = frames // 4
    if frames_2x and frames_2x % min(ts, frames_2x):
        return f"ts {ts} does not divide the {frames_2x} frames of a 2x-mode window (lats_per_vid / 4)"
    return None


def check_seed(value: Any, what: str = "The seed") -> int:
    """A noise seed, 0 to 2**63 - 1."""
    return check_whole(value, what, 0, SEED_LIMIT - 1)


def check_choice(value: Any, choices: Collection[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else one line: "unknown ``what`` 'x'; choose a, b or c"."""
    if value not in choices:
        raise CascadeVError(f"unknown {what} {value!r}; choose {either(choices)}")
    return value


def check_device_name(name: Any) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the spelling only (whether that device exists is
    :func:`cascadev.loading.resolve_device`'s question)."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise CascadeVError(f"unknown device {name!r}; choose {DEVICES}")
    return name
