"""Scoring many video pairs on every core: PSNR, SSIM and flickering in worker processes (one video
each at a time), LPIPS meanwhile in this process (batched, on the GPU when there is one).

Each worker runs the same per-video code as the sequential path (``runner._score_pair``), so the
numbers are the same; only the order in which videos finish differs, and results are put back in
input order.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from .metrics import LPIPSMetric
    from .runner import PairPlan

__all__ = ["available_cores", "score_pairs"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism


def score_pairs(
    plans: Sequence[PairPlan],
    paired: Sequence[str],
    lpips_metric: LPIPSMetric | None,
    flicker: bool,
    chunk: int,
    workers: int,
    score: Callable,
    on_done: Callable[[], None] = lambda: None,
) -> list:
    """``score(plan, ...)`` for every plan, CPU metrics in ``workers`` processes; scores in plan order."""
    cpu = [m for m in paired if m != "lpips"]
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch/OpenMP threads
    with ProcessPoolExecutor(min(workers, len(plans)), mp_context=context, initializer=_init_worker) as pool:
        futures = [pool.submit(score, plan, cpu, None, flicker, chunk) for plan in plans] if cpu or flicker else []
        lpips = [score(plan, ["lpips"], lpips_metric, False, chunk) if "lpips" in paired else None for plan in plans]
        results = []
        for k, plan in enumerate(plans):
            scores = futures[k].result() if futures else score(plan, [], None, False, chunk)
            if lpips[k] is not None:
                scores.per_frame["lpips"] = lpips[k].per_frame["lpips"]
                scores.values["lpips"] = lpips[k].values["lpips"]
            scores.per_frame = {m: scores.per_frame[m] for m in paired}
            results.append(scores)
            on_done()
    return results
