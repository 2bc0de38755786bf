"""Tests for cascadev.video_io: reading, writing, frame ranges, audio, PNG pictures."""

from __future__ import annotations

import gc
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image
from videos import make_frames, write_test_video

from cascadev.errors import CascadeVError
from cascadev.pictures import save_image, side_by_side
from cascadev.video_io import (
    VideoReader,
    VideoWriter,
    fps_fraction,
    frames_used,
    probe_video,
    select_frames,
    write_video,
)


def _stream_info(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = [s.codec_context.name for s in container.streams.audio]
        return video.codec_context.pix_fmt, audio


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _nearest(frame: np.ndarray, candidates: np.ndarray) -> int:
    """Index of the candidate frame closest to ``frame`` (mean absolute difference)."""
    diffs = np.abs(candidates.astype(np.int16) - frame.astype(np.int16)).reshape(len(candidates), -1)
    return int(diffs.mean(axis=1).argmin())


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def test_reader_reports_the_written_video(tmp_path):
    path = tmp_path / "in.mp4"
    write_test_video(path, 12, 47, 65, fps=30000 / 1001)
    reader = VideoReader(path)
    assert (reader.num_frames, reader.height, reader.width) == (12, 47, 65)
    assert reader.fps == pytest.approx(30000 / 1001, abs=1e-3)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width, info.has_audio) == (12, 47, 65, False)
    assert info.fps == pytest.approx(29.97, abs=1e-2)


def test_read_returns_the_frames_asked_for_in_any_order(tmp_path):
    path = tmp_path / "in.mp4"
    source = write_test_video(path, 20, 48, 64)  # yuv444p, crf 0: only RGB<->YUV rounding remains
    reader = VideoReader(path)
    indices = [17, 3, 3, 0, 19, 8]
    frames = reader.read(indices)
    assert frames.dtype == np.uint8 and frames.shape == (6, 48, 64, 3)
    assert _max_diff(frames, source[indices]) <= 3
    # The frames differ from each other by far more than the coding error: each is its own.
    assert [_nearest(f, source) for f in frames] == indices
    assert reader.read([]).shape == (0, 48, 64, 3)


# 48 and 16 pixels wide hit a decord bug (rows come back with their alignment padding).
@pytest.mark.parametrize(("height", "width"), [(47, 65), (32, 48), (20, 16)])
def test_read_is_exact_for_lossless_rgb_video(tmp_path, height, width):
    path = tmp_path / "rgb.mp4"
    source = write_test_video(path, 10, height, width, codec="libx264rgb", pix_fmt="rgb24")
    reader = VideoReader(path)
    assert (reader.height, reader.width) == (height, width)
    np.testing.assert_array_equal(reader.read(range(10)), source)
    np.testing.assert_array_equal(reader.read([7, 2, 2]), source[[7, 2, 2]])


def test_read_out_of_range_index_is_an_error(tmp_path):
    path = tmp_path / "in.mp4"
    write_test_video(path, 5, 32, 32)
    with pytest.raises(CascadeVError, match="has 5 frames"):
        VideoReader(path).read([0, 5])


def test_iter_chunks_covers_exactly_the_range(tmp_path):
    path = tmp_path / "in.mp4"
    write_test_video(path, 20, 32, 48)
    reader = VideoReader(path)
    chunks = list(reader.iter_chunks(3, 10, 4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), reader.read(range(3, 13)))
    assert sum(len(c) for c in reader.iter_chunks(0, 20, 7)) == 20
    with pytest.raises(CascadeVError, match="frames 15..24"):
        list(reader.iter_chunks(15, 10, 4))


def test_select_frames(tmp_path):
    path = tmp_path / "in.mp4"
    write_test_video(path, 20, 32, 32)
    info = probe_video(path)
    assert select_frames(info, 0, None) == (0, 20)
    assert select_frames(info, 5, None) == (5, 15)
    assert select_frames(info, 5, 15) == (5, 15)
    with pytest.raises(CascadeVError, match=r"in\.mp4 has 20 frames; frames 15\.\.24 were asked for"):
        select_frames(info, 15, 10)
    with pytest.raises(CascadeVError, match="start frame 20"):
        select_frames(info, 20, None)
    with pytest.raises(CascadeVError, match="0 or more"):
        select_frames(info, -1, 3)
    with pytest.raises(CascadeVError, match="at least 1"):
        select_frames(info, 0, 0)
    # What a batch weighs a job by (unchecked): the frames from --start, at most --num-frames, at least 1.
    assert [frames_used(20), frames_used(20, 5), frames_used(20, 5, 3), frames_used(20, 25)] == [20, 15, 3, 1]
    assert VideoReader(path).output_fps == pytest.approx(info.fps)


def _truncated_mp4(tmp_path):
    good = tmp_path / "good.mp4"
    write_test_video(good, 20, 32, 32)
    data = good.read_bytes()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "empty", "truncated"])
def test_unreadable_inputs_raise_cascadev_error(tmp_path, kind):
    if kind == "missing":
        path = tmp_path / "nope.mp4"
    elif kind == "folder":
        path = tmp_path / "dir.mp4"
        path.mkdir()
    elif kind == "text":
        path = tmp_path / "notes.mp4"
        path.write_text("this is not a video\n" * 20)
    elif kind == "empty":
        path = tmp_path / "empty.mp4"
        path.write_bytes(b"")
    else:
        path = _truncated_mp4(tmp_path)
    for opener in (VideoReader, probe_video):
        with pytest.raises(CascadeVError, match="is not a readable video") as info:
            opener(path)
        assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "pix_fmt"), [(47, 65, "yuv444p"), (48, 64, "yuv420p")])
def test_writer_roundtrip_sizes_fps_and_pixel_format(tmp_path, height, width, pix_fmt):
    frames = make_frames(15, height, width)
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 29.97, height, width, crf=0, pix_fmt=pix_fmt) as writer:
        writer.write(frames[:4])
        writer.write(frames[4:11])
        writer.write(frames[11])  # a single (H, W, 3) frame is accepted too
        writer.write(frames[12:])
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (15, height, width)
    assert info.fps == pytest.approx(30000 / 1001, abs=1e-3)
    assert _stream_info(path)[0] == pix_fmt
    decoded = VideoReader(path).read(range(15))
    assert [_nearest(f, frames) for f in decoded] == list(range(15))
    if pix_fmt == "yuv444p":  # lossless apart from the colour conversion
        assert _max_diff(decoded, frames) <= 3
    # Nothing else is left in the folder (the temporary file was renamed).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_odd_sizes_are_padded_to_even_yuv420p_by_default(tmp_path):
    """Players refuse yuv444p H.264: an odd side becomes even (last row/column repeated), yuv420p."""
    frames = make_frames(5, 47, 65)
    path = tmp_path / "odd.mp4"
    write_video(path, frames, 24, crf=0)
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.pix_fmt, ctx.height, ctx.width) == ("yuv420p", 48, 66)
    decoded = VideoReader(path).read(range(5))[:, :47, :65]  # the picture itself sits top-left
    assert [_nearest(f, frames) for f in decoded] == list(range(5))


def test_writer_lossless_rgb_is_exact(tmp_path):
    frames = make_frames(6, 31, 33)
    path = tmp_path / "rgb.mp4"
    write_video(path, frames, 24, codec="libx264rgb", crf=0)
    np.testing.assert_array_equal(VideoReader(path).read(range(6)), frames)


def test_fps_fraction():
    assert fps_fraction(29.97) == Fraction(30000, 1001)
    assert fps_fraction(23.976) == Fraction(24000, 1001)
    assert fps_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert fps_fraction(25) == 25
    assert fps_fraction(12.5) == Fraction(25, 2)


def test_writer_in_missing_folder_fails_before_writing(tmp_path):
    target = tmp_path / "missing" / "out.mp4"
    with pytest.raises(CascadeVError, match="does not exist") as info:
        VideoWriter(target, 24, 32, 32)
    assert str(target) in str(info.value)
    assert not (tmp_path / "missing").exists()


def test_writer_rejects_unknown_suffix_and_bad_options(tmp_path):
    with pytest.raises(CascadeVError, match="must end in"):
        VideoWriter(tmp_path / "out.xyz", 24, 32, 32)
    with pytest.raises(CascadeVError, match="frame rate"):
        VideoWriter(tmp_path / "out.mp4", 0, 32, 32)
    with pytest.raises(CascadeVError, match="crf"):
        VideoWriter(tmp_path / "out.mp4", 24, 32, 32, crf=99)
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_writer_leaves_destination_untouched(tmp_path):
    path = tmp_path / "out.mp4"
    frames = make_frames(5, 32, 32)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, 24, 32, 32) as writer:
            writer.write(frames)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # An existing file at the destination survives a failed write.
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with VideoWriter(path, 24, 32, 32) as writer:
            writer.write(frames)
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_writer_rejects_wrong_frames_and_empty_videos(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(CascadeVError, match=r"must be uint8 \(n, 32, 48, 3\)"):
        with VideoWriter(path, 24, 32, 48) as writer:
            writer.write(np.zeros((2, 48, 32, 3), dtype=np.uint8))
    with pytest.raises(CascadeVError, match="uint8"):
        with VideoWriter(path, 24, 32, 48) as writer:
            writer.write(np.zeros((2, 32, 48, 3), dtype=np.float32))
    with pytest.raises(CascadeVError, match="No frames"):
        with VideoWriter(path, 24, 32, 48):
            pass
    assert list(tmp_path.iterdir()) == []


def _audio_packets(path) -> tuple[list[bytes], float]:
    """The audio track's packet payloads and its duration in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        payloads = [bytes(p) for p in container.demux(stream) if p.size]
        return payloads, float(stream.duration * stream.time_base)


def test_audio_is_copied_from_the_source(tmp_path):
    source = tmp_path / "with_audio.mp4"
    frames = write_test_video(source, 24, 32, 32, audio=True)  # 1 s of video and of AAC audio
    assert probe_video(source).has_audio
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 24, 32, 32, audio_from=source) as writer:
        for start in range(0, 24, 5):
            writer.write(frames[start : start + 5])
    assert probe_video(out).has_audio and probe_video(out).num_frames == 24
    assert _stream_info(out)[1] == ["aac"]
    copied, duration = _audio_packets(out)
    original, _ = _audio_packets(source)
    assert duration == pytest.approx(1.0, abs=0.05)
    assert copied == original  # remuxed packet for packet, not re-encoded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "with_audio.mp4"]


def test_audio_is_cut_to_the_video(tmp_path):
    source = tmp_path / "with_audio.mp4"
    frames = write_test_video(source, 24, 32, 32, audio=True)
    out = tmp_path / "half.mp4"
    write_video(out, frames[:12], 24, audio_from=source)  # 0.5 s of video
    assert _audio_packets(out)[1] == pytest.approx(0.5, abs=0.05)
    write_video(out, frames[12:18], 24, audio_from=source, audio_start=0.5)  # 0.25 s from 0.5 s on
    copied, duration = _audio_packets(out)
    assert duration == pytest.approx(0.25, abs=0.05)
    original, _ = _audio_packets(source)
    first = original.index(copied[0])
    assert 0.45 <= first * 1024 / 44100 <= 0.55  # the copy starts half a second into the source


def test_audio_source_without_audio_gives_a_silent_video(tmp_path):
    source = tmp_path / "silent_source.mp4"
    frames = write_test_video(source, 6, 32, 32)
    out = tmp_path / "out.mp4"
    write_video(out, frames, 24, audio_from=source)
    assert not probe_video(out).has_audio


def test_audio_in_a_codec_mp4_does_not_take_is_reencoded(tmp_path):
    source = tmp_path / "pcm.mkv"
    frames = write_test_video(source, 12, 32, 32, audio="pcm_s16le")
    assert _stream_info(source)[1] == ["pcm_s16le"]
    out = tmp_path / "out.mp4"
    write_video(out, frames, 24, audio_from=source)
    assert _stream_info(out)[1] == ["aac"]
    assert probe_video(out).num_frames == 12


def test_missing_audio_source_is_an_error(tmp_path):
    with pytest.raises(CascadeVError, match="audio source"):
        VideoWriter(tmp_path / "out.mp4", 24, 32, 32, audio_from=tmp_path / "none.mp4")


def test_save_image_and_side_by_side(tmp_path):
    a = make_frames(3, 20, 30)
    b = make_frames(3, 20, 10, pattern="still")
    both = side_by_side(a, b)
    assert both.shape == (3, 20, 40, 3)
    np.testing.assert_array_equal(both[:, :, 30:], b)
    with pytest.raises(ValueError):
        side_by_side(a, a[:2])
    with pytest.raises(ValueError):
        side_by_side(a, a[:, :10])
    path = tmp_path / "grid.png"
    save_image(path, both[1])
    np.testing.assert_array_equal(np.asarray(Image.open(path)), both[1])
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    with pytest.raises(CascadeVError, match="does not exist"):
        save_image(tmp_path / "no" / "x.png", both[1])


def test_abandoned_writer_leaves_no_temporary_file(tmp_path):
    writer = VideoWriter(tmp_path / "out.mp4", 24, 32, 32)
    writer.write(make_frames(3, 32, 32))
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file, under another name
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == []
