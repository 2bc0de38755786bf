"""Evaluation as the release reports it: PSNR, SSIM and LPIPS against the originals, and VBench's
dimensions of the reconstructions, with a results.json, the README's markdown tables and a figure.

Modules: ``metrics`` (per-frame definitions), ``vbench`` (optional VBench runner), ``runner``
(matching, checks, streaming, orchestration), ``report`` (json/markdown/figure), ``baselines`` (the
bicubic x32 baseline), ``cli`` (``cascadev eval``). This file only holds the metric names, so that
building the command-line parser imports nothing heavy.
"""

PAIRED_METRICS = ("psnr", "ssim", "lpips", "sharpness")
VBENCH_DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "imaging_quality",
    "aesthetic_quality",
)
# Every metric name, in the release table's column order.
ALL_METRICS = (
    "psnr",
    "ssim",
    "lpips",
    "sharpness",
    "subject_consistency",
    "background_consistency",
    "temporal_flickering",
    "motion_smoothness",
    "imaging_quality",
    "aesthetic_quality",
)
LPIPS_NETS = ("alex", "vgg", "squeeze")

__all__ = ["ALL_METRICS", "LPIPS_NETS", "PAIRED_METRICS", "VBENCH_DIMENSIONS"]
