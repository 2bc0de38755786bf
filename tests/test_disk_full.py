"""A full disk (ENOSPC / EDQUOT) while writing any output: one line saying so and where, no partial file."""

import errno
import os
from pathlib import Path

import av
import pytest
import torch
from cli_checks import assert_one_line_error
from videos import write_test_video

import cascadev.latent_io
from cascadev.cli import main
from cascadev.evaluation import report
from cascadev.latent_io import LatentMeta, save_latent

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")
MODEL = ["--config", TINY, "--random-init", "--quiet"]
FAST = ["--steps", "1", *MODEL]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def full(code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_test_video(path, 2, 32, 32)
    return path


@pytest.fixture()
def video_disk_full(monkeypatch):
    """Video files opened for writing accept their header, then the disk is full at the first packet."""
    real_open = av.open

    class FullContainer:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def mux(self, packets):
            raise full()

    def fake_open(path, mode="r", **kwargs):
        container = real_open(path, mode, **kwargs)
        return FullContainer(container) if mode == "w" else container

    monkeypatch.setattr(av, "open", fake_open)


@pytest.mark.parametrize("errno_code", [errno.ENOSPC, errno.EDQUOT])
def test_encode(tmp_path, capsys, clip, monkeypatch, errno_code):
    real_open = open

    class FullFile:  # the header fits; the first latent frames do not
        def __init__(self, f):
            self._f, self._writes = f, 0

        def __getattr__(self, name):
            return getattr(self._f, name)

        def write(self, data):
            self._writes += 1
            if self._writes > 2:
                raise full(errno_code)
            return self._f.write(data)

    monkeypatch.setattr(cascadev.latent_io, "open", lambda *a, **k: FullFile(real_open(*a, **k)), raising=False)
    out = tmp_path / "out"
    out.mkdir()
    code, err = run_cli(capsys, "encode", clip, "-o", out / "l.safetensors", *MODEL)
    assert_one_line_error(code, err, "disk is full", str(out / "l.safetensors"))
    assert files(out) == []


def test_decode(tmp_path, capsys, video_disk_full):
    latent = tmp_path / "l.safetensors"
    save_latent(
        latent, torch.zeros(16, 2, 1, 1), LatentMeta(fps=24.0, height=32, width=32, source_height=32, source_width=32)
    )
    code, err = run_cli(capsys, "decode", latent, "-o", tmp_path / "v.mp4", *FAST)
    assert_one_line_error(code, err, "disk is full", str(tmp_path / "v.mp4"))
    assert files(tmp_path) == ["l.safetensors"]


def test_recon_leaves_nothing_behind(tmp_path, capsys, clip, video_disk_full):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "recon", clip, "-o", out, *FAST)
    assert_one_line_error(code, err, "disk is full", str(out / "original.mp4"))  # recon's first video
    assert not out.exists()  # the latent it wrote first and the folder it made are gone too


@pytest.mark.parametrize("command", ["upscale", "interpolate"])
def test_upscale_and_interpolate(tmp_path, capsys, clip, video_disk_full, command):
    out = tmp_path / "big.mp4"
    extra = ["--scale", "2"] if command == "upscale" else ["--factor", "2"]
    code, err = run_cli(capsys, command, clip, "-o", out, *extra, *FAST)
    assert_one_line_error(code, err, "disk is full", str(out))
    assert files(tmp_path) == []


def test_eval_writes_all_reports_or_none(tmp_path, capsys, clip, monkeypatch):
    def figure_on_full_disk(results, path):
        Path(path).write_bytes(b"\x89PNG partial")
        raise full()

    monkeypatch.setattr(report, "render_figure", figure_on_full_disk)
    out = tmp_path / "results.json"
    code, err = run_cli(capsys, "eval", "--ref", clip, "--rec", clip, "-o", out, "--metrics", "psnr", "--quiet")
    assert_one_line_error(code, err, "disk is full", "results.png")
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "message",
    [
        "[enforce fail at inline_container.cc:603] . unexpected pos 803392 vs 803284",  # torch.save
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
    ],
)
def test_checkpoint_save_errors_say_disk_full_with_the_work_dir(tmp_path, capsys, monkeypatch, message):
    def save_on_full_disk(args):
        raise RuntimeError(message)

    monkeypatch.setattr("cascadev.cli.run", save_on_full_disk)
    code, err = run_cli(capsys, "train", TINY, "--work-dir", tmp_path / "work")
    assert_one_line_error(code, err, "disk is full", str(tmp_path / "work"))


def test_other_failures_are_not_called_a_full_disk(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cascadev.cli.run", lambda args: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    code, err = run_cli(capsys, "train", TINY, "--work-dir", tmp_path / "work")
    assert code == 1 and "disk is full" not in err
