"""The ``cascadev eval`` subcommand: ``add_eval_parser`` adds it to a parser, ``run_eval`` runs it."""

from __future__ import annotations

import argparse
import sys

from cascadev.argparsing import fail
from cascadev.argtypes import device, positive_int
from cascadev.errors import CascadeVError

from . import ALL_METRICS, LPIPS_NETS

__all__ = ["add_eval_parser", "run_eval"]


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` (with its options) to ``subparsers`` of the ``cascadev`` parser."""
    p = subparsers.add_parser(
        "eval",
        help="PSNR/SSIM/LPIPS and VBench scores of reconstructions against the originals",
        description=(
            "Compare reconstructed videos (REC) with the originals (REF), matched by file name, and "
            "write results.json with results.md (the release README's tables) and results.png beside it."
        ),
    )
    p.add_argument("-o", "--output", required=True, help="results file to write (.json)")
    p.add_argument("--ref", required=True, help="original videos: a folder, a list file or one video")
    p.add_argument("--rec", required=True, help="reconstructions: a folder, a list file or one video")
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of: {', '.join(ALL_METRICS)} (default: all that can run here)",
    )
    p.add_argument(
        "--resize",
        action="store_true",
        help="resize REC frames to REF's size, and compare the first min(REF, REC) frames when counts differ",
    )
    p.add_argument(
        "--device", type=device, default="auto", help="device of LPIPS and VBench: auto (default), cpu, cuda or cuda:N"
    )
    p.add_argument("--lpips-net", default="alex", choices=LPIPS_NETS, help="LPIPS trunk (default alex)")
    p.add_argument(
        "--max-frames", type=positive_int, default=None, help="compare only the first N frames of each video"
    )
    p.add_argument(
        "--label", default=None, help="row label in the tables (default: the REC folder's name, or a REC file's stem)"
    )
    p.add_argument(
        "--chunk-frames", type=positive_int, default=16, help="frames read and compared at a time (default 16)"
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="processes computing PSNR/SSIM/flickering, one video each (default: every available core, or 1 "
        "for jobs under 16M compared pixels, where starting a pool costs more than it saves)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_eval(args: argparse.Namespace) -> int:
    """Run ``cascadev eval`` from parsed ``args``; return the exit status (0, or 2 for bad input).

    Prints the markdown tables on stdout and one ``cascadev: note:`` line per metric that could not
    run on stderr, then ``cascadev: wrote ...`` on stdout; bad input prints one ``cascadev: error: ...`` line.
    """
    from . import report
    from .runner import EvalOptions, run_evaluation

    options = EvalOptions(
        ref=args.ref,
        rec=args.rec,
        output=args.output,
        metrics=args.metrics,
        resize=args.resize,
        device=args.device,
        lpips_net=args.lpips_net,
        max_frames=args.max_frames,
        label=args.label,
        chunk_frames=args.chunk_frames,
        workers=args.workers,
        progress=not args.quiet,
    )
    try:
        results, paths = run_evaluation(options)
    except CascadeVError as exc:
        return fail("cascadev", exc)
    print(report.markdown_tables([(results["label"], results)]), end="")
    for metrics, reason in report.group_unavailable(results["unavailable"]):
        print(f"cascadev: note: not measured: {', '.join(metrics)}: {reason}", file=sys.stderr)
    print(f"cascadev: wrote {paths['json']} ({paths['md'].name} and {paths['png'].name} beside it)")
    return 0
