"""argparse value types shared by the command-line tools."""

from __future__ import annotations

import argparse


def _number(value: str, kind: type, minimum: float, what: str):
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}") from None
    if number < minimum or (kind is float and number == minimum == 0):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return number


def positive_int(value: str) -> int:
    return _number(value, int, 1, "a positive integer")


def non_negative_int(value: str) -> int:
    return _number(value, int, 0, "0 or more")


def positive_float(value: str) -> float:
    return _number(value, float, 0, "a positive number")
