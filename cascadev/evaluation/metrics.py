"""Per-frame quality metrics with fixed, documented definitions.

Every function takes uint8 RGB frames in [0, 255]: a batch ``(n, H, W, 3)`` (or one frame
``(H, W, 3)``) and returns one float64 value per frame, shape ``(n,)``. Per-video scores are means of
these over the frames, and a data set's score is the mean over its videos (see ``runner``).

* PSNR: ``10 * log10(255**2 / MSE)`` with the MSE of the frame computed in float64 over all pixels and
  channels. Identical frames (MSE 0, infinite PSNR) score :data:`PSNR_CAP_DB`, and every value is
  clipped there, so no mean is ever inf or NaN and identical frames never rank below nearly
  identical ones.
* SSIM: ``skimage.metrics.structural_similarity(ref, rec, channel_axis=-1, data_range=255)``.
* Sharpness: the Laplacian energy of the reconstruction over the original's, per frame: the mean of
  the squared 4-neighbour Laplacian of the luma (BT.601, 0-255, interior pixels), REC over REF. 1 means
  as much fine detail as the original, below 1 blurrier, above 1 noisier or over-sharpened; a flat
  original frame (no Laplacian energy) gives NaN, left out of the means.
* LPIPS: the ``lpips`` package (AlexNet trunk, v0.1 linear heads) on inputs scaled to [-1, 1].
* Temporal flickering (VBench's definition, on the reconstruction alone): the mean absolute difference
  between consecutive frames on the 0-255 scale, averaged over all consecutive pairs of a video;
  score ``(255 - mean) / 255``. See :class:`TemporalFlickering`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from cascadev.errors import CascadeVError, first_line
from cascadev.frames import from_uint8

__all__ = [
    "LPIPS_BACKBONE_FILES",
    "LPIPSMetric",
    "MetricUnavailable",
    "PSNR_CAP_DB",
    "TemporalFlickering",
    "load_lpips",
    "lpips_backbone_path",
    "psnr",
    "sharpness",
    "ssim",
    "temporal_flickering",
]

PSNR_CAP_DB = 100.0
"""PSNR of identical frames, and the ceiling of every PSNR value (dB)."""

# The files torchvision's weight enums download into $TORCH_HOME/hub/checkpoints/ for lpips' trunks.
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
_TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"


class MetricUnavailable(CascadeVError):
    """A metric cannot run here (missing package or weights); the message says what to provide."""


def _batch(frames: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} needs uint8 (n, H, W, 3) frames, got {arr.dtype} {arr.shape}")
    return arr


def _pair(ref: np.ndarray, rec: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    ref, rec = _batch(ref, what), _batch(rec, what)
    if ref.shape != rec.shape:
        raise ValueError(f"{what} needs frames of equal shape, got {ref.shape} and {rec.shape}")
    return ref, rec


# --------------------------------------------------------------------------------------------
# PSNR and SSIM
# --------------------------------------------------------------------------------------------


def psnr(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame pair, data range 255, capped at :data:`PSNR_CAP_DB`: float64 (n,)."""
    ref, rec = _pair(ref, rec, "psnr")
    out = np.empty(ref.shape[0], dtype=np.float64)
    for i in range(ref.shape[0]):  # one frame at a time: float64 copies of a whole chunk are large
        diff = ref[i].astype(np.float64) - rec[i].astype(np.float64)
        mse = float(np.mean(diff * diff))
        out[i] = PSNR_CAP_DB if mse == 0.0 else min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse))
    return out


def ssim(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """scikit-image SSIM of each frame pair (channel_axis=-1, data_range=255): float64 (n,).

    scikit-image's 7x7 window needs frames at least 7 pixels high and wide.
    """
    from skimage.metrics import structural_similarity

    ref, rec = _pair(ref, rec, "ssim")
    return np.array(
        [structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in zip(ref, rec)],
        dtype=np.float64,
    )


def laplacian_energy(frames: np.ndarray) -> np.ndarray:
    """Mean squared 4-neighbour Laplacian of each frame's luma (interior pixels): float64 (n,)."""
    x = _batch(frames, "sharpness").astype(np.float64)
    luma = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    lap = luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1] + luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] - 4.0 * luma[:, 1:-1, 1:-1]
    return np.mean(lap * lap, axis=(1, 2))


def sharpness(ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Laplacian energy of ``rec`` over that of ``ref``, per frame: float64 (n,); NaN for a flat ``ref``."""
    ref, rec = _pair(ref, rec, "sharpness")
    energy_ref, energy_rec = laplacian_energy(ref), laplacian_energy(rec)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(energy_ref > 0, energy_rec / np.where(energy_ref > 0, energy_ref, 1.0), np.nan)


# --------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------


def lpips_backbone_path(net: str = "alex") -> Path:
    """Where torchvision keeps (and lpips expects) the ImageNet weights of the ``net`` trunk."""
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def _check_linear_heads(model: torch.nn.Module, package_dir: Path, net: str) -> None:
    """lpips loads its heads with ``strict=False``: make sure every shipped weight really arrived."""
    path = package_dir / "weights" / "v0.1" / f"{net}.pth"
    try:
        shipped = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricUnavailable(
            f"lpips: the package's linear heads {path} cannot be read ({first_line(exc)}); reinstall lpips."
        ) from exc
    state = model.state_dict()
    heads = [k for k in shipped if k.startswith("lin")]
    if not heads or any(k not in state or not torch.equal(state[k], shipped[k]) for k in heads):
        raise MetricUnavailable(f"lpips: the linear heads in {path} did not load into the model; reinstall lpips.")


def load_lpips(
    net: str = "alex", device: str | torch.device = "cpu", *, random_backbone: bool = False
) -> torch.nn.Module:
    """The lpips package's LPIPS model (v0.1 linear heads shipped with the package), in eval mode.

    Nothing is downloaded: the trunk's ImageNet weights must already be at
    :func:`lpips_backbone_path` (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` for
    AlexNet), else :class:`MetricUnavailable` says which file to put where. ``random_backbone=True``
    keeps the trunk randomly initialised (tests only); the linear heads are the package's either way.
    """
    if net not in LPIPS_BACKBONE_FILES:
        raise CascadeVError(f"Unknown LPIPS network {net!r}; choose one of {', '.join(LPIPS_BACKBONE_FILES)}.")
    try:
        import lpips
    except Exception as exc:
        raise MetricUnavailable(
            f"the lpips package cannot be imported ({first_line(exc)}); pip install lpips."
        ) from exc
    backbone = lpips_backbone_path(net)
    if not random_backbone and not backbone.is_file():
        raise MetricUnavailable(
            f"LPIPS needs torchvision's {net} weights: download {_TORCHVISION_MODELS_URL}"
            f"{backbone.name} and save it as {backbone} (nothing is downloaded automatically)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's "pretrained=" deprecation, lpips' notes
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
    except Exception as exc:
        raise MetricUnavailable(
            f"LPIPS could not load {backbone} ({first_line(exc)}); replace it with "
            f"{_TORCHVISION_MODELS_URL}{backbone.name}."
        ) from exc
    _check_linear_heads(model, Path(lpips.__file__).parent, net)
    return model.to(device).eval()


class LPIPSMetric:
    """LPIPS of frame pairs, batched on ``model``'s device.

    ``__call__(ref, rec)`` takes uint8 (n, H, W, 3) frames, feeds the model float32 (b, 3, H, W) in
    [-1, 1] in batches of at most ``batch_size`` frames, and returns float64 (n,).
    """

    def __init__(self, model: torch.nn.Module, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = int(batch_size)
        param = next(model.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")

    def _to_model(self, frames: np.ndarray) -> torch.Tensor:
        return from_uint8(frames).to(self.device)  # (n, H, W, 3) uint8 -> (n, 3, H, W) in [-1, 1]

    def __call__(self, ref: np.ndarray, rec: np.ndarray) -> np.ndarray:
        ref, rec = _pair(ref, rec, "lpips")
        values = []
        with torch.inference_mode():
            for i in range(0, ref.shape[0], self.batch_size):
                a = self._to_model(ref[i : i + self.batch_size])
                b = self._to_model(rec[i : i + self.batch_size])
                values.append(self.model(a, b).reshape(-1).double().cpu())
        return torch.cat(values).numpy() if values else np.zeros(0, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Temporal flickering
# --------------------------------------------------------------------------------------------


class TemporalFlickering:
    """VBench's temporal flickering of one video, fed a chunk of frames at a time.

    For each pair of consecutive frames, the mean absolute difference over all pixels and channels
    (0-255 scale); the video's score is ``(255 - mean of those pair means) / 255``, 1.0 for a still
    video. Differences are summed exactly in integers (VBench takes a float32 mean), so the values
    agree with VBench's to float32 rounding. Only the last frame of a chunk is kept between chunks.
    """

    def __init__(self) -> None:
        self._last: np.ndarray | None = None
        self._pair_means: list[float] = []

    def update(self, frames: np.ndarray) -> None:
        """Append uint8 frames (n, H, W, 3) (or one (H, W, 3) frame) of the video, in order."""
        frames = _batch(frames, "temporal flickering")
        for frame in frames:
            if self._last is not None:
                if frame.shape != self._last.shape:
                    raise ValueError("temporal flickering needs frames of one size")
                diff = np.abs(frame.astype(np.int16) - self._last.astype(np.int16))
                self._pair_means.append(int(diff.sum(dtype=np.int64)) / diff.size)
            self._last = frame.copy()

    @property
    def num_pairs(self) -> int:
        return len(self._pair_means)

    def score(self) -> float | None:
        """The video's score in [0, 1], or None when it had fewer than two frames."""
        if not self._pair_means:
            return None
        return (255.0 - float(np.mean(self._pair_means))) / 255.0


def temporal_flickering(frames: np.ndarray) -> float | None:
    """Temporal flickering score of a whole video, uint8 (T, H, W, 3); None when T < 2."""
    meter = TemporalFlickering()
    meter.update(frames)
    return meter.score()
