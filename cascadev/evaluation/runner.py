"""``cascadev eval``: match reference and reconstructed videos, stream their frames through the metrics,
and write the results.

Inputs. REF and REC are each a folder of videos, a list file (as training's ``video_list``: one video
path per line, relative to the list file, blank lines and ``#`` comments ignored; or a ``.json`` list of
paths or of objects with a ``"path"``) or a single video. Videos are matched by file
name without the suffix (``clip.mkv`` in REF matches ``clip.mp4`` in REC); two single videos are
compared whatever their names. Every name must be on both sides.

Checks. Every pair is opened before any metric runs. A pair whose frame size or frame count differs is
an error naming the video, unless ``--resize`` is given: then REC frames are resized to REF's size
(bilinear, antialiased) and, when the counts differ, the first ``min(REF, REC)`` frames of both are
compared. Both facts are recorded per video in ``results.json`` (``measured_on.per_video``).
``--max-frames N`` compares only the first N frames of each pair (counts then only need to agree
up to N).

Streaming. Frames are read, compared and dropped ``chunk_frames`` at a time, so memory does not grow
with the videos' length; only one number per frame and metric is kept (for the per-frame curves).

Aggregation. Per-frame values are averaged per video, then over videos. Temporal flickering is computed
on the (unresized) REC frames compared. VBench's model-based dimensions run afterwards on the REC files
themselves, in one batch per dimension (:mod:`cascadev.evaluation.vbench`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cascadev.atomic import check_output_path
from cascadev.errors import CascadeVError, first_line
from cascadev.frames import resize_uint8
from cascadev.inputs import VIDEO_SUFFIXES, by_name, list_folder, natural_key, read_video_list
from cascadev.overlap import read_ahead
from cascadev.overwrite import check_not_inputs
from cascadev.rules import check_device_name, check_whole
from cascadev.video_io import VideoReader

from . import ALL_METRICS, PAIRED_METRICS
from . import metrics as M
from . import vbench as vb
from .parallel import available_cores, score_pairs

__all__ = [
    "ALL_METRICS",
    "PAIRED_METRICS",
    "EvalOptions",
    "PairPlan",
    "VideoPair",
    "evaluate",
    "list_videos",
    "match_videos",
    "parse_metrics",
    "plan_pairs",
    "run_evaluation",
]

SSIM_MIN_SIDE = 7  # scikit-image's default 7x7 window
PARALLEL_MIN_PIXELS = 64 * 512 * 512  # below this many compared pixels one process is faster than a pool
COUNT_POLICY = "frame counts must match; with --resize the first min(REF, REC) frames of both are compared"


# --------------------------------------------------------------------------------------------
# Options and metric names
# --------------------------------------------------------------------------------------------


@dataclass
class EvalOptions:
    """What ``cascadev eval`` was asked to do (see the module docstring)."""

    ref: str
    rec: str
    output: str
    metrics: str | Sequence[str] | None = None  # None: every metric that can run here
    resize: bool = False
    device: str = "auto"
    lpips_net: str = "alex"
    max_frames: int | None = None
    label: str | None = None
    chunk_frames: int = 16
    progress: bool = True
    workers: int | None = None  # processes for PSNR/SSIM/flickering; None: every available core


def parse_metrics(value: str | Sequence[str] | None) -> list[str] | None:
    """``"psnr,ssim"`` -> ``["psnr", "ssim"]`` in the table's order; None stays None (= all)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [m.strip().lower() for m in items if m.strip()]
    if not names:
        raise CascadeVError("--metrics is empty; give a comma-separated list such as psnr,ssim,lpips.")
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown:
        raise CascadeVError(f"Unknown metric {unknown[0]!r} in --metrics; choose from {', '.join(ALL_METRICS)}.")
    return [m for m in ALL_METRICS if m in names]


def _resolve_device(name: str) -> torch.device:
    from cascadev.loading import resolve_device  # imported late: it pulls in the model code

    return resolve_device(name)


# --------------------------------------------------------------------------------------------
# Finding and matching videos
# --------------------------------------------------------------------------------------------


def list_videos(source: str | Path, flag: str = "--ref") -> dict[str, Path]:
    """``{name: path}`` of a folder of videos, a list file or one video, in natural name order."""
    source = Path(source)
    if source.is_dir():
        files = list_folder(source, VIDEO_SUFFIXES)
        if not files:
            raise CascadeVError(f"{flag} folder {source} holds no videos ({', '.join(VIDEO_SUFFIXES)}).")
    elif source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        files = [source]
    elif source.is_file():  # a list file, as training's and the batch commands' (text or JSON)
        try:
            entries = read_video_list([str(source)])
        except CascadeVError as exc:
            # A video of another kind is taken for a list too: the message names both readings.
            raise CascadeVError(
                f"{flag} {source} is not a video ({', '.join(VIDEO_SUFFIXES)}), and as a list of videos: {exc}"
            ) from exc
        files = [Path(entry) for entry in entries]
        for entry in files:
            if not entry.is_file():
                raise CascadeVError(f"{flag} list {source} names {entry}, which is not a file.")
    else:
        raise CascadeVError(f"{flag} {source} does not exist.")
    found = by_name(files, f"of {flag} {source}")
    return {k: found[k] for k in sorted(found, key=natural_key)}


@dataclass(frozen=True)
class VideoPair:
    name: str
    ref: Path
    rec: Path


def match_videos(ref: str | Path, rec: str | Path) -> list[VideoPair]:
    """Pair REF and REC videos by name (two single videos pair whatever their names)."""
    refs, recs = list_videos(ref, "--ref"), list_videos(rec, "--rec")
    single = Path(ref).is_file() and Path(rec).is_file()
    if single and len(refs) == 1 and len(recs) == 1 and Path(ref).suffix.lower() in VIDEO_SUFFIXES:
        (name, ref_path), rec_path = next(iter(refs.items())), next(iter(recs.values()))
        return [VideoPair(name, ref_path, rec_path)]
    missing = [n for n in refs if n not in recs]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CascadeVError(f"Video {missing[0]} is in --ref ({refs[missing[0]]}) but not in --rec {rec}{more}.")
    extra = [n for n in recs if n not in refs]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CascadeVError(f"Video {extra[0]} is in --rec ({recs[extra[0]]}) but not in --ref {ref}{more}.")
    return [VideoPair(n, refs[n], recs[n]) for n in refs]


@dataclass(frozen=True)
class PairPlan:
    """A checked pair: the ``frames`` first frames of both are compared at REF's size."""

    pair: VideoPair
    frames: int
    ref_frames: int
    rec_frames: int
    ref_size: tuple[int, int]
    rec_size: tuple[int, int]
    fps: float

    @property
    def resized(self) -> bool:
        return self.ref_size != self.rec_size

    @property
    def truncated(self) -> bool:
        return self.frames < max(self.ref_frames, self.rec_frames)


def plan_pairs(pairs: Sequence[VideoPair], *, resize: bool = False, max_frames: int | None = None) -> list[PairPlan]:
    """Open every pair and check sizes and frame counts (see the module docstring for the rules)."""
    if max_frames is not None:
        check_whole(max_frames, "--max-frames")
    plans = []
    for pair in pairs:
        ref, rec = VideoReader(pair.ref, num_threads=1), VideoReader(pair.rec, num_threads=1)
        ref_size, rec_size = (ref.height, ref.width), (rec.height, rec.width)
        if ref_size != rec_size and not resize:
            raise CascadeVError(
                f"Video {pair.name}: --rec is {rec.width}x{rec.height} but --ref is "
                f"{ref.width}x{ref.height}; pass --resize to resize the reconstruction to the reference's size."
            )
        limit = ref.num_frames + rec.num_frames if max_frames is None else int(max_frames)
        if min(ref.num_frames, limit) != min(rec.num_frames, limit) and not resize:
            raise CascadeVError(
                f"Video {pair.name}: --ref has {ref.num_frames} frames but --rec has {rec.num_frames}; "
                f"pass --resize to compare the first {min(ref.num_frames, rec.num_frames, limit)} frames."
            )
        frames = min(ref.num_frames, rec.num_frames, limit)
        plans.append(PairPlan(pair, frames, ref.num_frames, rec.num_frames, ref_size, rec_size, ref.fps))
        del ref, rec  # decord keeps the files open; hundreds of pairs must not pile up
    return plans


# --------------------------------------------------------------------------------------------
# Computing
# --------------------------------------------------------------------------------------------


@dataclass
class _VideoScores:
    per_frame: dict[str, list[float]] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)


def _score_pair(
    plan: PairPlan,
    paired: Sequence[str],
    lpips_metric: M.LPIPSMetric | None,
    flicker: bool,
    chunk: int,
) -> _VideoScores:
    ref = VideoReader(plan.pair.ref)
    rec = VideoReader(plan.pair.rec)
    per_frame: dict[str, list[float]] = {m: [] for m in paired}
    meter = M.TemporalFlickering() if flicker else None
    height, width = plan.ref_size
    # Both videos are decoded a chunk ahead, on a background thread, while this one scores.
    chunks = read_ahead(zip(ref.iter_chunks(0, plan.frames, chunk), rec.iter_chunks(0, plan.frames, chunk)))
    for ref_frames, rec_frames in chunks:
        if meter is not None:
            meter.update(rec_frames)
        rec_frames = resize_uint8(rec_frames, height, width)
        if "psnr" in per_frame:
            per_frame["psnr"].extend(M.psnr(ref_frames, rec_frames).tolist())
        if "ssim" in per_frame:
            per_frame["ssim"].extend(M.ssim(ref_frames, rec_frames).tolist())
        if "sharpness" in per_frame:
            # NaN (a flat original frame) becomes None: results.json is strict JSON.
            per_frame["sharpness"].extend(
                v if np.isfinite(v) else None for v in M.sharpness(ref_frames, rec_frames).tolist()
            )
        if "lpips" in per_frame and lpips_metric is not None:
            try:
                values = lpips_metric(ref_frames, rec_frames)
            except RuntimeError as exc:  # e.g. frames too small for AlexNet's pooling
                raise CascadeVError(
                    f"LPIPS failed on video {plan.pair.name} ({width}x{height} frames): {first_line(exc)}."
                ) from exc
            per_frame["lpips"].extend(values.tolist())
    scores = _VideoScores(per_frame=per_frame)
    for metric, values in per_frame.items():
        finite = [v for v in values if v is not None]  # sharpness has None for flat original frames
        if finite:
            scores.values[metric] = float(np.mean(finite))
    if meter is not None:
        value = meter.score()
        if value is not None:
            scores.values["temporal_flickering"] = value
    return scores


def _versions(with_vbench: str | None) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import cascadev

    def dist(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cascadev": cascadev.__version__,
        "torch": torch.__version__,
        "lpips": dist("lpips"),
        "skimage": dist("scikit-image"),
        "numpy": np.__version__,
        "vbench": with_vbench,
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class _MetricSetup:
    """Which requested metrics can run here, and the shared state they need."""

    wanted: list[str]  # requested metrics in table order
    unavailable: dict[str, str]  # metric -> why it cannot run
    device: torch.device | None  # resolved once a metric needs a device
    lpips_metric: M.LPIPSMetric | None
    vbench_dims: list[str]  # requested VBench dimensions, available or not

    @property
    def runnable(self) -> list[str]:
        return [m for m in self.wanted if m not in self.unavailable]


def _check_options(options: EvalOptions) -> list[str]:
    """Step 1: the requested metrics in table order (all when none were named); the cheap option checks."""
    requested = parse_metrics(options.metrics)
    check_device_name(options.device)
    check_whole(options.chunk_frames, "--chunk-frames")
    return list(ALL_METRICS) if requested is None else requested


def _find_pairs(options: EvalOptions, wanted: Sequence[str]) -> list[PairPlan]:
    """Step 2: match REF and REC videos, open every pair, and check sizes and counts for ``wanted``."""
    plans = plan_pairs(match_videos(options.ref, options.rec), resize=options.resize, max_frames=options.max_frames)
    if "ssim" in wanted:
        small = [p for p in plans if min(p.ref_size) < SSIM_MIN_SIDE]
        if small:
            h, w = small[0].ref_size
            raise CascadeVError(
                f"Video {small[0].pair.name} is {w}x{h} pixels; SSIM needs frames at least "
                f"{SSIM_MIN_SIDE} pixels high and wide (leave ssim out with --metrics)."
            )
    return plans


def _set_up_metrics(
    options: EvalOptions, wanted: list[str], lpips_loader: Callable[..., torch.nn.Module] | None
) -> _MetricSetup:
    """Step 3: load LPIPS and check VBench; raises when none of ``wanted`` can run here."""
    setup = _MetricSetup(wanted, {}, None, None, [m for m in wanted if m in vb.VBENCH_DIMENSIONS])
    if "lpips" in wanted:
        loader = lpips_loader or M.load_lpips
        try:
            model = loader(options.lpips_net, "cpu")
        except M.MetricUnavailable as exc:
            setup.unavailable["lpips"] = str(exc)
        else:
            setup.device = _resolve_device(options.device)
            setup.lpips_metric = M.LPIPSMetric(model.to(setup.device), batch_size=options.chunk_frames)
    setup.unavailable.update(vb.check_vbench(setup.vbench_dims))
    if not setup.runnable:
        metric, reason = next(iter(setup.unavailable.items()))
        raise CascadeVError(f"{metric} cannot run: {reason}")
    return setup


def _score_videos(options: EvalOptions, plans: Sequence[PairPlan], setup: _MetricSetup) -> list[_VideoScores]:
    """Step 4: the per-frame metrics of every pair (in a process pool when the job is large enough)."""
    runnable = setup.runnable
    paired = [m for m in PAIRED_METRICS if m in runnable]
    flicker = "temporal_flickering" in runnable
    bar = tqdm(total=len(plans), desc="evaluating", unit="video", disable=not options.progress)
    workers = options.workers
    if workers is None:  # every core, unless the job is too small to repay starting the workers
        pixels = sum(p.frames * p.ref_size[0] * p.ref_size[1] for p in plans)
        workers = available_cores() if pixels >= PARALLEL_MIN_PIXELS else 1
    if workers > 1 and len(plans) > 1 and (flicker or set(paired) - {"lpips"}):
        all_scores = score_pairs(
            plans,
            paired,
            setup.lpips_metric,
            flicker,
            options.chunk_frames,
            workers,
            _score_pair,
            on_done=lambda: bar.update(1),
        )
    else:
        all_scores = []
        for plan in plans:
            all_scores.append(_score_pair(plan, paired, setup.lpips_metric, flicker, options.chunk_frames))
            bar.update(1)
    bar.close()
    return all_scores


def _run_vbench(
    options: EvalOptions, plans: Sequence[PairPlan], setup: _MetricSetup, videos: dict[str, dict[str, float]]
) -> tuple[dict[str, float], str | None]:
    """Step 5: VBench's model-based dimensions on the REC files, merged into ``videos``; (means, version)."""
    runnable_vbench = [m for m in setup.vbench_dims if m not in setup.unavailable]
    if not runnable_vbench:
        return {}, None
    setup.device = setup.device or _resolve_device(options.device)
    got = vb.run_vbench({p.pair.name: p.pair.rec for p in plans}, runnable_vbench, str(setup.device))
    setup.unavailable.update(got.unavailable)
    for name, values in got.videos.items():
        videos.setdefault(name, {}).update(values)
    return got.mean, got.version


def _aggregate(
    setup: _MetricSetup, videos: dict[str, dict[str, float]], vbench_mean: dict[str, float]
) -> dict[str, float]:
    """Step 6: the mean over videos of each metric (VBench's own means for its dimensions); a metric with
    no value becomes unavailable. Each video's metrics are put in table order."""
    mean: dict[str, float] = {}
    for metric in setup.wanted:
        if metric in setup.unavailable:
            continue
        if metric in vbench_mean:
            mean[metric] = vbench_mean[metric]
            continue
        value = _mean([v[metric] for v in videos.values() if metric in v])
        if value is None:
            setup.unavailable[metric] = (
                "every video has a single frame (it needs consecutive frames)"
                if metric == "temporal_flickering"
                else "no video gave a value"
            )
        else:
            mean[metric] = value
    for name in videos:  # keep each video's metrics in table order
        videos[name] = {m: videos[name][m] for m in ALL_METRICS if m in videos[name]}
    return mean


def _measured_on(
    options: EvalOptions,
    plans: Sequence[PairPlan],
    setup: _MetricSetup,
    mean: dict[str, float],
    vbench_version: str | None,
) -> dict[str, Any]:
    """Step 7: what was compared, how, and with which versions (``results.json``'s ``measured_on``)."""
    per_video = {
        p.pair.name: {
            "ref": str(p.pair.ref),
            "rec": str(p.pair.rec),
            "frames": p.frames,
            "ref_frames": p.ref_frames,
            "rec_frames": p.rec_frames,
            "ref_size": list(p.ref_size),
            "rec_size": list(p.rec_size),
            "resized": p.resized,
            "truncated": p.truncated,
        }
        for p in plans
    }
    return {
        "ref": str(options.ref),
        "rec": str(options.rec),
        "videos": len(plans),
        "frames": int(sum(p.frames for p in plans)),
        "frames_per_video": {p.pair.name: p.frames for p in plans},
        "sizes": {p.pair.name: list(p.ref_size) for p in plans},
        "resized": any(p.resized for p in plans),
        "resized_videos": [p.pair.name for p in plans if p.resized],
        "truncated_videos": [p.pair.name for p in plans if p.truncated],
        "resize_option": bool(options.resize),
        "frame_count_policy": COUNT_POLICY,
        "max_frames": options.max_frames,
        "psnr_cap_db": M.PSNR_CAP_DB,
        "lpips_net": options.lpips_net if "lpips" in mean else None,
        "device": str(setup.device) if setup.device is not None else "cpu",
        "vbench_cache_dir": str(vb.vbench_cache_dir()) if setup.vbench_dims else None,
        "per_video": per_video,
        "versions": _versions(vbench_version),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def evaluate(
    options: EvalOptions,
    *,
    lpips_loader: Callable[..., torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Compute the results dictionary of ``options`` (nothing is written).

    ``lpips_loader(net, device)`` builds the LPIPS model (default :func:`metrics.load_lpips`).
    Raises CascadeVError for bad input, and when none of the requested metrics can run here.
    """
    wanted = _check_options(options)
    plans = _find_pairs(options, wanted)
    setup = _set_up_metrics(options, wanted, lpips_loader)
    all_scores = _score_videos(options, plans, setup)
    videos = {plan.pair.name: scores.values for plan, scores in zip(plans, all_scores)}
    per_frame = {plan.pair.name: scores.per_frame for plan, scores in zip(plans, all_scores)}
    vbench_mean, vbench_version = _run_vbench(options, plans, setup, videos)
    mean = _aggregate(setup, videos, vbench_mean)

    rec_path = Path(options.rec)
    label = options.label or (rec_path.name if rec_path.is_dir() else rec_path.stem) or str(rec_path)
    return {
        "label": label,
        "metrics": wanted,
        "mean": {m: mean[m] for m in ALL_METRICS if m in mean},
        "videos": videos,
        "unavailable": {m: setup.unavailable[m] for m in ALL_METRICS if m in setup.unavailable},
        "per_frame": per_frame,
        "measured_on": _measured_on(options, plans, setup, mean, vbench_version),
    }


def run_evaluation(
    options: EvalOptions, *, lpips_loader: Callable[..., torch.nn.Module] | None = None
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Check the outputs, evaluate, and write results.json, results.md and results.png atomically.

    Returns ``(results, {"json": ..., "md": ..., "png": ...})``.
    """
    from . import report

    paths = report.report_paths(options.output)
    pairs = match_videos(options.ref, options.rec)
    check_not_inputs(
        {"--ref": [options.ref, *(p.ref for p in pairs)], "--rec": [options.rec, *(p.rec for p in pairs)]},
        {"results file": paths.values()},
    )
    for path in paths.values():
        check_output_path(path, "results file")
    results = evaluate(options, lpips_loader=lpips_loader)
    report.write_report(results, paths["json"])
    return results, paths
