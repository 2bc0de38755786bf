"""argparse value types shared by the command-line tools: each converts the text, then asks the rule
in :mod:`cascadev.rules` (the one the library and the config schema use), so the CLI's message and the
Python API's say the same."""

from __future__ import annotations

import argparse
import math
import os

from .errors import CascadeVError
from .rules import SEED_LIMIT, check_device_name, whole_problem

__all__ = [
    "positive_int",
    "non_negative_int",
    "positive_float",
    "seed",
    "device",
    "frame_size",
    "max_size",
    "size_limit_problem",
    "SEED_LIMIT",
    "MAX_SIZE",
    "MAX_SIZE_ENV",
]


def whole(value: str, lo: int, hi: int | None = None) -> int:
    """The text ``value`` as a whole number from ``lo`` to ``hi``, by :func:`cascadev.rules.whole_problem`."""
    try:
        number: int | str = int(value)
    except ValueError:
        number = value  # not a number at all: the rule's message shows the text
    problem = whole_problem(number, lo, hi)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return int(number)


def positive_int(value: str) -> int:
    return whole(value, 1)


def non_negative_int(value: str) -> int:
    return whole(value, 0)


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 < number < math.inf:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {value}")
    return number


def seed(value: str) -> int:
    return whole(value, 0, SEED_LIMIT - 1)


def device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (the spelling; loading.resolve_device finds the device)."""
    try:
        return check_device_name(value)
    except CascadeVError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def frame_size(value: str) -> int:
    size = positive_int(value)
    problem = size_limit_problem(size)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return size
