#!/usr/bin/env python
"""Build the release's evaluation set from a local copy of Inter4K.

    python tools/prepare_inter4k.py INTER4K_DIR -o OUT [-n 200] [--size 1024] [--no-crop]
                                    [--fps 30] [--num-frames 64] [--crf 18] [--skip-short]

Takes the first N videos of INTER4K_DIR (a folder of videos, or a list file) in natural name order
(``2.mp4`` before ``10.mp4``), and for each writes ``OUT/<name>.mp4``:

* frame rate ``--fps`` by frame selection: output frame i shows the source frame nearest its time,
  ``round(i * source_fps / fps)`` (halves up; frames are dropped or repeated, never blended, and a
  29.97 fps source gives frames 0, 1, 2, ... at 30 fps, not 0, 0, 1, ...);
* the short side resized to ``--size`` (bilinear, antialiased), then a centred ``size x size`` crop
  (``--no-crop`` keeps the aspect ratio);
* exactly ``--num-frames`` frames (the release does not state a length; 64 frames, about 2 s, is the
  default). A video too short for that is an error naming it, or skipped with ``--skip-short`` (then
  the next videos are taken so that N videos are still written).

A ``--num-videos`` larger than the source holds fails before any work. Frames are read and written a
few at a time (4K frames are large), each output is written atomically, and ``OUT/manifest.json``
records the source and the source frames of every output written (also when ``--skip-short`` leaves
fewer than asked for). Errors print one line ``prepare_inter4k: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

try:
    import cascadev  # noqa: F401
except ImportError:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from cascadev.argparsing import Parser, fail
from cascadev.argtypes import non_negative_int, positive_float, positive_int
from cascadev.atomic import atomic_output, make_folder
from cascadev.errors import CascadeVError
from cascadev.evaluation.runner import list_videos
from cascadev.frames import crop as crop_frames
from cascadev.frames import from_uint8, resize_short_side, to_uint8
from cascadev.rules import VIDEO_CRF
from cascadev.video_io import VideoReader, VideoWriter

PROG = "prepare_inter4k"
READ_CHUNK = 4  # a 4K frame is about 100 MB as float32, so a few at a time


class TooShort(CascadeVError):
    """The source video does not have enough frames for the requested length."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="the Inter4K videos: a folder or a list file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("-n", "--num-videos", type=positive_int, default=200, help="number of videos (default 200)")
    parser.add_argument("--size", type=positive_int, default=1024, help="short side, and crop size (default 1024)")
    parser.add_argument("--no-crop", action="store_true", help="resize only, keep the aspect ratio")
    parser.add_argument("--fps", type=positive_float, default=30.0, help="output frame rate (default 30)")
    parser.add_argument("--num-frames", type=positive_int, default=64, help="frames per video (default 64)")
    parser.add_argument(
        "--crf",
        type=non_negative_int,
        default=VIDEO_CRF,
        help=f"x264 quality of the outputs (0 = lossless; default {VIDEO_CRF})",
    )
    parser.add_argument("--skip-short", action="store_true", help="skip videos too short instead of stopping")
    return parser


def source_indices(source_fps: float, fps: float, num_frames: int) -> list[int]:
    """Source frame nearest each output frame time ``i / fps``: ``round(i * source_fps / fps)``, halves up.

    Flooring would show frame 0 twice for a 29.97 fps source at 30 fps (1 * 0.999 floors to 0).
    """
    ratio = source_fps / fps
    # The small epsilon keeps exact halves (24 -> 48 fps: 0.5, 1.5, ...) from rounding down by float error.
    return [int(math.floor(i * ratio + 0.5 + 1e-9)) for i in range(num_frames)]


def prepare_video(
    src: Path, dst: Path, *, size: int, crop: bool, fps: float, num_frames: int, crf: int = VIDEO_CRF
) -> list[int]:
    """Write the evaluation version of ``src`` to ``dst``; return the source frame indices used.

    Raises CascadeVError when ``src`` is unreadable or has no frame rate, TooShort when it is too short.
    """
    reader = VideoReader(src)
    if reader.fps <= 0:
        raise CascadeVError(f"{src} does not state its frame rate, so it cannot be resampled to {fps:g} fps.")
    indices = source_indices(reader.fps, fps, num_frames)
    if indices[-1] >= reader.num_frames:
        seconds = num_frames / fps
        raise TooShort(
            f"{src} has {reader.num_frames} frames at {reader.fps:.3g} fps, fewer than the "
            f"{seconds:.3g} s that {num_frames} frames at {fps:g} fps need."
        )
    first = reader.read([0])
    out_h, out_w = resize_short_side(from_uint8(first), size).shape[-2:]
    if crop:
        out_h, out_w = size, size
    with VideoWriter(dst, fps, out_h, out_w, crf=crf) as writer:
        for start in range(0, num_frames, READ_CHUNK):
            frames = reader.read(indices[start : start + READ_CHUNK])
            x = resize_short_side(from_uint8(frames), size)  # (n, H, W, 3) uint8 -> (n, 3, h, w)
            writer.write(to_uint8(crop_frames(x, size, size, (0.5, 0.5)) if crop else x))  # centred square
    return indices


def prepare(
    src: Path,
    out_dir: Path,
    *,
    num_videos: int = 200,
    size: int = 1024,
    crop: bool = True,
    fps: float = 30.0,
    num_frames: int = 64,
    crf: int = VIDEO_CRF,
    skip_short: bool = False,
    log=None,
) -> list[Path]:
    """Write the first ``num_videos`` videos of ``src`` (see the module docstring); return the outputs."""
    videos = list_videos(src, "the Inter4K source")
    if len(videos) < num_videos:
        raise CascadeVError(f"{src} holds {len(videos)} videos, fewer than the {num_videos} asked for (--num-videos).")
    make_folder(out_dir)
    written: list[Path] = []
    manifest = {
        "source": str(src),
        "size": size,
        "crop": crop,
        "fps": fps,
        "num_frames": num_frames,
        "frame_selection": "output frame i = source frame round(i * source_fps / fps), halves up",
        "videos": {},
    }
    for name, path in videos.items():
        if len(written) == num_videos:
            break
        dst = out_dir / f"{name}.mp4"
        if dst.exists() and dst.resolve() == path.resolve():
            raise CascadeVError(f"The output {dst} would overwrite its source; choose another folder.")
        try:
            indices = prepare_video(path, dst, size=size, crop=crop, fps=fps, num_frames=num_frames, crf=crf)
        except TooShort as exc:
            if not skip_short:
                raise
            if log:
                log(f"{PROG}: skipped {path}: {exc}")
            continue
        manifest["videos"][name] = {"source": str(path), "source_frames": indices}
        written.append(dst)
        if log:
            log(f"{PROG}: wrote {dst} ({len(written)}/{num_videos})")
    with atomic_output(out_dir / "manifest.json", "manifest") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    if len(written) < num_videos:
        raise CascadeVError(
            f"{src} gave only {len(written)} usable videos of the {num_videos} asked for "
            f"(the {len(written)} written, and their manifest.json, are in {out_dir})."
        )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare(
            args.src,
            args.output,
            num_videos=args.num_videos,
            size=args.size,
            crop=not args.no_crop,
            fps=args.fps,
            num_frames=args.num_frames,
            crf=args.crf,
            skip_short=args.skip_short,
            log=lambda line: print(line, file=sys.stderr),
        )
    except CascadeVError as exc:
        return fail(PROG, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
