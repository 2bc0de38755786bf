"""Before/after pictures of two videos, side by side: e.g. another model's output and CascadeV's upgrade.

    python tools/compare_frames.py small.mp4 big.mp4 -o compare.png --frames 3

``--frames`` frames are picked evenly in time from the right-hand video; the left-hand video's frame
at the same moment is taken (so a clip and its frame-interpolated version line up too) and resized
to the right one's size: ``nearest`` (default; every input pixel becomes a visible block) or
``bicubic``. Each row is left | right; rows are stacked top to bottom into one PNG, under column
titles (the two file names), with white separators and each row's frame numbers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.argtypes import positive_int  # noqa: E402
from cascadev.errors import CascadeVError  # noqa: E402
from cascadev.frames import resize_uint8  # noqa: E402
from cascadev.pictures import check_png_name, contact_sheet, save_image, side_by_side  # noqa: E402
from cascadev.rules import check_choice, check_whole  # noqa: E402
from cascadev.video_io import VideoReader  # noqa: E402

FILTERS = {"nearest": dict(mode="nearest-exact", antialias=False), "bicubic": dict(mode="bicubic", antialias=True)}


def matching_indices(left_frames: int, right_frames: int, count: int) -> tuple[list[int], list[int]]:
    """``count`` evenly spaced right-hand frames and the left-hand frames at the same relative time."""
    right = sorted(set(np.linspace(0, right_frames - 1, min(count, right_frames)).round().astype(int).tolist()))
    scale = (left_frames - 1) / (right_frames - 1) if right_frames > 1 else 0.0
    return [int(round(i * scale)) for i in right], right


def compare_frames(
    left: str | os.PathLike,
    right: str | os.PathLike,
    output: str | os.PathLike,
    *,
    frames: int = 4,
    resample: str = "nearest",
) -> np.ndarray:
    """Write (and return) the labelled picture of k rows left | right, at the right-hand video's size."""
    check_whole(frames, "--frames")
    check_choice(resample, FILTERS, "filter")
    a, b = VideoReader(left), VideoReader(right)
    left_idx, right_idx = matching_indices(a.num_frames, b.num_frames, frames)
    with torch.no_grad():
        before = resize_uint8(a.read(left_idx), b.height, b.width, **FILTERS[resample])
    rows = side_by_side(before, b.read(right_idx))
    titles = [f"{Path(left).name} ({a.width}x{a.height})", f"{Path(right).name} ({b.width}x{b.height})"]
    numbers = [f"{i}" if i == j else f"{i} | {j}" for i, j in zip(left_idx, right_idx)]
    picture = contact_sheet(list(rows), titles, numbers)
    save_image(output, picture)
    return picture


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description="Side-by-side frames of two videos (left resized to the right's size).")
    parser.add_argument("left", help="the 'before' video, e.g. another model's output")
    parser.add_argument("right", help="the 'after' video, e.g. cascadev upscale's output")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--frames", type=positive_int, default=4, help="rows: frames picked evenly in time (default 4)")
    parser.add_argument(
        "--filter",
        default="nearest",
        choices=list(FILTERS),
        help="how the left video is resized: nearest (default) or bicubic",
    )
    args = parser.parse_args(argv)
    try:
        check_png_name(args.output)  # before the videos are read
        compare_frames(args.left, args.right, args.output, frames=args.frames, resample=args.filter)
    except CascadeVError as exc:
        return fail("compare_frames", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
