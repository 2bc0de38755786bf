#!/usr/bin/env python
"""Markdown tables for docs/benchmarks.md from the JSON files of tools/benchmark.py.

Three tables: every run's stages (one row per case and settings, with the release-over-default ratio),
the 8x1024² row against issue 12's targets, and the levers (each file's default-settings run against the
baseline's default run of the same case; the baseline is the reports themselves unless --baseline names
other files).

    python tools/benchmark_table.py bench_all.json
    python tools/benchmark_table.py bench_*.json --levers lever_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascadev.argparsing import Parser, fail  # noqa: E402
from cascadev.errors import CascadeVError, first_line  # noqa: E402

# Issue 12's targets for 8 x 1024², 8 Euler-a steps, one H100, model loading excluded.
TARGETS = {
    "end to end": ("end_to_end_without_loading", "≤ 2.0 s", lambda v: v <= 2.0),
    "DiT MFU": ("mfu", "≥ 50%", lambda v: v >= 0.5),
    "SVD decode": ("svd_decode", "≤ 0.3 s", lambda v: v <= 0.3),
    "peak memory": ("peak_memory_gib", "≤ 16 GB", lambda v: v * 2**30 / 1e9 <= 16),
}


def load_report(path: str | Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
        report["runs"][0]["seconds"]["end_to_end_without_loading"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CascadeVError(f"{path} is not a tools/benchmark.py report ({first_line(exc)}).") from None
    return report


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _s(value: float | None) -> str:
    """Seconds (and other plain figures) to the millisecond."""
    return _f(value, 3)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def stage_table(reports: list[dict]) -> str:
    """One row per run: each stage in seconds, TFLOP/s, MFU, peak memory; the ratio on the default row."""
    rows = [
        "| case | settings | read + encode (reading) | DiT per step (mean) | DiT total | SVD decode | write (waited) "
        "| end to end | loading | DiT TFLOP/s | MFU | peak GiB | release / default |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        for run in report["runs"]:
            s = run["seconds"]
            steps = s["dit_per_step"]
            ratio = report.get("release_over_default", {}).get(run["case"]) if run["settings"] == "default" else None
            rows.append(
                f"| {run['case']} | {run['settings']} | {_s(s['read_and_encode'])} ({_s(s.get('read'))}) "
                f"| {_s(sum(steps) / len(steps) if steps else None)} | {_s(s['dit_total'])} "
                f"| {_s(s['svd_decode'])} | {_s(s['write'])} ({_s(s.get('write_wait'))}) "
                f"| **{_s(s['end_to_end_without_loading'])}** | {_s(s['model_loading'])} "
                f"| {_f(run['dit_tflop_per_s'], 0)} | {_percent(run['mfu'])} | {_f(run['peak_memory_gib'], 1)} "
                f"| {'-' if ratio is None else f'{ratio:.2f}x'} |"
            )
    return "\n".join(rows)


def target_table(reports: list[dict], case: str = "8x1024") -> str:
    """The default-settings run of ``case`` against the targets; empty when no report has it."""
    runs = [r for report in reports for r in report["runs"] if r["case"] == case and r["settings"] == "default"]
    if not runs:
        return ""
    run = runs[-1]
    rows = ["| target | goal | measured | met |", "| --- | --- | --- | --- |"]
    for name, (key, goal, met) in TARGETS.items():
        value = run["seconds"].get(key, run.get(key))
        shown = _percent(value) if key == "mfu" else _s(value)
        rows.append(f"| {name} | {goal} | {shown} | {'-' if value is None else ('yes' if met(value) else 'no')} |")
    return "\n".join(rows)


def lever_table(baselines: list[dict], levers: list[tuple[str, dict]]) -> str:
    """Each lever file's default run against the baselines' default run of the same case (``levers``:
    (name, report) pairs; one lever may be measured on several cases, so a name may come twice)."""
    base = {r["case"]: r for report in baselines for r in report["runs"] if r["settings"] == "default"}
    rows = [
        "| lever | case | DiT total | SVD decode | end to end | vs baseline | MFU | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    compared = []
    for name, report in levers:
        run = next((r for r in report["runs"] if r["settings"] == "default"), None)
        if run is None or run["case"] not in base:
            case = "any case" if run is None else f"case {run['case']}"
            raise CascadeVError(f"{name} has no default-settings run of {case} in the baseline to compare with.")
        compared.append((name, run))
    cases = dict.fromkeys(run["case"] for _, run in compared)  # in the levers' order
    for name, run in [("baseline (defaults)", base[case]) for case in cases] + compared:
        s = run["seconds"]
        change = s["end_to_end_without_loading"] / base[run["case"]]["seconds"]["end_to_end_without_loading"] - 1
        rows.append(
            f"| {name} | {run['case']} | {_s(s['dit_total'])} | {_s(s['svd_decode'])} "
            f"| {_s(s['end_to_end_without_loading'])} | {change:+.1%} | {_percent(run['mfu'])} "
            f"| {_f(run['peak_memory_gib'], 1)} |"
        )
    return "\n".join(rows)


def lever_name(report: dict, path: Path) -> str:
    """What a lever file changed: its --cfg-options, its I/O depth, or else its file name."""
    run = report["runs"][0]
    parts = [*report.get("cfg_options", [])]
    if run.get("io_depth") is not None and run["io_depth"] != 1:
        parts.append(f"--io-depth {run['io_depth']}")
    return " ".join(f"`{p}`" for p in parts) or path.name


def main(argv=None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="tools/benchmark.py JSON files")
    parser.add_argument("--levers", nargs="*", default=[], help="lever JSON files (one lever each)")
    parser.add_argument(
        "--baseline",
        nargs="*",
        default=None,
        help="the defaults' JSON files the levers are compared with, case by case (default: the reports)",
    )
    args = parser.parse_args(argv)
    try:
        print(tables(args.reports, args.levers, args.baseline))
    except CascadeVError as exc:
        return fail("benchmark_table", exc)
    return 0


def tables(paths: list[str], lever_paths: list[str], baseline_paths: list[str] | None) -> str:
    """The Markdown of ``main``: device line, stage table, targets, levers."""
    reports = [load_report(p) for p in paths]
    devices = sorted({r["device"] for r in reports})
    out = [f"Device: {', '.join(devices)}; torch {reports[0]['torch']}.", stage_table(reports)]
    targets = target_table(reports)
    if targets:
        out.append(targets)
    if lever_paths:
        baselines = [load_report(p) for p in baseline_paths] if baseline_paths else reports
        levers = [
            (lever_name(report, path), report) for path in map(Path, lever_paths) for report in [load_report(path)]
        ]
        out.append(lever_table(baselines, levers))
    return "\n\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
