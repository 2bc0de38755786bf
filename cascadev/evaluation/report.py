"""The evaluation's outputs: results.json, the release README's markdown tables, and a figure.

``write_report(results, "out/results.json")`` writes ``out/results.json``, ``out/results.md`` and
``out/results.png`` together: all three are rendered to temporary files first and renamed only when
all three are complete. The tables have the release README's layout (a PSNR/SSIM/LPIPS table and a
VBench table, four decimals, ``n/a`` for a metric that did not run); with several result files
(``python -m cascadev.evaluation.report A.json B.json -o table.md``) each file is a row and the best
value of each column is in bold, as in the README.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from cascadev.argparsing import Parser, fail
from cascadev.atomic import atomic_output
from cascadev.errors import CascadeVError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RECON_COLUMNS",
    "VBENCH_COLUMNS",
    "build_figure",
    "group_unavailable",
    "load_results",
    "main",
    "markdown_report",
    "markdown_tables",
    "render_figure",
    "report_paths",
    "write_report",
]

LABEL_HEADER = "Model/Compression Factor"
RECON_COLUMNS = (("psnr", "PSNR↑"), ("ssim", "SSIM↑"), ("lpips", "LPIPS↓"), ("sharpness", "Sharpness→1"))
VBENCH_COLUMNS = (
    ("subject_consistency", "Subject Consistency"),
    ("background_consistency", "Background Consistency"),
    ("temporal_flickering", "Temporal Flickering"),
    ("motion_smoothness", "Motion Smoothness"),
    ("imaging_quality", "Imaging Quality"),
    ("aesthetic_quality", "Aesthetic Quality"),
)
LOWER_IS_BETTER = frozenset({"lpips"})
# Not ranked: a frozen or blurry video scores high on flickering without being better (see FLICKER_NOTE).
NOT_RANKED = frozenset({"temporal_flickering"})
FLICKER_NOTE = (
    "Temporal Flickering = 1 - (mean absolute change between consecutive frames) / 255: higher means less "
    "change between frames, which a static or blurry output (e.g. the previewer's) also gets, so no value "
    "of it is bolded as best."
)
CLOSEST_TO_ONE_IS_BEST = frozenset({"sharpness"})  # Laplacian energy ratio: 1 = the original's detail
TITLES = {key: title.rstrip("↑↓→1") for key, title in RECON_COLUMNS + VBENCH_COLUMNS}
NOT_AVAILABLE = "n/a"


def report_paths(output: str | Path) -> dict[str, Path]:
    """``results.json`` -> its siblings ``{"json": results.json, "md": results.md, "png": results.png}``."""
    path = Path(output)
    if path.suffix.lower() != ".json":
        raise CascadeVError(f"The output {path} must end in .json (results.md and results.png are written beside it).")
    return {"json": path, "md": path.with_suffix(".md"), "png": path.with_suffix(".png")}


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return NOT_AVAILABLE if value is None else f"{value:.4f}"


def _table(rows: Sequence[tuple[str, Mapping[str, Any]]], columns) -> str:
    header = [LABEL_HEADER] + [title for _, title in columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["--"] * len(header)) + " |"]
    values = [[row.get("mean", {}).get(key) for key, _ in columns] for _, row in rows]
    best: list[float | None] = []
    for j, (key, _) in enumerate(columns):
        column = [v[j] for v in values if v[j] is not None]
        if len(rows) < 2 or len(column) < 2 or key in NOT_RANKED:
            best.append(None)
        else:
            best.append(
                min(column, key=lambda v: abs(v - 1.0))
                if key in CLOSEST_TO_ONE_IS_BEST
                else min(column)
                if key in LOWER_IS_BETTER
                else max(column)
            )
    for (label, _), row_values in zip(rows, values):
        cells = []
        for value, top in zip(row_values, best):
            text = _fmt(value)
            # Bold the best of a column, compared at the precision shown.
            cells.append(f"**{text}**" if top is not None and text == _fmt(top) else text)
        lines.append("| " + " | ".join([label.replace("|", "/")] + cells) + " |")
    return "\n".join(lines)


def markdown_tables(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The README's two tables for ``rows`` of ``(label, results)``; only columns some row asked for."""
    asked = {m for _, r in rows for m in r.get("metrics", r.get("mean", {}))}
    parts = []
    for heading, columns in ((None, RECON_COLUMNS), ("VBench", VBENCH_COLUMNS)):
        shown = [c for c in columns if c[0] in asked]
        if shown:
            heading = heading or "/".join(TITLES[key] for key, _ in shown)  # e.g. PSNR/SSIM/LPIPS
            parts.append(f"### {heading}\n\n{_table(rows, shown)}")
            if any(key in NOT_RANKED for key, _ in shown):
                parts.append(FLICKER_NOTE)
    return "\n\n".join(parts) + "\n"


def _describe(results: Mapping[str, Any]) -> str:
    on = results.get("measured_on", {})
    sizes = sorted({f"{w}x{h}" for h, w in on.get("sizes", {}).values()})
    text = (
        f"{on.get('videos', 0)} videos, {on.get('frames', 0)} frames compared"
        f" (frame size {', '.join(sizes) or 'n/a'}); per-frame values averaged per video, then over videos."
    )
    if on.get("resized_videos"):
        text += f" REC resized to REF's size for {len(on['resized_videos'])} video(s)."
    if on.get("truncated_videos"):
        text += (
            f" {len(on['truncated_videos'])} video(s) compared on fewer frames than they hold"
            " (see measured_on.per_video)."
        )
    return text


def group_unavailable(unavailable: Mapping[str, str]) -> list[tuple[list[str], str]]:
    """``{metric: reason}`` -> ``[(metrics, reason)]``, metrics sharing a reason together, in order."""
    groups: dict[str, list[str]] = {}
    for metric, reason in unavailable.items():
        groups.setdefault(reason, []).append(metric)
    return [(metrics, reason) for reason, metrics in groups.items()]


def markdown_report(results: Mapping[str, Any]) -> str:
    """results.md: a title, what was measured, the tables, and why any metric did not run."""
    label = results.get("label", "results")
    parts = [f"## Evaluation: {label}", _describe(results), markdown_tables([(label, results)])]
    unavailable = results.get("unavailable", {})
    if unavailable:
        parts.append(
            "Not measured:\n\n" + "\n".join(f"- {', '.join(m)}: {why}" for m, why in group_unavailable(unavailable))
        )
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


def build_figure(results: Mapping[str, Any]) -> Figure:
    """The figure: a panel per metric with its per-video distribution (box and points), a panel saying
    "not measured" for each metric that did not run, and the per-frame PSNR curve of every video underneath."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mean = results.get("mean", {})
    videos = results.get("videos", {})
    unavailable = results.get("unavailable", {})
    shown = [m for m in mean if any(m in v for v in videos.values())]
    shown += [m for m in unavailable if m not in shown]
    ncols = max(1, min(4, len(shown)))
    nrows = max(1, math.ceil(len(shown) / ncols))
    fig = Figure(figsize=(3.4 * ncols + 0.6, 2.8 * nrows + 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[1.0] * nrows + [1.25])
    for i, metric in enumerate(shown):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        if metric not in mean:  # asked for but not run: say so instead of leaving it out
            ax.set_axis_off()
            ax.set_title(TITLES.get(metric, metric), fontsize=9)
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", fontsize=10, color="tab:gray")
            continue
        values = [v[metric] for v in videos.values() if metric in v]
        ax.boxplot(values, widths=0.5, showfliers=False)
        offsets = [0.0] if len(values) == 1 else [-0.18 + 0.36 * k / (len(values) - 1) for k in range(len(values))]
        ax.scatter([1 + o for o in offsets], values, s=12, alpha=0.7, color="tab:blue", zorder=3)
        ax.set_xticks([])
        ax.set_title(f"{TITLES.get(metric, metric)}\nmean {mean[metric]:.4f}", fontsize=9)
        # Plain numbers: values like 0.9250001 would otherwise get an offset label ("1e-6+9.25e-1").
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.tick_params(labelsize=8)
    curves = fig.add_subplot(grid[nrows, :])
    per_frame = results.get("per_frame", {})
    drawn = 0
    for name, frames in per_frame.items():
        values = frames.get("psnr") or []
        if values:
            curves.plot(range(len(values)), values, linewidth=1, label=name)
            drawn += 1
    if drawn:
        curves.set_xlabel("frame")
        curves.set_ylabel("PSNR (dB)")
        curves.set_title("Per-frame PSNR of each video", fontsize=9)
        if drawn <= 12:
            curves.legend(fontsize=7, loc="best")
    else:
        curves.set_axis_off()
        curves.text(0.5, 0.5, "per-frame PSNR was not computed", ha="center", va="center")
    fig.suptitle(f"Evaluation: {results.get('label', '')}", fontsize=11)
    return fig


def render_figure(results: Mapping[str, Any], path: str | Path) -> None:
    """:func:`build_figure` as a PNG written to ``path`` directly (callers make it atomic)."""
    build_figure(results).savefig(str(path), format="png", dpi=100)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_report(results: Mapping[str, Any], output: str | Path) -> dict[str, Path]:
    """Write results.json, results.md and results.png (all or none); return their paths."""
    paths = report_paths(output)
    text = json.dumps(results, indent=2, allow_nan=False, ensure_ascii=False)
    with ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_output(p, "results file")) for k, p in paths.items()}
        tmp["json"].write_text(text + "\n", encoding="utf-8")
        tmp["md"].write_text(markdown_report(results), encoding="utf-8")
        render_figure(results, tmp["png"])
    return paths


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json written by ``cascadev eval``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CascadeVError(f"{path} does not exist.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CascadeVError(f"{path} is not a readable results.json.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("mean"), dict):
        raise CascadeVError(f"{path} is not a results.json of cascadev eval (it has no 'mean').")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cascadev.evaluation.report A.json B.json [-o table.md] [--labels a,b]``:
    one table with a row per results file (e.g. baselines next to the model)."""
    parser = Parser(prog="cascadev-report", description="Combine results.json files into the README's tables.")
    parser.add_argument("results", nargs="+", help="results.json files, one table row each")
    parser.add_argument("-o", "--output", default=None, help="markdown file to write (default: print only)")
    parser.add_argument("--labels", default=None, help="comma-separated row labels (default: each file's label)")
    args = parser.parse_args(argv)
    try:
        loaded = [load_results(p) for p in args.results]
        labels = [r.get("label") or Path(p).stem for r, p in zip(loaded, args.results)]
        if args.labels is not None:
            labels = [s.strip() for s in args.labels.split(",")]
            if len(labels) != len(loaded):
                raise CascadeVError(f"--labels names {len(labels)} rows but {len(loaded)} results files were given.")
        text = markdown_tables(list(zip(labels, loaded)))
        if args.output:
            with atomic_output(args.output, "table") as tmp:
                tmp.write_text(text, encoding="utf-8")
    except CascadeVError as exc:
        return fail("cascadev-report", exc)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
