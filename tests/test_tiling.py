"""Windows over frames, tiles over space, and the cross-fade that blends them."""

import pytest
import torch

from cascadev.pipeline import CascadeVPipeline
from cascadev.tiling import Tiling, crossfade_weights, window_starts


@pytest.mark.parametrize(
    "size,window,stride,expected",
    [
        (8, 8, 4, [0]),
        (3, 8, 4, [0]),
        (12, 8, 4, [0, 4]),
        (14, 8, 4, [0, 4, 6]),
        (16, 8, 4, [0, 4, 8]),
        (160, 128, 96, [0, 32]),  # a 1280-pixel side with the released 128-latent tiles
        (300, 128, 96, [0, 96, 172]),
    ],
)
def test_window_starts_follow_the_release(size, window, stride, expected):
    assert window_starts(size, window, stride) == expected


@pytest.mark.parametrize("size,window,stride", [(12, 8, 4), (14, 8, 4), (37, 8, 6), (9, 4, 3), (5, 4, 1)])
def test_crossfade_weights_sum_to_one_everywhere(size, window, stride):
    starts = window_starts(size, window, stride)
    weights = crossfade_weights(size, window, starts)
    total = torch.zeros(size)
    for s, w in zip(starts, weights):
        total[s : s + window] += w
    assert torch.allclose(total, torch.ones(size), atol=1e-6)
    assert (weights >= 0).all()


def test_two_windows_crossfade_linearly_like_the_release():
    weights = crossfade_weights(12, 8, [0, 4])
    ramp = torch.tensor([0, 1 / 3, 2 / 3, 1.0])
    assert torch.allclose(weights[1, :4], ramp) and torch.allclose(weights[0, 4:], 1 - ramp)
    assert torch.equal(weights[0, :4], torch.ones(4)) and torch.equal(weights[1, 4:], torch.ones(4))


class WindowIdModel(torch.nn.Module):
    """Predicts, everywhere in a window, the smallest frame/row/column index it was given (via cond)."""

    lats_per_vid, input_size = 4, 8

    def forward(self, x, t):
        cond = x[:, 4:7]  # channels: frame index, row index, column index
        ids = cond.amin(dim=(2, 3, 4))  # (B, 3)
        out = torch.zeros(x.shape[0], 8, *x.shape[2:])
        out[:, :3] = ids[:, :, None, None, None]
        return out


def _index_condition(frames, height, width):
    t = torch.arange(frames, dtype=torch.float32)[:, None, None].expand(frames, height, width)
    r = torch.arange(height, dtype=torch.float32)[None, :, None].expand(frames, height, width)
    c = torch.arange(width, dtype=torch.float32)[None, None, :].expand(frames, height, width)
    return torch.stack([t, r, c, torch.zeros_like(t)], dim=1)  # (T, 4, H, W)


def test_blended_prediction_is_the_weighted_mix_of_windows_and_tiles():
    pipe = CascadeVPipeline(dit=WindowIdModel(), tile_stride=6, batch_size=3)
    frames, height, width = 6, 8, 14  # windows at frames 0, 2; tiles at columns 0, 6
    tiling = Tiling((frames, height, width), 4, 8, 6)
    cond = _index_condition(frames, height, width)
    noise = pipe._predict(torch.zeros(frames, 4, height, width), cond, torch.tensor(1.0), tiling)
    t_w = crossfade_weights(frames, 4, [0, 2])
    c_w = crossfade_weights(width, 8, [0, 6])
    expect_t = torch.zeros(frames)
    expect_t[0:4] += t_w[0] * 0
    expect_t[2:6] += t_w[1] * 2
    expect_c = torch.zeros(width)
    expect_c[6:14] += c_w[1] * 6
    assert torch.allclose(noise[:, 0, 0, 0], expect_t, atol=1e-6)
    assert torch.allclose(noise[0, 2, 0, :], expect_c, atol=1e-6)
    assert torch.allclose(noise[:, 1], torch.zeros(frames, height, width))  # one tile row: row id 0


class PointwiseModel(torch.nn.Module):
    lats_per_vid, input_size = 4, 8

    def forward(self, x, t):
        return torch.cat([x[:, :4] + 2 * x[:, 4:8], torch.zeros_like(x[:, :4])], dim=1)


@pytest.mark.parametrize("size", [(4, 8, 8), (9, 13, 21), (7, 8, 30)])
def test_blending_reproduces_a_position_independent_model_exactly(size):
    frames, height, width = size
    pipe = CascadeVPipeline(dit=PointwiseModel(), tile_stride=6, batch_size=4)
    x = torch.randn(frames, 4, height, width)
    cond = torch.randn(frames, 16, height, width)
    noise = pipe._predict(x, cond, torch.tensor(3.0), Tiling(size, 4, 8, 6))
    assert torch.allclose(noise, x + 2 * cond[:, :4], atol=1e-5)


@pytest.mark.parametrize(
    "num_frames,segment,stride,chunk", [(20, 8, 6, 4), (37, 16, 12, 5), (5, 8, 6, 4), (16, 16, 12, 4)]
)
def test_segment_stream_blends_in_order_and_hands_out_whole_chunks(num_frames, segment, stride, chunk):
    from cascadev.tiling import SegmentStream, crossfade_weights

    stream = SegmentStream(num_frames, segment, stride, chunk)
    expected = torch.zeros(num_frames, 2)
    weights = crossfade_weights(num_frames, segment, stream.starts)
    out = []
    for k, (s0, s1) in enumerate(stream.spans):
        latent = torch.randn(s1 - s0, 2)
        expected[s0:s1] += latent * weights[k, : s1 - s0, None]
        got = stream.add(k, latent)
        if k + 1 < len(stream.spans):
            assert got.shape[0] % chunk == 0  # the decoder always gets whole chunks...
            assert sum(o.shape[0] for o in out) + got.shape[0] <= stream.starts[k + 1]  # ...of final frames
        out.append(got)
    torch.testing.assert_close(torch.cat(out), expected)
