"""VBench's model-based dimensions of the reconstructions, when the ``vbench`` package is installed.

The five dimensions of the release's table that need pretrained networks (subject and background
consistency, motion smoothness, imaging and aesthetic quality) run through VBench itself, in batch over
the folder of reconstructions, with VBench's "custom input" mode and local weights
(``VBENCH_CACHE_DIR``, default ``~/.cache/vbench``). VBench pins old transformers/numpy versions, so it
is optional: when the package or a weight file is missing, each dimension is reported unavailable with
the reason, and nothing is downloaded. (Temporal flickering needs no model; it is computed natively in
:mod:`cascadev.evaluation.metrics`.)
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cascadev.errors import first_line

from . import VBENCH_DIMENSIONS

__all__ = [
    "VBENCH_DIMENSIONS",
    "VBENCH_WEIGHT_FILES",
    "VBenchScores",
    "check_vbench",
    "run_vbench",
    "vbench_cache_dir",
]

# What VBench's local mode reads from its cache folder for each dimension (it would otherwise try to
# fetch them with wget or git, which we never let it do).
VBENCH_WEIGHT_FILES = {
    "subject_consistency": (
        "dino_model/facebookresearch_dino_main",
        "dino_model/dino_vitbase16_pretrain.pth",
    ),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "aesthetic_quality": (
        "clip_model/ViT-L-14.pt",
        "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
    ),
}


@dataclass
class VBenchScores:
    """Per-video scores ``{name: {dimension: value}}``, VBench's aggregate per dimension, and the
    dimensions that could not run ``{dimension: reason}``."""

    videos: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    version: str | None = None


def vbench_cache_dir() -> Path:
    """``$VBENCH_CACHE_DIR``, else ``~/.cache/vbench`` (VBench's own default)."""
    value = os.environ.get("VBENCH_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "vbench"


def _import_vbench() -> tuple[Any, str | None]:
    """(module, None), or (None, why it cannot be used)."""
    try:
        module = importlib.import_module("vbench")
    except ImportError as exc:
        if getattr(exc, "name", None) == "vbench" or "vbench" in str(exc):
            return None, (
                "the vbench package is not installed (it pins old transformers and numpy versions: "
                "install it in its own environment, pip install vbench, with its weights in "
                "VBENCH_CACHE_DIR)"
            )
        return None, f"the vbench package failed to import ({first_line(exc)})"
    except Exception as exc:
        return None, f"the vbench package failed to import ({first_line(exc)})"
    if not hasattr(module, "VBench"):
        return None, "the installed vbench package has no VBench class"
    return module, None


def _package_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("vbench")
    except Exception:
        return None


def check_vbench(dimensions: Sequence[str]) -> dict[str, str]:
    """Why each of ``dimensions`` cannot run here (``{}`` when all can): package, then weights."""
    dims = [d for d in dimensions if d in VBENCH_DIMENSIONS]
    if not dims:
        return {}
    _, reason = _import_vbench()
    if reason:
        return {d: reason for d in dims}
    cache = vbench_cache_dir()
    if not cache.is_dir():
        return {d: f"the VBench weights folder {cache} does not exist (set VBENCH_CACHE_DIR)" for d in dims}
    missing = {}
    for d in dims:
        absent = [rel for rel in VBENCH_WEIGHT_FILES[d] if not (cache / rel).exists()]
        if absent:
            missing[d] = f"VBench's {d} needs {cache / absent[0]}, which does not exist"
    return missing


def _link_videos(videos: Mapping[str, Path], folder: Path) -> dict[str, str]:
    """Put every video in ``folder`` as NNNNN.mp4 (VBench's custom mode takes .mp4 files and uses the
    file name as a prompt); return {link stem: our name}."""
    folder.mkdir(parents=True)
    names = {}
    for i, (name, path) in enumerate(videos.items()):
        link = folder / f"{i:05d}.mp4"
        try:
            link.symlink_to(Path(path).resolve())
        except OSError:
            shutil.copyfile(path, link)
        names[link.stem] = name
    return names


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def run_vbench(
    videos: Mapping[str, str | os.PathLike[str]],
    dimensions: Sequence[str],
    device: str = "cuda",
) -> VBenchScores:
    """Run VBench's ``dimensions`` on ``videos`` ({name: path of a reconstruction}), one batch each.

    A dimension that cannot run (see :func:`check_vbench`) or that VBench fails on is reported in
    ``unavailable``; the others give per-video scores and VBench's own aggregate as ``mean``. VBench's
    console output goes to stderr.
    """
    dims = [d for d in dimensions if d in VBENCH_DIMENSIONS]
    scores = VBenchScores(unavailable=check_vbench(dims))
    runnable = [d for d in dims if d not in scores.unavailable]
    if not runnable or not videos:
        return scores
    module, _ = _import_vbench()
    scores.version = _package_version()
    with tempfile.TemporaryDirectory(prefix="cascadev-vbench-") as tmp:
        work = Path(tmp)
        names = _link_videos({k: Path(v) for k, v in videos.items()}, work / "videos")
        full_info = work / "full_info.json"  # only read in VBench's standard mode
        full_info.write_text("[]", encoding="utf-8")
        for dim in runnable:
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    bench = module.VBench(str(device), str(full_info), str(work / "out"))
                    bench.evaluate(
                        videos_path=str(work / "videos"),
                        name=f"cascadev_{dim}",
                        dimension_list=[dim],
                        local=True,
                        mode="custom_input",
                    )
                result_file = work / "out" / f"cascadev_{dim}_eval_results.json"
                aggregate, per_video = json.loads(result_file.read_text(encoding="utf-8"))[dim]
            except Exception as exc:  # VBench's own failures must not stop the other metrics
                scores.unavailable[dim] = f"VBench failed on {dim} ({first_line(exc)})"
                continue
            for entry in per_video if isinstance(per_video, list) else []:
                if not isinstance(entry, dict):
                    continue
                name = names.get(Path(str(entry.get("video_path", ""))).stem)
                value = _finite(entry.get("video_results"))
                if name is not None and value is not None:
                    scores.videos.setdefault(name, {})[dim] = value
            mean = _finite(aggregate)
            if mean is None:
                got = [v[dim] for v in scores.videos.values() if dim in v]
                mean = float(sum(got) / len(got)) if got else None
            if mean is None:
                scores.unavailable[dim] = f"VBench returned no score for {dim}"
            else:
                scores.mean[dim] = mean
    return scores
