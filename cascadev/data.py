"""Training data: lists of videos -> fixed-size clips ``(num_frames, 3, S, S)`` in [-1, 1] (:mod:`cascadev.frames`).

``video_list`` files name the videos (:func:`cascadev.inputs.read_video_list`); :class:`VideoClipDataset`
turns each into one clip per epoch: ``num_frames`` frames ``time_stride`` apart from a random offset,
decoded with decord (only the frames needed) or read from a folder of JPEG/PNG frames, then made square.

Randomness is a pure function of ``(seed, epoch, index)`` (``numpy.random.default_rng``), so a clip
does not depend on which DataLoader worker reads it, on the number of workers or on how often it is
read; :meth:`VideoClipDataset.set_epoch` changes the offsets (and flips) from one epoch to the next.

Bad videos never stop a run: an unreadable video (or, with ``short_video="skip"``, one too short for a
clip) is reported once with a :class:`BadVideoWarning`, counted in ``dataset.skipped`` and replaced
by the next good video of the list; only when every video is bad is a :class:`CascadeVError` raised.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cascadev.errors import CascadeVError
from cascadev.frames import crop, from_uint8, resize_short_side
from cascadev.inputs import IMAGE_SUFFIXES, list_folder
from cascadev.rules import CROPS, SHORT_VIDEO_MODES, check_choice, check_seed, check_whole
from cascadev.video_io import VideoReader

__all__ = ["BadVideoWarning", "VideoClipDataset", "clip_indices"]


class BadVideoWarning(UserWarning):
    """A video of the training list could not be used and was replaced by another one."""


# --------------------------------------------------------------------------------------------
# Frame selection and reading
# --------------------------------------------------------------------------------------------


def clip_indices(
    total: int, num_frames: int, time_stride: int, rng: np.random.Generator, pad: bool = True
) -> np.ndarray | None:
    """Frame indices ``(num_frames,)`` of one clip from a video of ``total`` frames.

    A clip spans ``(num_frames - 1) * time_stride + 1`` frames: indices ``offset + k * time_stride``
    with ``offset`` uniform in ``[0, total - span]``. A shorter video gives, with ``pad``, the frames
    ``0, s, 2s, ...`` that exist, followed by copies of the last of them; without ``pad``, ``None``.
    """
    span = (num_frames - 1) * time_stride + 1
    if total >= span:
        offset = int(rng.integers(0, total - span + 1))
        return offset + time_stride * np.arange(num_frames)
    if not pad or total < 1:
        return None
    available = np.arange(0, total, time_stride)[:num_frames]
    return np.concatenate([available, np.full(num_frames - len(available), available[-1])])


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CascadeVError(f"The frame {path} is not a readable image.") from exc


def _read_frames(path: str, num_frames: int, time_stride: int, rng: np.random.Generator, pad: bool) -> np.ndarray:
    """uint8 ``(num_frames, H, W, 3)`` RGB frames of one clip; CascadeVError when unusable."""
    source = Path(path)
    if source.is_dir():
        files = list_folder(source, IMAGE_SUFFIXES)
        if not files:
            raise CascadeVError(f"The frame folder {source} holds no JPEG or PNG frames.")
        total, reader = len(files), None
    else:
        reader = VideoReader(source, num_threads=1)
        total = reader.num_frames
    idx = clip_indices(total, num_frames, time_stride, rng, pad=pad)
    if idx is None:
        span = (num_frames - 1) * time_stride + 1
        raise CascadeVError(
            f"{source} has {total} frames, fewer than the {span} a clip of {num_frames} frames at "
            f"time_stride {time_stride} needs."
        )
    # Decode each distinct frame once; padded clips repeat the last one.
    unique, inverse = np.unique(idx, return_inverse=True)
    if reader is not None:
        frames = reader.read(unique.tolist())
    else:
        images = [_read_image(files[i]) for i in unique]
        if any(im.shape != images[0].shape for im in images):
            raise CascadeVError(f"The frames in {source} do not all have the same size.")
        frames = np.stack(images)
    return frames[inverse.reshape(-1)]


def _square(
    video: torch.Tensor, size: int, resize: bool, scale: float = 1.0, corner: tuple[float, float] = (0.5, 0.5)
) -> torch.Tensor:
    """``(T, 3, H, W)`` in [-1, 1] -> ``(T, 3, size, size)``: a crop after resizing or padding.

    With ``resize`` the short side becomes ``round(size * scale)``; ``corner`` places the crop (fractions
    of the free room above and left of it; (0.5, 0.5) is the centre crop).
    """
    if resize:
        video = resize_short_side(video, max(size, round(size * scale))).clamp_(-1.0, 1.0)
    else:
        # The release: native resolution; sides shorter than ``size`` are padded with black.
        h, w = video.shape[-2:]
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        if pad_h or pad_w:
            video = torch.nn.functional.pad(
                video,
                (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                value=-1.0,
            )
    return crop(video, size, size, corner).contiguous()


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class VideoClipDataset(Dataset):
    """One clip per video per epoch (``clips_per_video`` clips with a small list), for training.

    Item ``i`` comes from video ``i % len(videos)``; with ``clips_per_video`` k the dataset has k items
    per video, each with its own offset and flip, so a list smaller than a batch can still fill one.

    Item ``i`` is a dict:

    * ``video``: float32 ``(num_frames, 3, sample_size, sample_size)`` in [-1, 1];
    * ``index``: ``i`` (int), the item asked for;
    * ``source_index``: the list position of the video the clip came from (``i % len(videos)`` unless
      substituted);
    * ``substituted``: True when video ``i`` was bad and another video supplied the clip.

    Frames: ``num_frames`` frames ``time_stride`` apart from an offset drawn uniformly among those
    that fit. A video with fewer than ``(num_frames - 1) * time_stride + 1`` frames is, with
    ``short_video="pad"``, read at its frames ``0, s, 2s, ...`` and padded by repeating the last of
    them; with ``short_video="skip"`` (default) it is treated like an unreadable video.

    Space: with ``resize=True`` the short side is resized to ``sample_size`` (bilinear, antialiased)
    and the centre ``sample_size`` square is cut out; with ``resize=False`` (default: the release's
    InternalDataSigma) the centre square is cut at native resolution, sides shorter than
    ``sample_size`` padded with black. With probability ``hflip_prob`` the clip is mirrored left-right
    (default 0.5, the release's). The defaults are the shipped config's ``data`` section.

    Augmentation (nano's recipe): ``scale_range=(lo, hi)`` resizes the short side to ``sample_size``
    times a factor drawn uniformly from that range (``resize=True`` only) and ``crop="random"`` cuts
    the square at a uniformly drawn place instead of the centre. ``gamma_range=(lo, hi)`` brightens or
    darkens the clip: its frames, on [0, 1], are raised to a power drawn log-uniformly from that range
    (below 1 brighter, above 1 darker; black and white stay where they are, nothing is clipped).

    Randomness (offset, flip, scale, crop, gamma) comes from ``numpy.random.default_rng((seed, epoch, i))``, epoch 0 unless
    :meth:`set_epoch` is called. A substitute video uses item ``i``'s generator.

    Bad videos (unreadable, no frames, too short with ``short_video="skip"``) give one
    :class:`BadVideoWarning` each and are counted in ``skipped`` (also listed in ``bad_videos``); the
    item is taken from the next good video of the list instead. Both are per process: every
    DataLoader worker keeps its own, so with workers sum the items' ``substituted`` flags instead.
    """

    def __init__(
        self,
        videos: list[str],
        num_frames: int,
        time_stride: int,
        sample_size: int,
        seed: int = 0,
        *,
        short_video: str = "skip",
        resize: bool = False,
        hflip_prob: float = 0.5,
        clips_per_video: int = 1,
        crop: str = "center",
        scale_range: Sequence[float] = (1.0, 1.0),
        gamma_range: Sequence[float] = (1.0, 1.0),
    ) -> None:
        for name, value in (
            ("clips_per_video", clips_per_video),
            ("num_frames_per_video", num_frames),
            ("time_stride", time_stride),
            ("sample_size", sample_size),
        ):
            check_whole(value, f"The {name} option")
        check_seed(seed)
        check_choice(short_video, SHORT_VIDEO_MODES, "short_video option")
        if not 0.0 <= float(hflip_prob) <= 1.0:
            raise CascadeVError(f"The hflip_prob option must lie in [0, 1], got {hflip_prob}.")
        check_choice(crop, CROPS, "crop option")
        if len(scale_range) != 2 or not 1.0 <= float(scale_range[0]) <= float(scale_range[1]):
            raise CascadeVError(f"The scale_range option must be (lo, hi) with 1 <= lo <= hi, got {scale_range!r}.")
        if len(gamma_range) != 2 or not 0.0 < float(gamma_range[0]) <= float(gamma_range[1]):
            raise CascadeVError(f"The gamma_range option must be (lo, hi) with 0 < lo <= hi, got {gamma_range!r}.")
        if not videos:
            raise CascadeVError("The video_list names no videos.")
        self.videos = [str(v) for v in videos]
        self.num_frames = int(num_frames)
        self.time_stride = int(time_stride)
        self.sample_size = int(sample_size)
        self.seed = int(seed)
        self.short_video = short_video
        self.resize = bool(resize)
        self.hflip_prob = float(hflip_prob)
        self.clips_per_video = int(clips_per_video)
        self.crop = crop
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.gamma_range = (float(gamma_range[0]), float(gamma_range[1]))
        self.epoch = 0
        self.skipped = 0
        self.bad_videos: set[int] = set()

    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video

    def set_epoch(self, epoch: int) -> None:
        """Use the offsets and flips of ``epoch`` from now on (call before building the epoch's iterator).

        DataLoader workers get a copy of the dataset when an epoch's iterator starts, so this takes
        effect in them unless ``persistent_workers=True``.
        """
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))

    def load_clip(self, source: int, rng: np.random.Generator) -> torch.Tensor:
        """The clip ``(num_frames, 3, S, S)`` in [-1, 1] of video ``source``; CascadeVError if unusable."""
        frames = _read_frames(
            self.videos[source],
            self.num_frames,
            self.time_stride,
            rng,
            pad=self.short_video == "pad",
        )
        # Drawn only when augmenting, so that clips of configs without augmentation stay as they were.
        scale = rng.uniform(*self.scale_range) if self.scale_range[0] < self.scale_range[1] else self.scale_range[0]
        corner = (rng.random(), rng.random()) if self.crop == "random" else (0.5, 0.5)
        video = _square(from_uint8(frames), self.sample_size, self.resize, scale, corner)  # (T, 3, S, S)
        if self.hflip_prob > 0 and rng.random() < self.hflip_prob:
            video = video.flip(-1)
        lo, hi = self.gamma_range
        gamma = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if lo < hi else lo
        if gamma != 1.0:
            video = ((video + 1) / 2).clamp_(0.0, 1.0).pow_(gamma) * 2 - 1  # on [0, 1], then back to [-1, 1]
        return video

    def _mark_bad(self, source: int, error: CascadeVError) -> None:
        self.bad_videos.add(source)
        self.skipped += 1
        warnings.warn(
            f"Skipping a training video, another one takes its place: {error}",
            BadVideoWarning,
            stacklevel=3,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        n = len(self.videos)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} clips")
        own = index % n
        for step in range(n):
            source = (own + step) % n
            if source in self.bad_videos:
                continue
            try:
                # Every attempt starts from item ``index``'s own generator state.
                video = self.load_clip(source, self._rng(index))
            except CascadeVError as exc:
                self._mark_bad(source, exc)
                continue
            return {
                "video": video,
                "index": index,
                "source_index": source,
                "substituted": source != own,
            }
        raise CascadeVError(f"None of the {n} videos in video_list could be read.")
