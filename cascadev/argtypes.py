"""argparse value types shared by the command-line tools: each converts the text, then asks the rule
in :mod:`cascadev.rules` (the one the library and the config schema use), so the CLI's message and the
Python API's say the same."""

from __future__ import annotations

import argparse
import math

from .errors import CascadeVError
from .rules import MAX_SIZE, MAX_SIZE_ENV, SEED_LIMIT, check_device_name, max_size, size_limit_problem, whole_problem

__all__ = [
    "positive_int",
    "non_negative_int",
    "positive_float",
    "seed",
    "device",
    "frame_size",
    "width_by_height",
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


def width_by_height(value: str) -> tuple[int, int]:
    """``WxH`` (``1024x576``) -> (W, H), both whole numbers of at least 1."""
    w, x, h = value.lower().partition("x")
    try:
        if not x:
            raise argparse.ArgumentTypeError("")
        return positive_int(w), positive_int(h)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels (e.g. 1024x576), got {value!r}") from None


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


def frame_size(value: str) -> int:
    size = positive_int(value)
    problem = size_limit_problem(size)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return size
