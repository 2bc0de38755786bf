"""cascadev.overlap: reading ahead and writing behind on background threads, in order, bounded, with the
background thread's errors raised on the caller's; and the commands' outputs the same with and without."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_checks import assert_one_line_error
from videos import write_test_video

import cascadev.overlap
from cascadev.cli import main
from cascadev.errors import CascadeVError
from cascadev.overlap import WriteBehind, read_ahead
from cascadev.video_io import VideoReader, VideoWriter

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
# crf 0: lossless, so the decoded frames are what was written (x264 at crf 18 can vary from run to run).
FAST = ["--config", TINY, "--random-init", "--quiet", "--steps", "1", "--crf", "0"]


class Source:
    """An iterator that records which thread made each item and how far it got."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at = n, fail_at
        self.made, self.threads, self.closed = 0, set(), False

    def __iter__(self):
        try:
            for i in range(self.n):
                self.threads.add(threading.current_thread().name)
                if i == self.fail_at:
                    raise CascadeVError(f"frame {i} is damaged")
                self.made += 1
                yield i
        finally:
            self.closed = True


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_read_ahead_keeps_order_and_items(depth):
    source = Source(10)
    assert list(read_ahead(source, depth)) == list(range(10))
    assert source.closed
    assert (threading.current_thread().name in source.threads) == (depth == 0)


def test_read_ahead_runs_ahead_by_depth_and_no_further():
    source = Source(100)
    items = read_ahead(source, 2)
    assert next(items) == 0
    time.sleep(0.2)  # time for the reader's thread to fill its queue
    assert source.made == 3  # the item handed out and 2 ahead; reading the whole source would make 100
    items.close()
    assert source.closed  # closing early stops the thread and closes the source
    assert source.made <= 4


def test_read_ahead_raises_the_sources_error_where_its_item_would_come():
    got = []
    with pytest.raises(CascadeVError, match="frame 3 is damaged"):
        for item in read_ahead(Source(10, fail_at=3), 1):
            got.append(item)
    assert got == [0, 1, 2]


def test_write_behind_keeps_order_on_one_background_thread_and_bounds_what_waits():
    written, threads, in_flight = [], set(), []
    behind = WriteBehind(1)

    def slow_write(i):
        time.sleep(0.01)
        threads.add(threading.current_thread().name)
        written.append(i)

    with behind:
        for i in range(6):
            behind.submit(slow_write, i)
            in_flight.append(i + 1 - len(written))  # submitted but not yet written
    assert written == list(range(6))  # all done at a clean exit, in order
    assert threads and threading.current_thread().name not in threads
    assert max(in_flight) <= 2  # the one being written and the one just handed over


def test_write_behind_raises_a_failed_write_on_the_caller_and_drops_later_ones():
    written = []

    def write(i):
        if i == 1:
            raise CascadeVError("disk is full")
        written.append(i)

    with pytest.raises(CascadeVError, match="disk is full"):
        with WriteBehind(1) as behind:
            for i in range(50):
                behind.submit(write, i)
    assert 0 in written and 1 not in written
    assert len(written) <= 3  # raised at the next hand-over or two, not after writing everything


def test_write_behind_exit_by_exception_cancels_writes_not_started():
    started = threading.Event()
    release = threading.Event()
    written = []

    def write(i):
        started.set()
        release.wait(5)
        written.append(i)

    with pytest.raises(KeyboardInterrupt):
        with WriteBehind(2) as behind:
            behind.submit(write, 0)
            behind.submit(write, 1)
            started.wait(5)
            release.set()
            raise KeyboardInterrupt
    assert written in ([0], [0, 1])  # the write in progress finishes; a queued one may have started
    assert behind._pool is None  # the thread is gone


def _frames(path: Path) -> np.ndarray:
    return VideoReader(path).read(range(VideoReader(path).num_frames))


def test_recon_and_upscale_give_the_same_videos_with_and_without_threads(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "clip.mp4"
    write_test_video(clip, 20, 64, 64)  # several read chunks and VAE chunks
    outputs = {}
    for depth in (0, 1):
        monkeypatch.setattr(cascadev.overlap, "IO_DEPTH", depth)
        out = tmp_path / f"recon{depth}"
        up = tmp_path / f"up{depth}.mp4"
        assert main([str(a) for a in ("recon", clip, "-o", out, "--segment-frames", 8, *FAST)]) == 0
        assert main([str(a) for a in ("upscale", clip, "-o", up, "--scale", 2, "--segment-frames", 8, *FAST)]) == 0
        outputs[depth] = {name: _frames(out / name) for name in ("original.mp4", "recon.mp4", "compare.mp4")}
        outputs[depth]["upscale"] = _frames(up)
    capsys.readouterr()
    for name, frames in outputs[0].items():
        threaded = outputs[1][name].astype(np.int16)
        assert threaded.shape == frames.shape, name
        assert np.abs(threaded - frames).max() <= 1, name  # the same computation, on another thread
    assert outputs[1]["original.mp4"].shape[0] == 20


def test_a_write_failing_on_the_writer_thread_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "clip.mp4"
    write_test_video(clip, 20, 64, 64)
    write = VideoWriter.write
    calls = {"n": 0}

    def failing_write(self, frames):
        if self.path.name == "recon.mp4":
            calls["n"] += 1
            if calls["n"] == 2:  # mid-stream, on the writer's thread
                assert threading.current_thread() is not threading.main_thread()
                raise CascadeVError(f"Writing {self.path} failed: the device went away.")
        write(self, frames)

    monkeypatch.setattr(VideoWriter, "write", failing_write)
    out = tmp_path / "out"
    code = main([str(a) for a in ("recon", clip, "-o", out, "--segment-frames", 8, *FAST)])
    assert_one_line_error(code, capsys.readouterr().err, "recon.mp4", "the device went away")
    assert calls["n"] == 2
    assert not out.exists()  # no partial videos, no latent, no folder


def test_same_seed_same_file_with_crf_0(tmp_path, capsys):
    """README: the same seed gives the same frames, and with --crf 0 the same file, writer thread and all."""
    clip = tmp_path / "clip.mp4"
    write_test_video(clip, 12, 64, 64)
    latent = tmp_path / "l.safetensors"
    assert main([str(a) for a in ("encode", clip, "-o", latent, *FAST[:4])]) == 0
    files = []
    for run in range(2):
        files.append(tmp_path / f"v{run}.mp4")
        assert main([str(a) for a in ("decode", latent, "-o", files[-1], "--seed", 7, *FAST)]) == 0
    assert files[0].read_bytes() == files[1].read_bytes()
    other = tmp_path / "other.mp4"
    assert main([str(a) for a in ("decode", latent, "-o", other, "--seed", 8, *FAST)]) == 0
    assert other.read_bytes() != files[0].read_bytes()  # the seed does reach the frames
    capsys.readouterr()
