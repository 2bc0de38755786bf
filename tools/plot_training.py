"""Loss curves of training runs, one panel per run, from their work dirs' metrics.jsonl.

    python tools/plot_training.py work_dirs/nano/compressor work_dirs/nano/vae work_dirs/nano/dit \
        --titles "compressor + previewer" VAE DiT -o docs/nano_training.png

Each panel shows the logged loss (the mean over each log interval) against the optimizer step, on a
log scale, as `cascadev train` and `cascadev train-ae` write it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.atomic import atomic_output  # noqa: E402
from cascadev.errors import CascadeVError  # noqa: E402
from cascadev.pictures import check_png_name  # noqa: E402
from cascadev.training import metrics_log  # noqa: E402


def read_losses(work_dir: Path) -> tuple[list[int], list[float]]:
    records = metrics_log.read(work_dir)
    return [r["step"] for r in records], [r["loss"] for r in records]


def plot(work_dirs: list[Path], titles: list[str], output: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(work_dirs), 3.0), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (work_dir, title) in enumerate(zip(work_dirs, titles)):
        steps, losses = read_losses(work_dir)
        ax = fig.add_subplot(1, len(work_dirs), i + 1)
        ax.plot(steps, losses, linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    with atomic_output(output, "plot") as tmp:
        fig.savefig(str(tmp), format="png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work_dirs", nargs="+", type=Path)
    parser.add_argument("--titles", nargs="+", default=None, help="one per work dir (default: folder names)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    args = parser.parse_args(argv)
    titles = args.titles or [d.name for d in args.work_dirs]
    try:
        if len(titles) != len(args.work_dirs):
            raise CascadeVError(f"--titles has {len(titles)} names for {len(args.work_dirs)} work dirs")
        plot(args.work_dirs, titles, check_png_name(args.output))
    except CascadeVError as exc:
        return fail("plot_training", exc)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
