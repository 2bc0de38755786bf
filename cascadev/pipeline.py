"""CascadeVPipeline: frames <-> the semantic latent (1/32 of each side, 16 channels), and the LDM-VAE
decoding back to video.

    frames (T, 3, H, W) in [-1, 1]
      -> encode:   semantic compressor           -> latent (16, T, H/32, W/32)
      -> condition: bilinear x4, times scale_factor -> (T, 16, H/8, W/8)
      -> sample:   DiT + diffusers scheduler     -> SVD latent (T, 4, H/8, W/8)
      -> vae_decode: SVD temporal decoder        -> frames (T, 3, H, W) in [-1, 1]

A model trained with the resize condition (paper Fig. 4b; DiT with 8 input channels) is conditioned
on the SVD-VAE latent of the video at a quarter of the size instead: ``encode_resized`` takes frames
(T, 3, H/4, W/4) to (4, T, H/32, W/32), which ``condition`` upsamples x4 like a semantic latent.

Long videos are sampled in windows of ``lats_per_vid`` frames (stride half a window) and large frames
in tiles of ``input_size`` latent pixels, their noise predictions cross-faded at every step (the
release's scheme, with blended rather than overwritten tile overlaps). The DiT's 2x mode (the paper's
2K path) instead takes tiles of ``2 * input_size`` latent pixels and windows of ``lats_per_vid // 4``
frames (the same token count; see :meth:`CascadeVPipeline.plan`). ``decode`` streams: it samples
``segment_frames`` latent frames at a time, cross-fades the final latents of consecutive segments over
half a window and decodes finished frames in chunks of ``vae_chunk``, so memory is bounded by the
segment, window and tile sizes rather than by the video's length. Noise is drawn per frame from a
generator seeded by (seed, frame index): the same seed gives the same video, and the frames two
segments share start from the same noise.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from . import rules
from .conditioning import DEFAULT_KIND, KINDS, SCALE_FACTOR, Conditioner, kind_of_dit
from .errors import CascadeVError
from .frames import pad_to, resize
from .schedulers import check_steps, make_scheduler, noise_schedule
from .tiling import SegmentStream, Tiling, default_tile_stride

# How the DiT covers a latent: "tiles" of the trained size, the "2x" mode, or "auto" (2x when the
# latent is at least twice the trained size on both sides).
MODES = rules.MODES


@dataclass(frozen=True)
class SamplingPlan:
    """How ``sample`` covers a latent with DiT calls.

    ``mode`` is "tiles" or "2x"; each DiT call sees ``frames`` frames of ``tile`` x ``tile`` latent
    pixels; neighbouring tiles start ``tile_stride`` apart and windows ``max(1, frames // 2)`` apart.
    """

    mode: str
    frames: int
    tile: int
    tile_stride: int


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by ``keys`` through numpy's SeedSequence: independent streams for any keys."""
    state = np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def frame_generator(seed: int, frame: int) -> torch.Generator:
    """A CPU generator for one frame, independent of how the video is split into segments."""
    return seeded_generator(seed, frame)


class CascadeVPipeline:
    """The cascade's components and the operations that chain them.

    Any component may be ``None`` when a command does not need it (``encode`` needs only the
    compressor). Work runs on ``device`` in ``dtype``; what the operations return is float32 on the CPU,
    except ``condition``'s result, the DiT's input, which stays on ``device`` for ``sample``.
    """

    def __init__(
        self,
        dit: torch.nn.Module | None = None,
        compressor: torch.nn.Module | None = None,
        previewer: torch.nn.Module | None = None,
        vae: torch.nn.Module | None = None,
        *,
        scale_factor: float = SCALE_FACTOR,
        sr_scale: int = 4,
        schedule: dict | None = None,
        vae_chunk: int = 4,
        encode_chunk: int = 4,
        tile_stride: int | None = None,
        segment_frames: int = 64,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        autocast_dtype: torch.dtype | None = None,
        tile_blend: str = "blend",
        round_timesteps: bool = False,
        attention_backend: str = "auto",
    ):
        self.dit, self.compressor, self.previewer, self.vae = dit, compressor, previewer, vae
        self.scale_factor = scale_factor
        self.sr_scale = sr_scale
        self.schedule = noise_schedule(schedule)  # every key
        self.vae_chunk = vae_chunk
        self.encode_chunk = encode_chunk
        self.tile_stride = tile_stride
        self.segment_frames = segment_frames
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        # Precision of the DiT call: weights in ``dtype``, optionally under autocast (``fp16``: the
        # release's model.half() under fp16 autocast, LayerNorm in fp32).
        self.autocast_dtype = autocast_dtype
        self.tile_blend = tile_blend  # "blend" (default) or "overwrite" (the release's tiles)
        # The release feeds the timesteps to a half-precision model as fp16 (856.2857 -> 856.5).
        self.round_timesteps = round_timesteps
        self.attention_backend = rules.check_choice(attention_backend, rules.ATTENTION_BACKENDS, "attention_backend")
        if dit is not None:  # values that would sample wrongly without an error: refused here, in one line
            if tile_stride is not None and not 1 <= tile_stride <= dit.input_size:
                # A stride past the tile leaves latent pixels that no tile covers (weight 0: no prediction).
                raise CascadeVError(
                    f"tile_stride must be between 1 and the DiT's tile, {dit.input_size}; got {tile_stride}"
                )
            if segment_frames and segment_frames < dit.lats_per_vid:
                # Shorter segments would each be padded to a whole window, at a stride of one frame.
                raise CascadeVError(
                    f"segment_frames must be 0 (all at once) or at least the DiT's window of {dit.lats_per_vid} "
                    f"frames; got {segment_frames}"
                )

    @property
    def condition_kind(self) -> str:
        """The condition the DiT takes: "semantic" (16 channels, the release) or "resize" (4, paper Fig. 4b)."""
        return DEFAULT_KIND if self.dit is None else kind_of_dit(self.dit.in_channels)

    @property
    def conditioner(self) -> Conditioner:
        """The condition's one implementation (:mod:`cascadev.conditioning`), shared with training."""
        return Conditioner(
            self.compressor,
            self.vae,
            kind=self.condition_kind,
            scale_factor=self.scale_factor,
            sr_scale=self.sr_scale,
            chunk=self.encode_chunk,
            device=self.device,
            dtype=self.dtype,
        )

    # ------------------------------------------------------------------ semantic latent

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (T, 3, H, W) in [-1, 1], H and W multiples of 32 -> semantic latent (16, T, H/32, W/32)."""
        check_input(frames, "frames", "(T, 3, H, W)", 3)
        return self.conditioner.semantic(frames).cpu().transpose(0, 1)  # (T, 16, h, w) -> the file's (16, T, h, w)

    def encode_resized(self, frames: torch.Tensor) -> torch.Tensor:
        """The resize variant's condition: low-resolution frames (T, 3, h, w) in [-1, 1], h and w multiples
        of 8 -> SVD-VAE latent (4, T, h/8, w/8), the posterior's mode, unscaled (``condition`` scales it).

        For an output of H x W pixels the frames are the video at H/4 x W/4
        (:func:`cascadev.conditioning.resize_for_encoding`).
        """
        return self.conditioner.resized(frames).cpu().transpose(0, 1)  # (T, 4, h, w) -> the file's (4, T, h, w)

    @torch.no_grad()
    def preview(self, latent: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The release's "without LDM" view: latent (16, T, h, w) -> frames (T, 3, 8h, 8w) in [-1, 1], or
        resized (bilinear) to ``size`` (H, W) to stand beside a reconstruction."""
        frames = latent.transpose(0, 1)  # the file's (16, T, h, w) -> (T, 16, h, w)
        preview = self.conditioner.chunked(lambda x: self.previewer.decode_frames(x).cpu(), frames)
        return preview if size is None else resize(preview, size)  # (T, 3, 8h, 8w) -> (T, 3, *size)

    def condition(self, latent: torch.Tensor) -> torch.Tensor:
        """Condition latent (C, T, h, w) -> DiT condition (T, C, sr*h, sr*w), upsampled and scaled.

        C is 16 for a semantic latent (``encode``) and 4 for the resize variant's (``encode_resized``).
        """
        kind = self.condition_kind
        check_input(latent, "latent", "(C, T, h, w)")  # the file's layout
        if self.dit is not None and latent.shape[0] != KINDS[kind].channels:  # e.g. a semantic latent, resize DiT
            raise CascadeVError(
                f"this DiT takes a {kind} condition of {KINDS[kind].channels} channels; "
                f"the latent has {latent.shape[0]}"
            )
        return self.conditioner.upsample(latent.transpose(0, 1))  # (C, T, h, w) -> (T, C, h, w) -> x4

    # ------------------------------------------------------------------ LDM sampling

    def plan(self, height: int, width: int, mode: str = "tiles") -> SamplingPlan:
        """Windows and tiles for a (height, width) DiT latent.

        "tiles": the trained ``input_size`` tiles and ``lats_per_vid`` frames (the default of
        ``decode``). "2x": tiles of ``2 * input_size`` with ``lats_per_vid // 4`` frames, pe_interpolation
        doubled inside the DiT; tiles overlap by the same fraction as in "tiles" (stride
        ``2 * tile_stride``). "auto": "2x" when both sides are at least ``2 * input_size``, else "tiles".
        """
        rules.check_choice(mode, MODES, "mode")
        size = self.dit.input_size
        if mode == "auto":
            mode = "2x" if min(height, width) >= 2 * size else "tiles"
        if mode == "tiles":
            return SamplingPlan("tiles", self.dit.lats_per_vid, size, self.tile_stride or default_tile_stride(size))
        frames = self.dit.window_frames(2 * size, 2 * size)
        if frames < 1:
            raise CascadeVError(f"this DiT has {self.dit.lats_per_vid} frames per window; the 2x mode needs at least 4")
        stride = 2 * self.tile_stride if self.tile_stride else default_tile_stride(2 * size)
        return SamplingPlan("2x", frames, 2 * size, stride)

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        *,
        scheduler: str = "euler_a",
        steps: int = 8,
        seed: int = 0,
        frame_offset: int = 0,
        progress: tqdm | None = None,
        mode: str = "tiles",
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generate the SVD latent for a condition.

        Args:
            cond: (T, C, H, W) scaled condition (see ``condition``); any T, H, W. A latent smaller than
                one window or tile is padded (edge frames and pixels repeated) and cropped back.
            frame_offset: index of cond's first frame in the video (selects the per-frame noise).
            mode: "tiles", "2x" or "auto" (see ``plan``).
            latents: optional initial noise (T, 4, H, W), unit variance, instead of the per-frame
                generators' (as diffusers pipelines take ``latents``); it is padded like ``cond`` and
                multiplied by the scheduler's ``init_noise_sigma``. Ancestral steps still draw their
                noise from the per-frame generators.
        Returns:
            (T, 4, H, W) SVD-VAE latent, divided by scale_factor (ready for ``vae_decode``).
        """
        check_input(cond, "cond", "(T, C, H, W)", KINDS[self.condition_kind].channels)
        rules.check_whole(steps, "The number of sampling steps")
        rules.check_seed(seed)
        num_frames, _, height, width = cond.shape
        plan = self.plan(height, width, mode)
        frames, tile = plan.frames, plan.tile
        canvas = max(num_frames, frames), max(height, tile), max(width, tile)
        cond = _pad_to(cond.to(self.device, torch.float32), *canvas)
        canvas_t, _, canvas_h, canvas_w = cond.shape

        generators = [frame_generator(seed, frame_offset + i) for i in range(canvas_t)]
        sched = make_scheduler(scheduler, self.schedule)
        sched.set_timesteps(check_steps(steps, self.schedule), device=self.device)
        if latents is None:
            latents = randn_tensor(
                (canvas_t, 4, canvas_h, canvas_w), generator=generators, device=self.device, dtype=torch.float32
            )
        else:
            if tuple(latents.shape) != (num_frames, 4, height, width):
                raise CascadeVError(
                    f"latents must have shape {(num_frames, 4, height, width)}, got {tuple(latents.shape)}"
                )
            latents = _pad_to(latents.to(self.device, torch.float32), *canvas)
        latents = latents * sched.init_noise_sigma
        tiling = Tiling((canvas_t, canvas_h, canvas_w), frames, tile, plan.tile_stride, self.tile_blend).to(self.device)
        for t in sched.timesteps:
            prediction = self._predict(sched.scale_model_input(latents, t), cond, t, tiling)
            latents = sched.step(prediction, t, latents, generator=generators).prev_sample
            if progress is not None:
                progress.update(1)
        return latents[:num_frames, :, :height, :width].cpu() / self.scale_factor

    def _predict(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, tiling: Tiling) -> torch.Tensor:
        """Blend the DiT's prediction (noise or v: the schedule's ``prediction_type``, which the scheduler
        reads too) over all windows and tiles: (T, 4, H, W)."""
        frames, tile = tiling.frames, tiling.tile
        blended = torch.zeros_like(x)
        inputs_all = torch.cat([x, cond], dim=1)  # (T, 4 + Cc, H, W)
        jobs = list(tiling)
        for i in range(0, len(jobs), self.batch_size):
            batch = jobs[i : i + self.batch_size]
            inputs = torch.stack(
                [inputs_all[t0 : t0 + frames, :, r0 : r0 + tile, c0 : c0 + tile] for t0, r0, c0, _ in batch]
            ).transpose(1, 2)  # (B, C, frames, tile, tile)
            timestep = torch.as_tensor(t, device=self.device, dtype=torch.float32).expand(len(batch))
            if self.round_timesteps:
                timestep = timestep.half().float()
            with (
                torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype or torch.float32,
                    enabled=self.autocast_dtype is not None,
                ),
                self._attention_kernel(),
            ):
                pred = self.dit(inputs.to(self.dtype), timestep)
            pred = pred[:, :4].float().transpose(1, 2)  # (B, frames, 4, tile, tile)
            for (t0, r0, c0, weight), window in zip(batch, pred):
                blended[t0 : t0 + frames, :, r0 : r0 + tile, c0 : c0 + tile] += window * weight[:, None]
        return blended

    @contextmanager
    def _attention_kernel(self) -> Iterator[None]:
        """Pin the DiT's SDPA calls to ``attention_backend`` (all of them, compiled blocks too)."""
        if self.attention_backend == "auto":
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        name = self.attention_backend
        kernels = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }
        with sdpa_kernel(kernels[name]):
            try:
                yield
            except RuntimeError as exc:
                if not any(m in str(exc) for m in ("No available kernel", "No viable backend")):  # older, newer torch
                    raise
                raise CascadeVError(
                    f"sampling.attention_backend={name} has no kernel for these inputs on {self.device} "
                    f"({self.dtype}); use auto"
                ) from None

    # ------------------------------------------------------------------ SVD decoding

    @torch.no_grad()
    def vae_decode(self, latent: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """SVD latent (T, 4, h, w) -> frames (T, 3, 8h, 8w) in [-1, 1], in chunks of ``chunk`` frames (default
        ``vae_chunk``): the temporal decoder sees a chunk's frames together."""
        chunk = chunk or self.vae_chunk
        check_input(latent, "latent", "(T, 4, h, w)", 4)
        out = []
        for i in range(0, latent.shape[0], chunk):
            z = latent[i : i + chunk].to(self.device, self.dtype)
            out.append(self.vae.decode(z, num_frames=z.shape[0]).sample.float().clamp(-1, 1).cpu())
        return torch.cat(out)

    def segment_stream(self, num_frames: int, vae_chunk: int | None = None) -> SegmentStream:
        """How ``decode`` splits a video: segments of ``segment_frames`` overlapping by half a window
        (enough context for the DiT at the seam), cross-faded there."""
        segment = self.segment_frames if 0 < self.segment_frames < num_frames else num_frames
        overlap = max(1, segment - self.dit.lats_per_vid // 2)
        return SegmentStream(num_frames, segment, overlap, vae_chunk or self.vae_chunk)

    def segments(self, num_frames: int) -> list[tuple[int, int]]:
        """The latent frame ranges [s0, s1) that ``decode`` samples independently and then cross-fades."""
        return self.segment_stream(num_frames).spans

    def sample_segment(
        self,
        read_latent: Callable[[int, int], torch.Tensor],
        s0: int,
        s1: int,
        *,
        scheduler: str = "euler_a",
        steps: int = 8,
        seed: int = 0,
        progress: tqdm | None = None,
        mode: str = "tiles",
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One segment of ``segments``, sampled on its own: (s1 - s0, 4, H, W), before the cross-fade.

        ``latents``: the segment's initial noise (default: drawn per frame from ``seed``, see ``sample``)."""
        latent = read_latent(s0, s1)  # (C, s1 - s0, h, w)
        if isinstance(latent, torch.Tensor) and latent.ndim == 4 and latent.shape[1] != s1 - s0:
            raise CascadeVError(f"read_latent({s0}, {s1}) gave {latent.shape[1]} frames, not {s1 - s0}")
        return self.sample(
            self.condition(latent),
            scheduler=scheduler,
            steps=steps,
            seed=seed,
            frame_offset=s0,
            progress=progress,
            mode=mode,
            latents=latents,
        )

    def decode(
        self,
        read_latent: Callable[[int, int], torch.Tensor],
        num_frames: int,
        *,
        scheduler: str = "euler_a",
        steps: int = 8,
        seed: int = 0,
        progress: bool = True,
        mode: str = "tiles",
        latents: torch.Tensor | None = None,
        sampled: Callable[[int], torch.Tensor] | None = None,
        vae_chunk: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Stream a semantic latent back to frames.

        Args:
            read_latent: ``read_latent(t0, t1)`` returns condition latent frames [t0, t1), (C, t1-t0, h, w)
                (a semantic latent, or the resize variant's); t0 never decreases from call to call.
            num_frames: the latent's length T.
            mode: "tiles" (default), "2x" or "auto": how each segment is covered (see ``plan``).
            latents: optional initial noise for the whole video, (T, 4, sr*h, sr*w) (see ``sample``).
            sampled: ``sampled(k)`` returns segment k of ``segments`` as ``sample_segment`` made it (for
                instance in another process); by default each segment is sampled here.
            vae_chunk: frames per SVD-decoder call for this video (default the pipeline's ``vae_chunk``).
        Yields:
            consecutive chunks of frames (n, 3, 32h, 32w) in [-1, 1], T frames in all.
        """
        # Why segments: the DiT's windows cross-fade only inside one ``sample`` call, and a call holds its
        # whole latent, condition and noise; segments bound that to ``segment_frames`` whatever T is.
        stream = self.segment_stream(num_frames, vae_chunk)
        with tqdm(
            total=len(stream.spans) * steps, desc="sampling", unit="step", disable=not progress, leave=False
        ) as bar:
            # In order, always: read_latent (a ConditionStream, a latent file) may forget frames before t0,
            # and SegmentStream can only declare frames final left of the next segment's start.
            for k, (s0, s1) in enumerate(stream.spans):
                if sampled is not None:  # sampled by another process (cascadev.segments)
                    z = sampled(k)
                else:
                    # frame_offset = s0 inside sample: a frame's noise depends on its index in the video, not
                    # in the segment, so two segments sharing frames start them from the same noise and the
                    # cross-fade blends two samples of one trajectory rather than two unrelated videos.
                    z = self.sample_segment(
                        read_latent,
                        s0,
                        s1,
                        scheduler=scheduler,
                        steps=steps,
                        seed=seed,
                        progress=bar,
                        mode=mode,
                        latents=None if latents is None else latents[s0:s1],
                    )
                finished = stream.add(k, z)  # final frames, whole VAE chunks (all of them at the end)
                if finished.shape[0]:
                    # Decoded and handed out at once: the writer gets frames while later segments are still
                    # to be sampled, and nothing larger than a segment is ever held.
                    yield self.vae_decode(finished, vae_chunk)  # (n, 4, h, w) -> (n, 3, 8h, 8w)


def check_input(x: object, name: str, layout: str, channels: int | None = None) -> torch.Tensor:
    """``x`` if it is a non-empty floating-point tensor of ``layout``'s rank (``"(T, C, H, W)"``) with
    ``channels`` in its second axis; else one line naming the argument (numpy arrays, uint8 frames and the
    file's channels-first layout are the usual slips)."""
    rank = layout.count(",") + 1
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise CascadeVError(f"{name} must be a floating-point torch tensor {layout}, got {got}")
    if x.ndim != rank or min(x.shape) < 1 or (channels is not None and x.shape[1] != channels):
        what = layout if channels is None else f"{layout} with C = {channels}"
        raise CascadeVError(f"{name} must be {what}, got shape {tuple(x.shape)}")
    return x


def _pad_to(x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """Pad (T, C, H, W) at the end of each axis by repeating the last frame, row and column."""
    t = x.shape[0]
    x = pad_to(x, height, width)
    if t < frames:
        x = torch.cat([x, x[-1:].expand(frames - t, *x.shape[1:])])
    return x
