"""Tests for cascadev.frames: the (T, 3, H, W) layout, range conversion, resizing, padding, cropping, quantising.

The references for the resizing helpers are the implementations they replaced (video_io's
resize_short_side, evaluation's resize_frames, the bicubic baseline), written out here with
torch.nn.functional so a change of filter, rounding or layout shows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cascadev.errors import CascadeVError
from cascadev.frames import (
    bicubic_round_trip,
    crop,
    frames_to_uint8,
    from_uint8,
    pad_to,
    pad_to_multiple,
    padded_size,
    resize,
    resize_short_side,
    resize_uint8,
    short_side_size,
    to_uint8,
)


def _ramp_video(t: int, h: int, w: int) -> np.ndarray:
    """uint8 (t, h, w, 3) with distinct, reproducible values in every frame, row, column and channel."""
    rng = np.random.default_rng(1234)
    return rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Value ranges and the layout
# ---------------------------------------------------------------------------------------------


def test_from_uint8_and_to_uint8_round_trip_every_level():
    values = np.arange(256, dtype=np.uint8)
    frames = np.stack(np.broadcast_arrays(values[None, :, None], values[None, None, :], 7), axis=-1)
    frames = np.repeat(frames.astype(np.uint8), 2, axis=0)  # (2, 256, 256, 3)
    x = from_uint8(frames)
    assert x.shape == (2, 3, 256, 256) and x.dtype == torch.float32  # (T, 3, H, W)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(x[1, 0, :, 0], torch.from_numpy(values).float() / 127.5 - 1)  # red varies down
    assert torch.equal(x[1, 1, 0, :], torch.from_numpy(values).float() / 127.5 - 1)  # green across
    assert torch.all(x[:, 2] == 7 / 127.5 - 1)  # blue constant
    np.testing.assert_array_equal(to_uint8(x), frames)
    np.testing.assert_array_equal(to_uint8(from_uint8(torch.from_numpy(frames))), frames)


def test_layout_is_checked_at_the_edge():
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        from_uint8(np.zeros((2, 3, 8, 8), dtype=np.uint8))  # already channels-first
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        from_uint8(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        to_uint8(torch.zeros(3, 5, 8, 8))  # the old (3, T, H, W) layout


def test_quantising_rounds_or_truncates_and_clamps():
    levels = torch.tensor([0.0, 0.4, 0.5, 0.6, 254.4, 254.87, 255.0])
    x = (levels / 127.5 - 1).reshape(1, 1, 1, -1).expand(1, 3, 1, -1)
    rounded = to_uint8(x)[0, 0, :, 0]
    truncated = to_uint8(x, truncate=True)[0, 0, :, 0]
    np.testing.assert_array_equal(rounded, [0, 0, 0, 1, 254, 255, 255])  # 0.5 -> 0: round half to even
    np.testing.assert_array_equal(truncated, [0, 0, 0, 0, 254, 254, 255])
    over = torch.full((1, 3, 2, 2), 3.0)
    assert to_uint8(over).min() == 255 and to_uint8(over, truncate=True).min() == 255
    assert to_uint8(-over).max() == 0 and to_uint8(-over, truncate=True).max() == 0


def test_frames_to_uint8_crops_padding_back_then_quantises():
    video = _ramp_video(3, 13, 21)
    padded, (h, w) = pad_to_multiple(from_uint8(video), 8)
    assert padded.shape == (3, 3, 16, 24)
    np.testing.assert_array_equal(frames_to_uint8(padded, h, w), video)
    np.testing.assert_array_equal(frames_to_uint8(padded, h, w, truncate=True)[..., :2, :2, :], video[..., :2, :2, :])


# ---------------------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------------------


def test_short_side_size_rounds_the_long_side():
    assert short_side_size(47, 65, 32) == (32, 44)  # 65 * 32 / 47 = 44.26
    assert short_side_size(100, 30, 15) == (50, 15)
    assert short_side_size(2, 5, 1) == (1, 3)  # 2.5 rounds half up
    assert short_side_size(64, 1, 1) == (64, 1) and short_side_size(1, 1000, 1) == (1, 1000)


def test_resize_short_side_shapes():
    landscape = torch.rand(4, 3, 47, 65)
    assert resize_short_side(landscape, 32).shape == (4, 3, 32, 44)  # 65 * 32 / 47 = 44.26
    assert resize_short_side(landscape, 94).shape == (4, 3, 94, 130)
    portrait = torch.rand(2, 3, 100, 30)
    assert resize_short_side(portrait, 15).shape == (2, 3, 50, 15)
    assert resize_short_side(landscape, None) is landscape
    assert resize_short_side(torch.rand(3, 5, 47, 65), 32).shape == (3, 5, 32, 44)  # any leading dims
    with pytest.raises(CascadeVError):
        resize_short_side(landscape, 0)


def test_resize_short_side_values():
    flat = torch.full((1, 3, 40, 60), 0.25)
    assert torch.allclose(resize_short_side(flat, 20), torch.full((1, 3, 20, 30), 0.25))
    # Every frame and channel is an independent image, whatever the layout of the leading dims.
    tchw = torch.rand(2, 3, 16, 24)
    expected = torch.nn.functional.interpolate(tchw, size=(8, 12), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(resize_short_side(tchw, 8), expected)
    cthw = tchw.permute(1, 0, 2, 3)
    torch.testing.assert_close(resize_short_side(cthw, 8), expected.permute(1, 0, 2, 3))
    # Antialiasing: a one-pixel checkerboard averages to grey instead of aliasing.
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2
    out = resize_short_side(checker.float()[None, None], 16)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.02)


def test_resize_short_side_equals_the_previous_implementation():
    x = from_uint8(_ramp_video(5, 47, 65))
    # video_io.resize_short_side before frames.py: leading dims folded into channels, bilinear, antialiased.
    old = F.interpolate(
        x.reshape(1, -1, 47, 65), size=(32, 44), mode="bilinear", align_corners=False, antialias=True
    ).reshape(5, 3, 32, 44)
    torch.testing.assert_close(resize_short_side(x, 32), old)
    up = F.interpolate(
        x.reshape(1, -1, 47, 65), size=(94, 130), mode="bilinear", align_corners=False, antialias=True
    ).reshape(5, 3, 94, 130)
    torch.testing.assert_close(resize_short_side(x, 94), up)
    half = resize_short_side(x.half(), 32)  # computed in float32, returned in float16
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), old, atol=2e-3, rtol=0)


def test_resize_keeps_four_dims_as_they_are_and_folds_others():
    x = torch.rand(3, 4, 10, 14)
    # Non-antialiased bilinear (the preview's upsampling, the condition's x4): interpolate's own result.
    torch.testing.assert_close(
        resize(x, (20, 28)), F.interpolate(x, size=(20, 28), mode="bilinear", align_corners=False)
    )
    five = torch.rand(2, 3, 4, 10, 14)
    torch.testing.assert_close(
        resize(five, (5, 7), "bicubic", antialias=True)[1],
        F.interpolate(five[1], size=(5, 7), mode="bicubic", align_corners=False, antialias=True),
    )
    area = resize(x, (5, 7), mode="area")
    torch.testing.assert_close(area, F.interpolate(x, size=(5, 7), mode="area"))
    with pytest.raises(TypeError):
        resize(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), (2, 2))


def test_resize_uint8_equals_evaluations_previous_resize():
    video = _ramp_video(4, 30, 50)
    # evaluation.runner.resize_frames before frames.py: on the 0-255 scale, bilinear, antialiased, rounded.
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(18, 24), mode="bilinear", align_corners=False, antialias=True)
    old = x.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(resize_uint8(video, 18, 24), old)
    assert resize_uint8(video, 30, 50) is video  # already that size: untouched
    nearest = resize_uint8(video, 60, 100, mode="nearest-exact", antialias=False)
    np.testing.assert_array_equal(nearest[:, ::2, ::2], video)  # each pixel a 2x2 block


def test_bicubic_round_trip_equals_the_previous_baseline():
    video = _ramp_video(2, 64, 96)
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float()
    small = F.interpolate(x, size=(2, 3), mode="bicubic", align_corners=False, antialias=True)
    big = F.interpolate(small, size=(64, 96), mode="bicubic", align_corners=False)
    old = big.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = bicubic_round_trip(video, (2, 3))
    assert out.shape == video.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, old)


# ---------------------------------------------------------------------------------------------
# Padding and cropping
# ---------------------------------------------------------------------------------------------


def test_pad_to_multiple():
    frames = torch.rand(3, 4, 47, 65)
    padded, (h, w) = pad_to_multiple(frames, 32)
    assert padded.shape == (3, 4, 64, 96) and (h, w) == (47, 65)
    torch.testing.assert_close(padded[..., :h, :w], frames, rtol=0, atol=0)
    # Replicate padding: the new rows/columns repeat the last real ones.
    torch.testing.assert_close(padded[..., 60, :w], frames[..., 46, :], rtol=0, atol=0)
    torch.testing.assert_close(padded[..., :h, 90], frames[..., :, 64], rtol=0, atol=0)
    tchw = torch.rand(5, 3, 33, 32)
    padded2, size2 = pad_to_multiple(tchw, 8)
    assert padded2.shape == (5, 3, 40, 32) and size2 == (33, 32)
    same, _ = pad_to_multiple(torch.rand(2, 3, 64, 32), 32)
    assert same.shape == (2, 3, 64, 32)


def test_pad_to_then_crop_is_the_identity():
    x = torch.rand(2, 3, 5, 7)
    assert padded_size(5, 7, 4) == (8, 8) and padded_size(8, 1, 4) == (8, 4)
    padded = pad_to(x, 9, 8)
    assert padded.shape == (2, 3, 9, 8)
    assert torch.equal(crop(padded, 5, 7), x)  # padding copies pixels: exact
    assert torch.equal(padded[:, :, 8, 7], x[:, :, 4, 6])  # the corner repeats the last pixel
    assert pad_to(x, 3, 3) is x  # never shrinks


def test_crop_places_its_window():
    x = torch.arange(5 * 6).reshape(1, 5, 6).float()
    assert torch.equal(crop(x, 2, 2), x[..., :2, :2])
    assert torch.equal(crop(x, 2, 2, (0.5, 0.5)), x[..., 1:3, 2:4])  # int(3 * 0.5), int(4 * 0.5)
    assert torch.equal(crop(x, 2, 2, (1.0, 1.0)), x[..., 3:, 4:])
