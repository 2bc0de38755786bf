"""The bicubic baseline: what 1/32-resolution frames give without any learned decoder.

Each frame is shrunk by the compression factor (32, the semantic latent's stride) with antialiased
bicubic filtering to ``(round(H/32), round(W/32))`` (at least 1x1), then enlarged back to ``(H, W)`` with
bicubic interpolation, clamped and rounded. Scoring these videos with ``cascadev eval`` next to the
previewer's and the LDM's reconstructions shows what the decoders add.

    python -m cascadev.evaluation.baselines REF -o OUT [--factor 32] [--crf 18]

writes ``OUT/<name>.mp4`` for every video of REF (a folder, a list file or one video), frame rate and
frame count kept, streamed a chunk of frames at a time; each file is written atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from cascadev import frame_times
from cascadev.argparsing import Parser, fail
from cascadev.argtypes import non_negative_int, positive_int
from cascadev.atomic import make_folder
from cascadev.errors import CascadeVError
from cascadev.frames import bicubic_round_trip, round_half_up
from cascadev.latent_io import LATENT_STRIDE
from cascadev.overlap import WriteBehind, read_ahead
from cascadev.overwrite import check_not_inputs
from cascadev.rules import VIDEO_CRF, check_whole
from cascadev.video_io import VideoReader, VideoWriter

__all__ = ["bicubic_folder", "bicubic_frames", "bicubic_video", "low_res_size", "main"]

DEFAULT_FACTOR = LATENT_STRIDE  # the semantic latent's: the cascade's 1/32 against plain bicubic


def low_res_size(height: int, width: int, factor: int = DEFAULT_FACTOR) -> tuple[int, int]:
    """The 1/``factor`` frame size: ``(round(H/f), round(W/f))``, each at least 1."""
    check_whole(factor, "The downscaling factor")
    return max(1, round_half_up(height / factor)), max(1, round_half_up(width / factor))


def bicubic_frames(frames: np.ndarray, factor: int = DEFAULT_FACTOR) -> np.ndarray:
    """uint8 (n, H, W, 3) -> uint8 (n, H, W, 3): bicubic down by ``factor`` (antialiased), bicubic up."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"bicubic_frames needs uint8 (n, H, W, 3) frames, got {arr.dtype} {arr.shape}")
    return bicubic_round_trip(arr, low_res_size(*arr.shape[1:3], factor))


def bicubic_video(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    factor: int = DEFAULT_FACTOR,
    *,
    chunk: int = 16,
    **writer_options,
) -> int:
    """Write the bicubic baseline of video ``src`` to ``dst`` (same size, frames and frame times, variable
    ones too); return the number of frames. ``writer_options`` go to
    :class:`~cascadev.video_io.VideoWriter` (crf, codec)."""
    check_not_inputs({"source video": src}, {"output": dst})
    reader = VideoReader(src)
    low_res_size(reader.height, reader.width, factor)  # a bad factor fails before anything is written
    times = frame_times.select(reader.frame_times, 0, reader.num_frames)
    with (
        VideoWriter(dst, reader.output_fps, reader.height, reader.width, frame_times=times, **writer_options) as writer,
        WriteBehind() as behind,
    ):
        for frames in read_ahead(reader.iter_chunks(0, reader.num_frames, chunk)):
            behind.submit(writer.write, bicubic_frames(frames, factor))
    return reader.num_frames


def bicubic_folder(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    factor: int = DEFAULT_FACTOR,
    *,
    chunk: int = 16,
    progress: bool = False,
    **writer_options,
) -> list[Path]:
    """The bicubic baseline of every video of ``src`` (folder, list file or video) as OUT/<name>.mp4."""
    from tqdm.auto import tqdm

    from .runner import list_videos

    videos = list_videos(src, "the source")
    out_dir = make_folder(out_dir)
    written = []
    for name, path in tqdm(videos.items(), desc="bicubic", unit="video", disable=not progress):
        dst = out_dir / f"{name}.mp4"
        bicubic_video(path, dst, factor, chunk=chunk, **writer_options)
        written.append(dst)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cascadev-bicubic", description="Write the bicubic x32 baseline of a folder of videos.")
    parser.add_argument("src", help="folder of videos, list file or one video")
    parser.add_argument("-o", "--output", required=True, help="output folder (<name>.mp4 per video)")
    parser.add_argument(
        "--factor", type=positive_int, default=DEFAULT_FACTOR, help=f"downscaling factor (default {DEFAULT_FACTOR})"
    )
    parser.add_argument(
        "--crf", type=non_negative_int, default=VIDEO_CRF, help=f"x264 quality (0 = lossless; default {VIDEO_CRF})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        written = bicubic_folder(args.src, args.output, args.factor, crf=args.crf, progress=not args.quiet)
    except CascadeVError as exc:
        return fail("cascadev-bicubic", exc)
    print(f"wrote {len(written)} videos to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
