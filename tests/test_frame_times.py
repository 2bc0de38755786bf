"""Variable frame rate keeps its timing (and the audio its sync); damaged containers say what was lost."""

import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from standins import TwoProcessesAsMain
from videos import make_frames, write_test_video

from cascadev import segments
from cascadev.cli import main
from cascadev.frame_times import interpolated_times, variable_times
from cascadev.latent_io import LatentMeta, LatentReader
from cascadev.loading import build_pipeline, load_config
from cascadev.reconstruct import SamplingArgs
from cascadev.video_io import VideoReader

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
RUN = ["--config", TINY, "--random-init", "--quiet", "--steps", "1"]
AUDIO_RATE = 16000
# Uneven frame starts from 0 to 1.44 s: quick at first, slow at the end; the last frame lasts to 1.50 s.
STARTS = 1.44 * np.linspace(0, 1, 8) ** 1.7
END = 1.5


def write_vfr_video(path: Path) -> None:
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(16 * 2, 3))
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = tb
        video.options = {"bf": "0"}
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        ticks = [round(t / tb) for t in np.append(STARTS, END)]
        durations = dict(zip(ticks, np.diff(ticks)))  # the encoder only knows the nominal rate

        def mux(packets):
            for packet in packets:
                packet.duration = int(durations[packet.pts])
                container.mux(packet)

        for rgb, pts in zip(make_frames(len(STARTS), 64, 64), ticks):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, tb
            mux(video.encode(frame))
        mux(video.encode(None))
        samples = np.round(8000 * np.sin(np.arange(int(END * AUDIO_RATE)) * 0.05)).astype(np.int16)[None]
        for k in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(samples[:, k : k + 1024], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = AUDIO_RATE, k
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def timing(path: Path) -> tuple[np.ndarray, float, float | None]:
    """Frame starts from the first, the video's duration and the audio's, read from the packets."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sorted((p.pts, p.duration) for p in container.demux(stream) if p.pts is not None)
        tb = float(stream.time_base)
        starts = np.array([p for p, _ in packets]) * tb
        duration = (packets[-1][0] + packets[-1][1]) * tb - starts[0]
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return starts - starts[0], duration, None
        astream = container.streams.audio[0]
        audio = [(p.pts, p.duration) for p in container.demux(astream) if p.pts is not None]
        atb = float(astream.time_base)
        return starts - starts[0], duration, (audio[-1][0] + audio[-1][1] - audio[0][0]) * atb


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    write_vfr_video(path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_frame_times_detect_variable_rate_only():
    rng = np.random.default_rng(0)
    jittered = np.arange(50) / 30 + rng.uniform(-0.002, 0.002, 50)  # a millisecond time base's rounding
    assert variable_times(jittered, None) is None
    assert variable_times(np.arange(10) / 24, 10 / 24) is None
    times = variable_times(STARTS, END)
    np.testing.assert_allclose(times, np.append(STARTS, END))
    with_drop = np.delete(np.arange(30) / 30, [10, 11])  # two dropped frames: timing kept
    assert variable_times(with_drop, None) is not None
    between = interpolated_times(np.array([0.0, 0.1, 0.5, 0.6]), 2)
    np.testing.assert_allclose(between, [0.0, 0.05, 0.1, 0.3, 0.5, 0.6])


def test_constant_rate_input_has_no_frame_times(tmp_path):
    clip = tmp_path / "cfr.mkv"  # Matroska's millisecond time base rounds 1/30 s steps unevenly
    write_test_video(clip, 10, 32, 32, fps=30.0)
    assert VideoReader(clip).frame_times is None
    meta = LatentMeta(fps=30.0, height=32, width=32, source_height=32, source_width=32)
    assert "frame_times" not in meta.to_dict()  # a constant-rate latent's metadata is as before


def test_vfr_outputs_keep_duration_timing_and_audio(tmp_path, capsys, vfr):
    in_starts, in_duration, in_audio = timing(vfr)
    assert abs(in_duration - END) < 1e-3 and in_audio is not None
    frame = float(np.diff(STARTS).min())  # "within one frame": the shortest one, 52 ms
    audio_packet = 1024 / AUDIO_RATE  # AAC ends on a whole packet

    code, err = run_cli(capsys, "recon", vfr, "-o", tmp_path / "r", *RUN)
    assert code == 0, err
    latent = tmp_path / "r" / "latent.safetensors"  # encode keeps the frame times in the latent for decode
    np.testing.assert_allclose(LatentReader(latent).meta.frame_times, np.append(STARTS, END), atol=1e-3)
    assert run_cli(capsys, "decode", latent, "-o", tmp_path / "d.mp4", *RUN)[0] == 0
    for out in (tmp_path / "d.mp4", tmp_path / "r" / "recon.mp4", tmp_path / "r" / "compare.mp4"):
        starts, duration, _ = timing(out)
        np.testing.assert_allclose(starts, in_starts, atol=1e-3)  # each frame at its input time
        assert abs(duration - in_duration) < frame, out

    assert run_cli(capsys, "upscale", vfr, "-o", tmp_path / "u.mp4", "--scale", 1, *RUN)[0] == 0
    starts, duration, audio = timing(tmp_path / "u.mp4")
    np.testing.assert_allclose(starts, in_starts, atol=1e-3)
    assert abs(duration - in_duration) < frame and abs(audio - in_audio) <= audio_packet

    assert run_cli(capsys, "interpolate", vfr, "-o", tmp_path / "i.mkv", "--factor", 2, *RUN)[0] == 0
    starts, duration, audio = timing(tmp_path / "i.mkv")
    assert len(starts) == 2 * len(STARTS) - 1
    np.testing.assert_allclose(starts[::2], in_starts, atol=1e-3)  # the input frames stay in place
    np.testing.assert_allclose(starts[1::2], (in_starts[:-1] + in_starts[1:]) / 2, atol=1.5e-3)
    assert abs(duration - in_duration) < frame and abs(audio - in_audio) <= audio_packet


def test_latent_frame_times_are_checked():
    meta = LatentMeta(fps=10.0, height=32, width=32, source_height=32, source_width=32, frame_times=(0.0, 0.1, 0.3))
    data = meta.to_dict()
    assert LatentMeta.from_dict({**data, "num_frames": 2}) == meta
    with pytest.raises(Exception, match="2 frames but 3 frame times"):
        LatentMeta.from_dict({**data, "frame_times": "[0,0.1,0.2,0.3]", "num_frames": 2})
    with pytest.raises(Exception, match="start at 0 and increase"):
        LatentMeta.from_dict({**data, "frame_times": "[0,0.2,0.1]"})


# ---------------------------------------------------------------- damaged containers


def test_damaged_mkv_warns_once_with_the_lost_count_and_no_ffmpeg_lines(tmp_path, capfd):
    good = tmp_path / "good.mkv"
    write_test_video(good, 40, 64, 64, pix_fmt="yuv420p", crf=18)
    data = bytearray(good.read_bytes())
    third = len(data) // 3
    data[third : third + len(data) // 6] = bytes(len(data) // 6)  # zeros over a stretch mid-stream
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(bytes(data))
    capfd.readouterr()
    code = main([str(a) for a in ("encode", damaged, "-o", tmp_path / "l.safetensors", "--num-frames", 1, *RUN[:4])])
    err = capfd.readouterr().err  # fd 2 itself: what ffmpeg writes from C shows up here too
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    found = re.fullmatch(
        r"cascadev: warning: .*damaged\.mkv is damaged: only (\d+) of the 40 frames .*\((\d+) lost\).*", lines[0]
    )
    assert found, lines[0]
    decoded, lost = int(found.group(1)), int(found.group(2))
    assert 0 < decoded < 40 and decoded + lost == 40
    assert (tmp_path / "l.safetensors").is_file() and VideoReader(damaged).num_frames == decoded
    capfd.readouterr()
    VideoReader(good)  # an intact file: no word
    assert capfd.readouterr().err == ""


def test_a_decode_shared_among_processes_keeps_the_frame_times(tmp_path, capsys, vfr, monkeypatch):
    """`accelerate launch ... cascadev decode` writes through the one-process task, so VFR timing survives."""
    assert run_cli(capsys, "encode", vfr, "-o", tmp_path / "l.safetensors", *RUN[:4])[0] == 0
    monkeypatch.setattr(segments, "distributed_state", TwoProcessesAsMain)
    cfg = load_config(TINY)
    sampling = SamplingArgs(steps=1, progress=False)
    out = tmp_path / "split.mp4"
    segments.decode_latent_split(
        lambda: build_pipeline(cfg, random_init=True), tmp_path / "l.safetensors", out, sampling
    )
    starts, duration, _ = timing(out)
    np.testing.assert_allclose(starts, timing(vfr)[0], atol=1e-3)  # each frame at its input time
    assert abs(duration - END) < float(np.diff(STARTS).min())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.safetensors", "split.mp4"]  # segment files gone


def test_the_bicubic_baseline_keeps_variable_frame_times_and_refuses_its_source_as_output(tmp_path, vfr):
    from cascadev.errors import CascadeVError
    from cascadev.evaluation.baselines import bicubic_video

    assert bicubic_video(vfr, tmp_path / "b.mp4", 4) == len(STARTS)
    starts, duration, _ = timing(tmp_path / "b.mp4")
    np.testing.assert_allclose(starts, timing(vfr)[0], atol=1e-3)  # each frame at its input time
    assert abs(duration - END) < float(np.diff(STARTS).min())
    with pytest.raises(CascadeVError, match="is the source video"):
        bicubic_video(vfr, vfr, 4)
