"""`cascadev upscale | interpolate` with configs/tiny.py at random weights: sizes, frame counts and rates,
audio, the DiT's 2x mode, the resize-conditioning variant, streaming memory and bad input."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from cli_checks import assert_one_line_error, exit_status
from videos import write_test_video

from cascadev.cli import main
from cascadev.conditioning import Conditioner
from cascadev.enhance import ConditionStream, interpolate_in_time, target_size
from cascadev.errors import CascadeVError
from cascadev.frames import from_uint8
from cascadev.loading import build_pipeline, load_config
from cascadev.models.dit import CascadeDiT
from cascadev.overlap import IO_DEPTH
from cascadev.pictures import sheet_size, tile_origin
from cascadev.pipeline import SamplingPlan
from cascadev.reconstruct import READ_CHUNK
from cascadev.tiling import window_starts
from cascadev.video_io import VideoReader, VideoWriter, probe_video

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
FAST = ["--config", TINY, "--random-init", "--quiet", "--steps", "1"]


def run_cli(capsys, *argv):
    code = exit_status(main, [str(a) for a in argv])  # an option's value is checked by the parser (SystemExit)
    return code, capsys.readouterr().err


def audio_seconds(path) -> tuple[float, float]:
    """(start, duration) of the first audio track, in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.size]
        first = float(packets[0].pts * packets[0].time_base)
        return first, float(stream.duration * stream.time_base)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Odd-sized clips with an AAC track, keyed by frame count: 17x23 pixels at 10 fps."""
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for n in (1, 2, 3, 5):
        out[n] = folder / f"clip{n}.mp4"
        write_test_video(out[n], n, 17, 23, fps=10.0, audio=True)
    return out


# ----------------------------------------------------------------------------- upscale


@pytest.mark.parametrize(
    "frames,extra,size",
    [
        (1, [], (68, 92)),  # the default --scale 4
        (2, ["--scale", 3], (51, 69)),
        (3, ["--scale", 1], (17, 23)),  # lats_per_vid - 1 frames
        (5, ["--size", 40], (40, 54)),  # lats_per_vid + 1 frames; 23 * 40 / 17 = 54.1
    ],
)
def test_upscale_sizes_frame_counts_rates_and_audio(tmp_path, capsys, clips, frames, extra, size):
    out = tmp_path / "up.mp4"
    code, err = run_cli(capsys, "upscale", clips[frames], "-o", out, *extra, *FAST)
    assert code == 0, err
    info = probe_video(out)
    even = tuple(n + n % 2 for n in size)  # odd sides are padded to even for yuv420p (the picture is `size`)
    assert (info.num_frames, info.height, info.width) == (frames, *even)
    assert info.fps == pytest.approx(10.0, abs=1e-3)
    assert info.has_audio
    assert audio_seconds(out)[1] == pytest.approx(frames / 10.0, abs=0.06)
    assert os.listdir(tmp_path) == ["up.mp4"]


def test_target_size():
    assert target_size(17, 23, scale=4) == (68, 92)
    assert target_size(23, 17, size=40) == (54, 40)
    assert target_size(17, 23) == (17, 23)
    with pytest.raises(CascadeVError, match="--scale"):
        target_size(17, 23, scale=0)


def dit_spy(monkeypatch):
    """Record the input shape of every CascadeDiT call."""
    shapes = []
    forward = CascadeDiT.forward

    def spy(self, x, timestep, as_images=False):
        shapes.append(tuple(x.shape))
        return forward(self, x, timestep, as_images)

    monkeypatch.setattr(CascadeDiT, "forward", spy)
    return shapes


def test_upscale_takes_the_trained_tiles_by_default_and_2x_mode_on_request(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "small.mp4"
    write_test_video(clip, 2, 32, 32, fps=8.0)
    shapes = dit_spy(monkeypatch)
    default = tmp_path / "default.mp4"
    code, err = run_cli(capsys, "upscale", clip, "-o", default, *FAST)  # 128 px: latent 16 = 2 * input_size
    assert code == 0, err
    assert shapes and {s[1:] for s in shapes} == {(20, 4, 8, 8)}  # the trained 8x8 tiles of 4 frames
    shapes.clear()
    auto = tmp_path / "auto.mp4"
    assert run_cli(capsys, "upscale", clip, "-o", auto, "--mode", "auto", *FAST)[0] == 0
    assert shapes and {s[1:] for s in shapes} == {(20, 1, 16, 16)}  # 2x mode: 16x16 latents, 1 frame
    shapes.clear()
    tiles = tmp_path / "tiles.mp4"
    assert run_cli(capsys, "upscale", clip, "-o", tiles, "--mode", "tiles", *FAST)[0] == 0
    assert {s[1:] for s in shapes} == {(20, 4, 8, 8)}  # trained tiles and windows
    a, b = VideoReader(auto).read([0, 1]), VideoReader(tiles).read([0, 1])
    assert a.shape == b.shape == (2, 128, 128, 3)
    assert a.std() > 1 and np.abs(a.astype(int) - b).mean() > 1  # the modes really sample differently


@pytest.fixture(scope="module")
def dit_pipe():
    return build_pipeline(load_config(TINY), ["dit"], random_init=True)


def test_sampling_plan(dit_pipe):
    assert dit_pipe.plan(16, 16, "auto") == SamplingPlan("2x", 1, 16, 12)
    assert dit_pipe.plan(15, 40, "auto") == SamplingPlan("tiles", 4, 8, 6)
    assert dit_pipe.plan(40, 40) == SamplingPlan("tiles", 4, 8, 6)  # decode's default is unchanged
    assert dit_pipe.plan(8, 8, "2x").tile == 16  # smaller latents are padded up to a 2x tile
    with pytest.raises(CascadeVError, match="mode"):
        dit_pipe.plan(8, 8, "4x")


def test_2x_mode_blends_overlapping_tiles(dit_pipe, monkeypatch):
    shapes = dit_spy(monkeypatch)
    cond = torch.randn(3, 16, 24, 20)
    out = dit_pipe.sample(cond, steps=1, mode="2x")
    assert out.shape == (3, 4, 24, 20) and torch.isfinite(out).all()
    # 3 one-frame windows x 2 x 2 tiles of 16 (stride 12: rows at 0 and 8, columns at 0 and 4)
    assert sum(s[0] for s in shapes) == 3 * 2 * 2 and {s[1:] for s in shapes} == {(20, 1, 16, 16)}
    again = dit_pipe.sample(cond, steps=1, mode="2x")
    assert torch.equal(out, again)


def test_resize_condition_variant_takes_the_input_itself_as_condition(tmp_path, capsys, clips, monkeypatch):
    seen = []
    resized = Conditioner.resized  # the resize condition's one encoder, shared with training

    def spy(self, frames):
        seen.append((frames.clone(), self.compressor))
        return resized(self, frames)

    monkeypatch.setattr(Conditioner, "resized", spy)
    shapes = dit_spy(monkeypatch)
    out = tmp_path / "up.mp4"
    code, err = run_cli(capsys, "upscale", clips[3], "-o", out, "--cfg-options", "condition=resize", *FAST)
    assert code == 0, err
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (3, 68, 92)
    assert {s[1] for s in shapes} == {8}  # 4 noisy + 4 condition channels
    frames = torch.cat([f for f, _ in seen])
    assert frames.shape == (3, 3, 24, 24)  # 96x96 padded output / 4
    assert all(compressor is None for _, compressor in seen)  # no semantic compressor loaded
    original = from_uint8(VideoReader(clips[3]).read(range(3)))
    assert torch.equal(frames[:, :, :17, :23], original)  # scale 4: the condition is the input video


# ----------------------------------------------------------------------------- interpolate


@pytest.mark.parametrize("frames,factor", [(1, 4), (2, 4), (3, 4), (5, 4), (3, 2)])
def test_interpolate_frame_counts_rates_and_audio(tmp_path, capsys, clips, frames, factor):
    out = tmp_path / "smooth.mp4"
    code, err = run_cli(capsys, "interpolate", clips[frames], "-o", out, "--factor", factor, *FAST)
    assert code == 0, err
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == ((frames - 1) * factor + 1, 18, 24)  # 23x17 padded to even
    assert info.fps == pytest.approx(10.0 * factor, abs=1e-3)
    assert info.has_audio


def test_interpolate_part_of_a_video_keeps_the_sound_in_sync(tmp_path, capsys):
    clip = tmp_path / "long.mp4"
    write_test_video(clip, 20, 16, 16, fps=10.0, audio=True)
    out = tmp_path / "part.mp4"
    code, err = run_cli(capsys, "interpolate", clip, "-o", out, "--start", 10, "--num-frames", 5, "--size", 24, *FAST)
    assert code == 0, err
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width, info.fps) == (17, 24, 24, 40.0)
    # 17 frames at 40 fps = 0.425 s of sound, taken from 1.0 s into the source
    assert audio_seconds(out)[1] == pytest.approx(0.425, abs=0.06)
    with av.open(str(clip)) as src, av.open(str(out)) as dst:
        source = [bytes(p) for p in src.demux(src.streams.audio[0]) if p.size]
        copied = [bytes(p) for p in dst.demux(dst.streams.audio[0]) if p.size]
    assert 0.95 <= source.index(copied[0]) * 1024 / 44100 <= 1.05


def test_in_between_latents_are_linear_in_time():
    inputs = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    read, count = interpolate_in_time(lambda a, b: inputs[:, a:b], 3, 4)
    assert count == 9
    assert torch.allclose(read(0, 9)[0, :, 0, 0], torch.arange(9) / 4)
    assert torch.equal(read(3, 6), read(0, 9)[:, 3:6])
    single, one = interpolate_in_time(lambda a, b: inputs[:, a:b], 1, 4)
    assert one == 1 and torch.equal(single(0, 1), inputs[:, :1])


class FakeReader:
    """Frames whose every pixel holds the frame index."""

    def __init__(self, n):
        self.n, self.reads = n, []

    def read(self, indices):
        idx = list(indices)
        self.reads.append(idx)
        return np.array(idx, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)


def test_condition_stream_encodes_each_frame_once_and_forgets_old_ones():
    reader = FakeReader(100)
    held = []

    def encode(chunk):
        return torch.as_tensor(chunk[..., 0], dtype=torch.float32)[None]  # (1, n, 2, 2)

    stream = ConditionStream(reader, 10, 80, encode)
    segment = 12
    for s0 in window_starts(80, segment, segment - 2):
        got = stream.read(s0, min(s0 + segment, 80))
        assert torch.equal(got[0, :, 0, 0], torch.arange(10 + s0, 10 + min(s0 + segment, 80), dtype=torch.float32))
        held.append(stream._latent.shape[1])
    assert stream.frames_encoded == 80  # each frame once
    assert max(held) <= segment + READ_CHUNK  # never the whole video
    assert all(len(r) <= READ_CHUNK for r in reader.reads)


# ----------------------------------------------------------------------------- streaming


def test_frames_are_read_only_as_far_ahead_as_a_segment_needs(tmp_path, capsys, monkeypatch):
    """Reading never runs ahead of writing by more than a segment and a read chunk, at any length."""
    log = {"read": 0, "written": 0, "lead": 0}
    read, write = VideoReader.read, VideoWriter.write

    def spy_read(self, indices):
        frames = read(self, indices)
        if self.path.name.startswith("clip"):
            log["read"] = max(log["read"], max(indices) + 1)
            log["lead"] = max(log["lead"], log["read"] - log["written"] // 2)  # factor 2: input frames written
        return frames

    def spy_write(self, frames):
        write(self, frames)
        log["written"] = self.frames_written

    monkeypatch.setattr(VideoReader, "read", spy_read)
    monkeypatch.setattr(VideoWriter, "write", spy_write)
    leads = []
    for n in (24, 96):
        clip = tmp_path / f"clip{n}.mp4"
        write_test_video(clip, n, 8, 8, fps=12.0)
        log.update(read=0, written=0, lead=0)
        code, err = run_cli(
            capsys, "interpolate", clip, "-o", tmp_path / f"out{n}.mp4", "--factor", 2, "--segment-frames", 8, *FAST
        )
        assert code == 0, err
        assert probe_video(tmp_path / f"out{n}.mp4").num_frames == 2 * n - 1
        leads.append(log["lead"])
    # A segment of 8 output frames needs 4 inputs; reads come in chunks of READ_CHUNK, and IO_DEPTH more
    # chunks are read ahead (cascadev.overlap); the VAE holds back up to vae_chunk (4) output frames and the
    # writer's thread up to IO_DEPTH such chunks more (2 inputs each). Reading the whole video first would
    # give a lead of 96.
    assert max(leads) <= (1 + IO_DEPTH) * READ_CHUNK + 8 + 2 * IO_DEPTH, leads


MEASURE = r"""
import ctypes, json, resource, sys
from cascadev import overlap, video_io
from cascadev.cli import main

heap = []
if sys.argv[1] == "heap":
    # The live heap is sampled after every write, so the writes run inline: on the writer's thread a sample
    # would land anywhere in the main thread's work on the next chunk (a megabyte either way).
    overlap.IO_DEPTH = 0
    try:  # glibc's count of live malloc'd bytes (torch's CPU tensors included), without freed-but-cached pages
        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        write = video_io.VideoWriter.write

        def spy(self, frames):
            write(self, frames)
            info = libc.mallinfo2()
            heap.append(info.uordblks + info.hblkhd)

        video_io.VideoWriter.write = spy
    except (OSError, AttributeError):
        pass
code = main(sys.argv[2:])
print(json.dumps({"code": code, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "heap": heap}))
"""


def _measured_runs(tmp_path: Path, command: str, lengths: tuple[int, ...], what: str) -> list[dict]:
    """``cascadev COMMAND`` on test clips of each length, side by side, each in its own process (ru_maxrss is
    per process): their exit codes, peak RSS and, with ``what="heap"``, the live heap after every write."""
    procs = []
    for n in lengths:
        clip = tmp_path / f"clip{n}.mp4"
        write_test_video(clip, n, 16, 24, fps=24.0, audio=True)
        if command == "upscale":  # mpeg4 has no lookahead: x264 buffers ~40 frames, which would blur the heap check
            argv = ["upscale", clip, "-o", tmp_path / f"out{n}_{what}.mp4", "--codec", "mpeg4"]
        else:
            argv = ["recon", clip, "-o", tmp_path / f"out{n}_{what}", "--size", 64]
        argv += ["--segment-frames", 8, *FAST]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the processes run side by side
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", MEASURE, what, *map(str, argv)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
        )
    runs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert [r["code"] for r in runs] == [0] * len(lengths)
    return runs


@pytest.mark.parametrize("command", ["upscale", "recon"])
def test_peak_memory_does_not_grow_with_length(tmp_path, command):
    """A 4x longer input peaks within 1.3x of the shorter one's memory, with the reader and writer threads.

    recon covers encode (latent file written chunk by chunk) and decode (segments) as well.
    """
    short, long = _measured_runs(tmp_path, command, (24, 96), "rss")
    print(command, "peak RSS (KiB) of 24 and 96 frames:", short["maxrss_kb"], long["maxrss_kb"])
    assert long["maxrss_kb"] <= 1.3 * short["maxrss_kb"], (short["maxrss_kb"], long["maxrss_kb"])


def test_upscale_keeps_no_output_frames(tmp_path):
    """The live heap after each write stays flat over a 96-frame upscale (glibc only)."""
    (run,) = _measured_runs(tmp_path, "upscale", (96,), "heap")
    heap = run["heap"]
    if not heap:
        pytest.skip("glibc's mallinfo2 is not available")
    assert probe_video(tmp_path / "out96_heap.mp4").num_frames == 96
    # Keeping every output frame, even as uint8 (18 KB each), would add 1.7 MB over the 96 frames.
    assert max(heap) - max(heap[:2]) < 2**20, heap


# ----------------------------------------------------------------------------- options and bad input


def test_output_codec_and_pixel_format(tmp_path, capsys, clips):
    out = tmp_path / "up.mkv"
    code, err = run_cli(
        capsys,
        "upscale",
        clips[1],
        "-o",
        out,
        "--scale",
        2,
        "--pix-fmt",
        "yuv444p",
        "--crf",
        0,
        "--codec",
        "libx264",
        *FAST,
    )
    assert code == 0, err
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p"


def test_decode_takes_codec_and_pixel_format(tmp_path, capsys, clips):
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clips[2], "-o", latent, "--config", TINY, "--random-init", "--quiet")[0] == 0
    out = tmp_path / "v.mp4"
    code, err = run_cli(capsys, "decode", latent, "-o", out, "--codec", "libx264rgb", *FAST)
    assert code == 0, err
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "gbrp"  # x264's RGB mode, not YUV


def test_commands_are_listed():
    with pytest.raises(SystemExit):
        main(["--help"])


@pytest.mark.parametrize("command", ["upscale", "interpolate"])
def test_missing_and_corrupt_inputs(tmp_path, capsys, clips, command):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clips[5].read_bytes()[:500])
    for bad in (tmp_path / "nope.mp4", corrupt):
        code, err = run_cli(capsys, command, bad, "-o", tmp_path / "out.mp4", *FAST)
        assert_one_line_error(code, err, bad.name)
    assert sorted(os.listdir(tmp_path)) == ["corrupt.mp4"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["upscale", "--scale", "0"], "--scale"),
        (["upscale", "--scale", "-2"], "--scale"),
        (["upscale", "--scale", "2.5"], "--scale"),
        (["upscale", "--scale", "2", "--size", "64"], "--size"),
        (["interpolate", "--factor", "0"], "--factor"),
        (["interpolate", "--mode", "3x"], "--mode"),
        (["upscale", "--pix-fmt", "yuv999"], "--pix-fmt"),
        (["upscale", "--codec", "nocodec"], "nocodec"),
        (["interpolate", "--num-frames", "9"], "5 frames"),
        (["interpolate", "--factor", "100000"], "--factor 100000 would make 1e+06 frames per second of"),
    ],
)
def test_impossible_options(tmp_path, capsys, clips, argv, needle):
    out = tmp_path / "out.mp4"
    code, err = run_cli(capsys, argv[0], clips[5], "-o", out, *argv[1:], *FAST)
    assert_one_line_error(code, err, needle)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["upscale", "interpolate"])
def test_unwritable_outputs(tmp_path, capsys, clips, command):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(capsys, command, clips[2], "-o", blocker / "out.mp4", *FAST)
    assert_one_line_error(code, err, f"{blocker} is a file, not a folder")
    blocker.unlink()
    code, err = run_cli(capsys, command, clips[2], "-o", tmp_path / "out.txt", *FAST)
    assert_one_line_error(code, err, "out.txt")
    clip = tmp_path / "same.mp4"
    clip.write_bytes(clips[2].read_bytes())
    code, err = run_cli(capsys, command, clip, "-o", clip, *FAST)
    assert_one_line_error(code, err, "same.mp4")
    assert os.listdir(tmp_path) == ["same.mp4"] and clip.read_bytes() == clips[2].read_bytes()


# ----------------------------------------------------------------------------- the comparison tool


def load_compare_tool():
    spec = importlib.util.spec_from_file_location("compare_frames", ROOT / "tools" / "compare_frames.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_tool_puts_the_resized_input_beside_the_output(tmp_path, clips, capsys):
    from PIL import Image

    tool = load_compare_tool()
    big = tmp_path / "big.mp4"
    write_test_video(big, 9, 34, 46, fps=40.0)  # stands in for a 2x larger, 4x smoother version of clip3
    png = tmp_path / "cmp.png"
    assert tool.main([str(clips[3]), str(big), "-o", str(png), "--frames", "3"]) == 0
    image = np.asarray(Image.open(png))
    assert image.shape == (*sheet_size(3, 2, 34, 46), 3)  # titled columns, separators, numbered rows
    assert tool.matching_indices(3, 9, 3) == ([0, 1, 2], [0, 4, 8])  # frames at the same moments
    first = VideoReader(clips[3]).read([0])[0]
    (top, left), (_, right) = tile_origin(0, 0, 34, 46), tile_origin(0, 1, 34, 46)
    assert np.array_equal(
        image[top : top + 34 : 2, left : left + 46 : 2], first
    )  # nearest: each input pixel a 2x2 block
    assert np.array_equal(image[top : top + 34, right : right + 46], VideoReader(big).read([0])[0])
    assert (image[top : top + 34, left + 46 : right] == 255).all()  # a white separator between the columns
    assert (image[:top] < 128).any()  # text (titles, frame number) above the first row
    assert tool.main([str(tmp_path / "none.mp4"), str(big), "-o", str(png)]) == 2
    assert "none.mp4" in capsys.readouterr().err
    # A PNG under another name is refused, before any work (was: PNG bytes written to cmp.jpg).
    assert tool.main([str(clips[3]), str(big), "-o", str(tmp_path / "cmp.jpg")]) == 2
    assert "give it a name that ends in .png" in capsys.readouterr().err and not (tmp_path / "cmp.jpg").exists()
