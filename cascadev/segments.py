"""One long video or latent decoded by several processes: they share its segments, the main process merges.

``CascadeVPipeline.decode`` samples a long latent in segments (``pipe.segments``) that are independent
of each other (each draws its noise per frame from the seed) and cross-fades them at the end. Under
``accelerate launch`` each process samples its share of the segments with ``pipe.sample_segment`` and
saves them in a hidden folder beside the output (``k.safetensors``, atomically: a restarted run with the
same settings, ``settings.json``, keeps the finished ones); the main process then runs ``pipe.decode``
with ``sampled=`` reading them back, so the cross-fade, the SVD decoding and the written videos are those
of a one-process run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_output, check_output_path
from .batch import distributed_state
from .errors import CascadeVError
from .latent_io import LatentReader
from .pipeline import CascadeVPipeline
from .reconstruct import PipelineLoader, SamplingArgs, decode_latent, reconstruct_video
from .training.checkpoints import sha256_of

SETTINGS_FILE = "settings.json"  # what the segments in a folder were sampled from and with


def segment_settings(pipe: CascadeVPipeline, latent: str | os.PathLike, ranges: list, options: dict) -> str:
    """Everything a sampled segment depends on, as JSON: the latent's content (so a recon that encodes
    the same latent again keeps its segments), the spans, the sampling options, the pipeline's sampling
    settings and a fingerprint of the DiT's weights."""
    weights = [p.detach() for p in list(pipe.dit.parameters())[:4]]
    settings = dict(
        latent=sha256_of(Path(latent)),
        ranges=[list(r) for r in ranges],
        options={k: str(v) for k, v in options.items()},
        pipeline={
            k: str(getattr(pipe, k))
            for k in ("tile_stride", "tile_blend", "round_timesteps", "dtype", "autocast_dtype", "scale_factor")
        },
        dit=[float(w.double().sum()) for w in weights],
    )
    return json.dumps(settings, sort_keys=True)


def share_segments(
    pipe: CascadeVPipeline, latent: str | os.PathLike, sampling: SamplingArgs, folder: Path
) -> Callable[[int], torch.Tensor]:
    """Every process: sample this process's segments of ``latent`` into ``folder`` and wait for the others.

    Returns ``sampled(k)`` reading segment k back (for ``pipe.decode`` in the main process).
    """
    from safetensors.torch import load_file, save_file

    state = distributed_state()
    with LatentReader(latent) as reader:
        ranges = pipe.segments(reader.num_frames)
        options = {k: v for k, v in sampling.decode_options().items() if k != "progress"}
        if state.is_main_process:  # segments an earlier run left for other settings are not these: start over
            marker, settings = folder / SETTINGS_FILE, segment_settings(pipe, latent, ranges, options)
            if folder.exists() and (not marker.is_file() or marker.read_text() != settings):
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(marker, "segment settings") as tmp:
                tmp.write_text(settings)
        state.wait_for_everyone()
        # Contiguous shares: segments are of equal length, so equal counts balance the work.
        with state.split_between_processes(list(range(len(ranges)))) as mine:
            for k in mine:
                path = folder / f"{k}.safetensors"
                if path.is_file():  # sampled by an earlier, interrupted run
                    continue
                z = pipe.sample_segment(reader.read, *ranges[k], **options)
                with atomic_output(path, "segment file") as tmp:
                    save_file({"z": z.contiguous()}, str(tmp))
    state.wait_for_everyone()

    def sampled(k: int) -> torch.Tensor:
        path = folder / f"{k}.safetensors"
        if not path.is_file():
            raise CascadeVError(f"Segment {k} of {latent} was not sampled ({path} is missing).")
        return load_file(str(path))["z"]

    return sampled


def decode_latent_split(
    load_pipeline: PipelineLoader,
    latent: str | os.PathLike,
    output: str | os.PathLike,
    sampling: SamplingArgs,
    **writer_options,
) -> None:
    """``reconstruct.decode_latent``, with the segments shared among the accelerate processes."""
    state = distributed_state()
    if state.num_processes == 1:
        decode_latent(load_pipeline, latent, output, sampling, **writer_options)
        return
    LatentReader(latent).close()  # a bad latent fails before the models load
    check_output_path(output, "output video")
    output = Path(output)
    folder = output.parent / f".{output.name}.segments"
    pipe = load_pipeline()
    sampled = share_segments(pipe, latent, sampling, folder)
    if state.is_main_process:  # the one-process task, its segments read back: the same cross-fade and video
        decode_latent(lambda: pipe, latent, output, sampling, sampled=sampled, **writer_options)
        shutil.rmtree(folder, ignore_errors=True)


def reconstruct_split(
    load_pipeline: PipelineLoader,
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    sampling: SamplingArgs,
    **options,
) -> None:
    """``reconstruct.reconstruct_video`` of one video, with the DiT segments shared among the processes:
    the main process encodes the latent, all sample their segments, the main process writes the outputs."""
    state = distributed_state()
    if state.num_processes == 1:
        reconstruct_video(load_pipeline, video, out_dir, sampling, **options)
        return
    folder = Path(out_dir) / ".segments"
    load_once = functools.cache(load_pipeline)

    def share(latent: Path) -> Callable[[int], torch.Tensor]:
        state.wait_for_everyone()  # the latent file is written
        return share_segments(load_once(), latent, sampling, folder)

    if state.is_main_process:
        reconstruct_video(load_once, video, out_dir, sampling, share_segments=share, **options)
        shutil.rmtree(folder, ignore_errors=True)
    else:
        state.wait_for_everyone()  # pairs with the main process's in share()
        share_segments(load_once(), Path(out_dir) / "latent.safetensors", sampling, folder)
