"""argparse value types shared by the command-line tools."""

from __future__ import annotations

import argparse
import os


def _number(value: str, kind: type, minimum: float, what: str, limit: float | None = None):
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}") from None
    if number < minimum or (kind is float and number == minimum == 0) or (limit is not None and number >= limit):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return number


def positive_int(value: str) -> int:
    return _number(value, int, 1, "a positive integer")


def non_negative_int(value: str) -> int:
    return _number(value, int, 0, "0 or more")


def positive_float(value: str) -> float:
    return _number(value, float, 0, "a positive number")


# Seeds feed numpy's SeedSequence and torch.Generator.manual_seed, which take 0 <= seed < 2**63.
SEED_LIMIT = 2**63
# Largest short side (pixels) of frames a command makes, unless CASCADEV_MAX_SIZE raises it: one
# 8192x8192 frame is already 0.8 GB as float32 RGB, and the models' activations are many times that.
MAX_SIZE = 8192
MAX_SIZE_ENV = "CASCADEV_MAX_SIZE"


def seed(value: str) -> int:
    return _number(value, int, 0, "a whole number from 0 to 2**63 - 1", limit=SEED_LIMIT)


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
    return (f"{short_side} pixels is above the maximum short side of {limit} (one such frame alone is "
            f"{gib:.1f} GiB as float32; set {MAX_SIZE_ENV} to allow more)")


def frame_size(value: str) -> int:
    size = positive_int(value)
    problem = size_limit_problem(size)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return size
