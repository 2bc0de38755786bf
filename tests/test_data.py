"""Training data (cascadev.data): video lists, clip sampling, bad videos, DataLoader workers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from videos import write_test_video

from cascadev.data import BadVideoWarning, VideoClipDataset, clip_indices
from cascadev.errors import CascadeVError
from cascadev.inputs import read_video_list
from cascadev.video_io import write_video

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _coded_frames(num_frames: int, height: int = 16, width: int = 32) -> np.ndarray:
    """Uniform frames whose red level is 5 * frame index (green counts down), uint8 (T, H, W, 3); T <= 52."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for k in range(num_frames):
        frames[k, ..., 0] = 5 * k
        frames[k, ..., 1] = 255 - 5 * k
        frames[k, ..., 2] = 100
    return frames


def _write_coded_video(path: Path, num_frames: int, height: int = 16, width: int = 32) -> Path:
    # libx264rgb at crf 0 is lossless RGB: decoded values equal the written ones exactly.
    write_video(path, _coded_frames(num_frames, height, width), 24, codec="libx264rgb", crf=0)
    return path


def _frame_ids(video: torch.Tensor) -> list[int]:
    """Decode the frame indices from a (T, 3, S, S) clip of coded frames."""
    red = (video[:, 0].mean(dim=(1, 2)) + 1.0) * 127.5
    ids = torch.round(red / 5).long().tolist()
    # Every pixel of a coded frame holds the same value, whatever resize or crop happened.
    assert torch.allclose(video[:, 0], video[:, 0][:, :1, :1].expand_as(video[:, 0]), atol=1e-4)
    assert torch.allclose(red, torch.tensor(ids, dtype=red.dtype) * 5, atol=1e-3)
    return ids


def _bad_file(path: Path) -> Path:
    path.write_bytes(b"this is not a video" * 50)
    return path


# --------------------------------------------------------------------------------------------
# video lists
# --------------------------------------------------------------------------------------------


def test_text_list_comments_blank_lines_and_relative_paths(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    listing = sub / "train.txt"
    listing.write_text(
        f"# my videos\na.mp4\n\n   clips/b.mp4   \n{tmp_path / 'abs.mp4'}\n  # indented comment\nframes_dir\n"
    )
    videos = read_video_list([str(listing)])
    assert videos == [
        str(sub.resolve() / "a.mp4"),
        str(sub.resolve() / "clips" / "b.mp4"),
        str(tmp_path / "abs.mp4"),
        str(sub.resolve() / "frames_dir"),
    ]


def test_json_lists_both_forms_and_several_files(tmp_path):
    strings = tmp_path / "s.json"
    strings.write_text(json.dumps(["x.mp4", "/data/y.mp4"]))
    objects = tmp_path / "o.json"
    objects.write_text(json.dumps([{"path": "z.mp4", "caption": "c"}, {"video": "w"}]))
    text = tmp_path / "t.txt"
    text.write_text("v.mp4\n")
    videos = read_video_list([str(strings), str(objects), str(text)])
    base = tmp_path.resolve()
    assert videos == [
        str(base / "x.mp4"),
        "/data/y.mp4",
        str(base / "z.mp4"),
        str(base / "w"),
        str(base / "v.mp4"),
    ]


def test_list_errors(tmp_path):
    with pytest.raises(CascadeVError, match="missing.txt does not exist"):
        read_video_list([str(tmp_path / "missing.txt")])
    with pytest.raises(CascadeVError, match=f"The video list {tmp_path} is not a file"):
        read_video_list([str(tmp_path)])
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(CascadeVError, match="name no videos"):
        read_video_list([str(empty)])
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    with pytest.raises(CascadeVError, match="broken.json is not valid JSON"):
        read_video_list([str(broken)])
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"caption": "no path"}]))
    with pytest.raises(CascadeVError, match="Entry 0 of the video list"):
        read_video_list([str(wrong)])
    numbered = tmp_path / "numbered.json"
    numbered.write_text(json.dumps([{"path": "a.mp4", "caption": ["a cat", "a dog"]}]))
    assert read_video_list([str(numbered)]) == [str(tmp_path.resolve() / "a.mp4")]  # captions: the store's alone
    from cascadev.latent_store import read_captions

    with pytest.raises(CascadeVError, match="Entry 0 of the video list .* has a caption that is not a string"):
        read_captions([str(numbered)])
    with pytest.raises(CascadeVError, match="names no list file"):
        read_video_list([])


# --------------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------------


def test_clip_shape_and_range(tmp_path):
    path = tmp_path / "v.mp4"
    write_test_video(path, 20, 48, 64)
    ds = VideoClipDataset([str(path)], num_frames=4, time_stride=2, sample_size=32, seed=0)
    item = ds[0]
    video = item["video"]
    assert video.shape == (4, 3, 32, 32) and video.dtype == torch.float32
    assert float(video.min()) >= -1.0 and float(video.max()) <= 1.0
    assert float(video.std()) > 0.1  # real content, not a constant
    assert item["index"] == 0 and item["source_index"] == 0 and item["substituted"] is False


def test_frames_are_at_the_stride_from_a_random_offset(tmp_path):
    path = _write_coded_video(tmp_path / "coded.mp4", 30)
    ds = VideoClipDataset([str(path)] * 6, num_frames=4, time_stride=3, sample_size=16, seed=7)
    offsets = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ids = _frame_ids(ds[i]["video"])
            offset = ids[0]
            assert ids == [offset, offset + 3, offset + 6, offset + 9]
            assert 0 <= offset <= 30 - 10
            offsets.add(offset)
    assert len(offsets) >= 5  # the offset really is drawn, not fixed


def test_sampling_is_deterministic_per_seed_epoch_and_index(tmp_path):
    path = _write_coded_video(tmp_path / "coded.mp4", 50)
    ds = VideoClipDataset([str(path)] * 8, num_frames=2, time_stride=1, sample_size=16, seed=3)
    first = [_frame_ids(ds[i]["video"])[0] for i in range(8)]
    again = [_frame_ids(ds[i]["video"])[0] for i in reversed(range(8))][::-1]
    assert first == again  # the order of reads does not matter
    ds.set_epoch(1)
    epoch1 = [_frame_ids(ds[i]["video"])[0] for i in range(8)]
    assert epoch1 != first
    ds.set_epoch(0)
    assert [_frame_ids(ds[i]["video"])[0] for i in range(8)] == first
    other_seed = VideoClipDataset([str(path)] * 8, num_frames=2, time_stride=1, sample_size=16, seed=4)
    assert [_frame_ids(other_seed[i]["video"])[0] for i in range(8)] != first


def test_clip_indices_rules():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = clip_indices(10, 4, 3, rng)  # span exactly 10: the only offset is 0
        assert idx.tolist() == [0, 3, 6, 9]
    # 8 frames: 0, 3, 6 exist; the clip repeats frame 6 (the last sampled), not frame 7.
    assert clip_indices(8, 4, 3, rng).tolist() == [0, 3, 6, 6]
    assert clip_indices(1, 3, 2, rng).tolist() == [0, 0, 0]
    assert clip_indices(7, 4, 3, rng, pad=False) is None


def test_short_video_is_padded_with_its_last_sampled_frame(tmp_path):
    path = _write_coded_video(tmp_path / "short.mp4", 8)
    ds = VideoClipDataset([str(path)], num_frames=4, time_stride=3, sample_size=16, short_video="pad")
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert _frame_ids(ds[0]["video"]) == [0, 3, 6, 6]


def test_short_video_skip_mode_substitutes_and_warns(tmp_path):
    short = _write_coded_video(tmp_path / "short.mp4", 7)
    long = _write_coded_video(tmp_path / "long.mp4", 12)
    ds = VideoClipDataset([str(short), str(long)], num_frames=4, time_stride=3, sample_size=16, short_video="skip")
    with pytest.warns(BadVideoWarning, match="short.mp4 has 7 frames"):
        item = ds[0]
    assert item["substituted"] is True and item["source_index"] == 1 and item["index"] == 0
    assert ds.skipped == 1 and ds.bad_videos == {0}


def test_frame_folder_reads_only_the_needed_frames_in_natural_order(tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = _coded_frames(12, 20, 30)
    for k, frame in enumerate(frames):
        # Not zero-padded: plain string sorting would put frame_10 before frame_2.
        suffix = ".png" if k % 2 else ".jpg"
        if suffix == ".png":
            Image.fromarray(frame).save(folder / f"frame_{k}.png")
        else:
            Image.fromarray(frame).save(folder / f"frame_{k}.jpg", quality=100)
    (folder / "notes.txt").write_text("ignored")

    import cascadev.data as data

    opened = []
    real = data._read_image
    monkeypatch.setattr(data, "_read_image", lambda p: opened.append(p.name) or real(p))
    ds = VideoClipDataset([str(folder)], num_frames=3, time_stride=4, sample_size=16, seed=1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        opened.clear()
        video = ds[0]["video"]
        assert video.shape == (3, 3, 16, 16)
        # JPEG keeps a uniform frame's level within a unit or two; levels are 5 apart.
        ids = ((video[:, 0].mean(dim=(1, 2)) + 1) * 127.5 / 5).round().long().tolist()
        offset = ids[0]
        assert ids == [offset, offset + 4, offset + 8] and 0 <= offset <= 3
        # Only the clip's frames were opened, each once.
        assert sorted(opened) == sorted(f"frame_{k}{'.png' if k % 2 else '.jpg'}" for k in ids)


def test_frame_folder_offsets_and_empty_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(_coded_frames(12)):
        Image.fromarray(frame).save(folder / f"{k}.png")
    ds = VideoClipDataset([str(folder)] * 10, num_frames=3, time_stride=4, sample_size=16, seed=1)
    seen = set()
    for i in range(10):
        ids = _frame_ids(ds[i]["video"])
        assert ids[1] - ids[0] == 4 and ids[2] - ids[1] == 4 and 0 <= ids[0] <= 3
        seen.add(ids[0])
    assert len(seen) > 1
    empty = tmp_path / "empty"
    empty.mkdir()
    only_empty = VideoClipDataset([str(empty)], num_frames=2, time_stride=1, sample_size=8)
    with pytest.warns(BadVideoWarning, match="holds no JPEG or PNG frames"):
        with pytest.raises(CascadeVError, match="None of the 1 videos in video_list could be read"):
            only_empty[0]


def test_resize_short_side_then_centre_crop(tmp_path):
    # Left half dark, right half bright, on a 16x64 video: after resizing to 32x128 and cropping the
    # centre 32x32, both halves remain, split in the middle.
    frames = np.zeros((3, 16, 64, 3), np.uint8)
    frames[..., 32:, :] = 200
    path = tmp_path / "halves.mp4"
    write_video(path, frames, 24, codec="libx264rgb", crf=0)
    ds = VideoClipDataset([str(path)], num_frames=2, time_stride=1, sample_size=32, resize=True, hflip_prob=0.0)
    video = ds[0]["video"]
    assert video.shape == (2, 3, 32, 32)
    assert torch.allclose(video[:, :, :, :14], torch.tensor(-1.0), atol=1e-4)
    assert torch.allclose(video[:, :, :, 18:], torch.tensor(200 / 127.5 - 1), atol=1e-4)


def test_release_mode_crops_at_native_size_and_pads_with_black(tmp_path):
    frames = np.full((2, 16, 64, 3), 200, np.uint8)
    frames[:, :, 30:34] = 50  # a centre stripe, 4 pixels wide at native resolution
    path = tmp_path / "wide.mp4"
    write_video(path, frames, 24, codec="libx264rgb", crf=0)
    ds = VideoClipDataset([str(path)], num_frames=2, time_stride=1, sample_size=24, resize=False)
    video = ds[0]["video"]
    assert video.shape == (2, 3, 24, 24)
    # Height 16 < 24: 4 black rows above and below.
    assert torch.equal(video[:, :, :4], torch.full_like(video[:, :, :4], -1.0))
    assert torch.equal(video[:, :, 20:], torch.full_like(video[:, :, 20:], -1.0))
    body = video[:, :, 4:20]
    level = torch.tensor(50 / 127.5 - 1)
    # Columns 30..33 of the frame land at 10..13 of the crop (left edge 20), unscaled.
    assert torch.allclose(body[..., 10:14], level, atol=1e-6)
    assert torch.allclose(body[..., :10], torch.tensor(200 / 127.5 - 1), atol=1e-6)


def test_hflip_mirrors_deterministically(tmp_path):
    frames = np.zeros((2, 16, 32, 3), np.uint8)
    frames[..., 16:, :] = 255
    path = tmp_path / "lr.mp4"
    write_video(path, frames, 24, codec="libx264rgb", crf=0)
    plain = VideoClipDataset([str(path)] * 16, num_frames=2, time_stride=1, sample_size=16)
    always = VideoClipDataset([str(path)] * 16, num_frames=2, time_stride=1, sample_size=16, hflip_prob=1.0)
    assert torch.equal(always[0]["video"], plain[0]["video"].flip(-1))
    half = VideoClipDataset([str(path)] * 16, num_frames=2, time_stride=1, sample_size=16, hflip_prob=0.5)
    flipped = [bool(half[i]["video"][0, 0, 0, 0] > 0) for i in range(16)]
    assert 0 < sum(flipped) < 16
    assert flipped == [bool(half[i]["video"][0, 0, 0, 0] > 0) for i in range(16)]


# --------------------------------------------------------------------------------------------
# bad videos
# --------------------------------------------------------------------------------------------


def test_corrupt_video_is_skipped_once_with_a_warning_and_counted(tmp_path):
    good = _write_coded_video(tmp_path / "good.mp4", 12)
    bad = _bad_file(tmp_path / "bad.mp4")
    missing = tmp_path / "missing.mp4"
    ds = VideoClipDataset([str(good), str(bad), str(missing), str(good)], num_frames=2, time_stride=1, sample_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(4)] + [ds[1], ds[2]]  # bad ones asked for twice
    bad_warnings = [w for w in caught if issubclass(w.category, BadVideoWarning)]
    assert len(bad_warnings) == 2  # one per bad video, not per request
    messages = " ".join(str(w.message) for w in bad_warnings)
    assert "bad.mp4" in messages and "missing.mp4" in messages
    assert ds.skipped == 2 and ds.bad_videos == {1, 2}
    assert [it["substituted"] for it in items] == [False, True, True, False, True, True]
    # The next good video of the list stands in (deterministically).
    assert [it["source_index"] for it in items] == [0, 3, 3, 3, 3, 3]
    for it in items:
        assert it["video"].shape == (2, 3, 16, 16)


def test_all_videos_unreadable_is_a_clear_error(tmp_path):
    paths = [str(_bad_file(tmp_path / f"bad{i}.mp4")) for i in range(3)]
    ds = VideoClipDataset(paths, num_frames=2, time_stride=1, sample_size=16)
    with pytest.warns(BadVideoWarning):
        with pytest.raises(CascadeVError, match="None of the 3 videos in video_list could be read"):
            ds[1]
    # Later requests fail at once, without warning again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CascadeVError, match="None of the 3 videos"):
            ds[0]


def test_option_checks(tmp_path):
    with pytest.raises(CascadeVError, match="time_stride"):
        VideoClipDataset(["a.mp4"], num_frames=2, time_stride=0, sample_size=16)
    with pytest.raises(CascadeVError, match="short_video"):
        VideoClipDataset(["a.mp4"], num_frames=2, time_stride=1, sample_size=16, short_video="cut")
    with pytest.raises(CascadeVError, match="no videos"):
        VideoClipDataset([], num_frames=2, time_stride=1, sample_size=16)


# --------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------


def test_dataloader_with_two_workers_matches_single_process(tmp_path):
    good = [str(_write_coded_video(tmp_path / f"v{i}.mp4", 20 + i)) for i in range(4)]
    bad = str(_bad_file(tmp_path / "bad.mp4"))
    videos = good[:2] + [bad] + good[2:]
    ds = VideoClipDataset(videos, num_frames=3, time_stride=2, sample_size=16, seed=5)
    ds.set_epoch(2)

    def collect(num_workers):
        loader = DataLoader(ds, batch_size=2, num_workers=num_workers, drop_last=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadVideoWarning)
            return list(loader)

    multi = collect(2)
    single = collect(0)
    assert len(multi) == 2  # 5 items, batch 2, last partial batch dropped
    for a, b in zip(multi, single, strict=True):
        assert a["video"].shape == (2, 3, 3, 16, 16)
        assert torch.equal(a["video"], b["video"])
        assert torch.equal(a["index"], b["index"])
    substituted = torch.cat([b["substituted"] for b in multi])
    assert substituted.tolist() == [False, False, True, False]
    # The bad video's slot is filled by the next good one, in the workers as in the main process.
    assert torch.cat([b["source_index"] for b in multi]).tolist() == [0, 1, 3, 3]


AUGMENTED = dict(num_frames=2, time_stride=1, sample_size=16, resize=True, hflip_prob=0.0)


def _ramp_video(tmp_path):
    """Two lossless 16x64 frames of a left-to-right grey ramp, 0 to 255."""
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, None, :, None], (2, 16, 1, 3))
    path = tmp_path / "ramp.mp4"
    write_video(path, ramp, 24, codec="libx264rgb", crf=0)
    return path


def test_random_crops_and_scales_are_seeded_augmentation(tmp_path):
    # A ramp: a crop's first column tells where it was cut, its span how much it was scaled.
    path, common = _ramp_video(tmp_path), AUGMENTED
    centre = VideoClipDataset([str(path)] * 8, **common)[0]["video"]
    random = VideoClipDataset([str(path)] * 8, crop="random", **common)
    lefts = [float(random[i]["video"][0, 0, 8, 0]) for i in range(8)]
    assert len({round(v, 3) for v in lefts}) > 4  # the crops are cut at different places
    assert lefts == [float(random[i]["video"][0, 0, 8, 0]) for i in range(8)]  # and again at the same ones
    assert min(lefts) < float(centre[0, 0, 8, 0]) < max(lefts)
    zoomed = VideoClipDataset([str(path)], scale_range=(2.0, 2.0), **common)[0]["video"]
    span = lambda v: float(v[0, 0, 8, -1] - v[0, 0, 8, 0])  # noqa: E731
    assert zoomed.shape == centre.shape
    assert span(zoomed) == pytest.approx(span(centre) / 2, rel=0.1)  # short side 32 instead of 16
    with pytest.raises(CascadeVError, match="scale_range"):
        VideoClipDataset([str(path)], scale_range=(0.5, 1.0), **common)
    with pytest.raises(CascadeVError, match="crop"):
        VideoClipDataset([str(path)], crop="corner", **common)


def test_gamma_augmentation_brightens_or_darkens_whole_clips(tmp_path):
    path, common = _ramp_video(tmp_path), AUGMENTED
    plain = VideoClipDataset([str(path)] * 8, **common)[0]["video"]
    # A fixed gamma draws nothing: the same clip, each value (on [0, 1]) squared.
    darker = VideoClipDataset([str(path)] * 8, gamma_range=(2.0, 2.0), **common)[0]["video"]
    assert torch.allclose((darker + 1) / 2, ((plain + 1) / 2) ** 2, atol=1e-6)
    drawn = VideoClipDataset([str(path)] * 8, gamma_range=(0.5, 2.0), **common)
    clips = [drawn[i]["video"] for i in range(8)]
    means = [float(c.mean()) for c in clips]
    assert min(means) < float(plain.mean()) < max(means)  # some brighter, some darker
    for clip in clips:  # one gamma for the whole clip: every frame moved alike, black and white kept
        assert torch.allclose(clip[0], clip[-1], atol=1e-6)
        assert clip.min() >= -1 and clip.max() <= 1
        gamma = torch.log((clip[0, 0, 8, 32 // 4] + 1) / 2) / torch.log((plain[0, 0, 8, 32 // 4] + 1) / 2)
        assert torch.allclose((clip + 1) / 2, ((plain + 1) / 2).clamp(0, 1) ** gamma, atol=1e-4)
        assert 0.5 - 1e-3 <= float(gamma) <= 2.0 + 1e-3
    assert means == [float(drawn[i]["video"].mean()) for i in range(8)]  # seeded
    with pytest.raises(CascadeVError, match="gamma_range"):
        VideoClipDataset([str(path)], gamma_range=(0.0, 1.0), **common)
