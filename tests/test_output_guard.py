"""Outputs under stress: signals remove partial files, one writer per output, no special files replaced."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import assert_one_line_error
from videos import write_test_video

import cascadev.atomic as atomic
import cascadev.latent_io as latent_io
from cascadev.atomic import HOST_TAG, check_output_path, sweep_stale_partials, temp_path
from cascadev.cli import Signalled, main
from cascadev.errors import CascadeVError
from cascadev.outlock import FOLDER_LOCK, lock_path, output_lock

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_test_video(path, 5, 64, 64)
    return path


# ---------------------------------------------------------------- special files at the output path


def test_fifo_and_device_outputs_are_refused(tmp_path, capsys, clip):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    code, err = run_cli(capsys, "encode", clip, "-o", fifo, "--config", TINY, "--random-init", "--quiet")
    assert_one_line_error(code, err, str(fifo), "FIFO")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    code, err = run_cli(capsys, "encode", clip, "-o", "/dev/null", "--config", TINY, "--random-init", "--quiet")
    assert_one_line_error(code, err, "/dev/null", "character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    link = tmp_path / "null.mp4"
    link.symlink_to("/dev/null")  # a link to a device is refused like the device
    with pytest.raises(CascadeVError, match="character device"):
        check_output_path(link)
    assert check_output_path(tmp_path / "new.mp4") == tmp_path / "new.mp4"


# ---------------------------------------------------------------- two writers, one output


def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys, clip):
    out_file, out_dir = tmp_path / "l.safetensors", tmp_path / "recon"
    out_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom cascadev.outlock import output_lock\n"
            f"with output_lock({str(out_file)!r}), output_lock({str(out_dir)!r}, folder=True):\n"
            "    print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = run_cli(capsys, "encode", clip, "-o", out_file, "--config", TINY, "--random-init", "--quiet")
        assert_one_line_error(code, err, str(out_file), f"PID {holder.pid}")
        code, err = run_cli(capsys, "recon", clip, "-o", out_dir, "--config", TINY, "--random-init", "--quiet")
        assert_one_line_error(code, err, str(out_dir), f"PID {holder.pid}")
        assert not out_file.exists() and sorted(p.name for p in out_dir.iterdir()) == [FOLDER_LOCK]
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0
    assert not lock_path(out_file).exists() and not (out_dir / FOLDER_LOCK).exists()
    with output_lock(out_file) as held:  # once the first writer is done, the output is free again
        assert held.read_text().strip() == str(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recon"]


# ---------------------------------------------------------------- partial files of dead and live runs


def test_stale_partials_of_dead_runs_are_removed_and_reported(tmp_path, capsys, clip):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".l.safetensors.partial-{dead_pid}.{HOST_TAG}-abcd1234.safetensors"
    foreign = tmp_path / f".l.safetensors.partial-{dead_pid}.00000000-abcd1234.safetensors"  # another machine's
    alive = tmp_path / f".x.mp4.partial-{os.getpid()}.{HOST_TAG}-abcd1234.mp4"  # a live run's
    for p in (stale, foreign, alive):
        p.write_bytes(b"half")
    code, err = run_cli(
        capsys,
        "encode",
        clip,
        "-o",
        tmp_path / "l.safetensors",
        "--num-frames",
        1,
        "--config",
        TINY,
        "--random-init",
        "--quiet",
    )
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cascadev: removed 1 partial file"), err
    assert stale.name in lines[0] and foreign.name in lines[0] and alive.name not in lines[0]
    assert not stale.exists() and foreign.exists() and alive.exists()
    assert sweep_stale_partials(tmp_path) is not None  # the foreign one is still reported, never removed
    mine = temp_path(tmp_path / "y.mp4")  # this process's own partial is in use, not stale
    assert str(os.getpid()) in mine.name and mine.exists()


# ---------------------------------------------------------------- SIGTERM / SIGINT


@pytest.mark.parametrize("signals, code", [((signal.SIGTERM,), 143), ((signal.SIGINT, signal.SIGINT), 130)])
def test_a_signal_mid_run_leaves_no_partial_files(tmp_path, signals, code):
    video = tmp_path / "long.mp4"
    write_test_video(video, 96, 64, 64)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cascadev.cli",
            "recon",
            str(video),
            "-o",
            str(out),
            "--config",
            TINY,
            "--random-init",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 120
    while not (out.is_dir() and _partials(out)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the run is writing its outputs
    assert proc.poll() is None, proc.communicate()
    for sig in signals:  # a double Ctrl-C: the second one arrives during the cleanup
        proc.send_signal(sig)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines() == ["cascadev: interrupted"], err
    assert not out.exists()  # the folder this run made goes with its partial files and its lock


@pytest.fixture
def restore_signals():
    """An interrupted ``main`` leaves SIGINT/SIGTERM ignored (the process is about to end): undo that."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _signal_after_creating(monkeypatch, registered: bool) -> None:
    """Make the first partial file's creation be followed at once by a SIGINT: after its registration in
    the writer's constructor, or (``registered=False``) between ``mkstemp`` and the registration."""
    if registered:
        real = latent_io.temp_path

        def creating(path):
            real(path)
            raise Signalled(signal.SIGINT)  # inside LatentWriter.__init__: no ``with`` has begun

        monkeypatch.setattr(latent_io, "temp_path", creating)
    else:
        real = atomic.tempfile.mkstemp

        def creating(*args, **kwargs):
            fd, _ = real(*args, **kwargs)
            os.close(fd)
            raise Signalled(signal.SIGINT)  # the file exists; no registry knows it

        monkeypatch.setattr(atomic.tempfile, "mkstemp", creating)


@pytest.mark.parametrize("registered", [True, False])
def test_a_signal_as_a_partial_file_is_made_leaves_no_trace(
    tmp_path, capsys, clip, monkeypatch, restore_signals, registered
):
    _signal_after_creating(monkeypatch, registered)
    out = tmp_path / "recon"
    code, err = run_cli(capsys, "recon", clip, "-o", out, "--config", TINY, "--random-init", "--quiet")
    assert (code, err.strip()) == (130, "cascadev: interrupted")
    assert not out.exists(), sorted(p.name for p in out.iterdir())  # the folder it made, with no partials
    new = tmp_path / "new"
    latent = new / "deeper" / "l.safetensors"
    code, err = run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet")
    assert (code, err.strip()) == (130, "cascadev: interrupted")
    assert not new.exists()  # a file output's made folders go too
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / ".other.safetensors.partial-1.00000000-abcd1234.safetensors").write_bytes(b"x")  # not ours
    code, err = run_cli(
        capsys, "encode", clip, "-o", kept / "l.safetensors", "--config", TINY, "--random-init", "--quiet"
    )
    assert code == 130
    assert sorted(p.name for p in kept.iterdir()) == [".other.safetensors.partial-1.00000000-abcd1234.safetensors"]


def test_a_stopped_re_run_puts_the_earlier_outputs_back_whole(tmp_path, capsys, clip, monkeypatch, restore_signals):
    """A recon into a folder holding an earlier run's outputs, stopped after its new latent is written:
    the folder holds the earlier run's set again, unmixed (was: the new latent beside the old videos)."""
    from cascadev.pipeline import CascadeVPipeline

    out = tmp_path / "out"
    model = ["--config", TINY, "--random-init", "--quiet", "--steps", "1"]
    assert run_cli(capsys, "recon", clip, "-o", out, "--num-frames", 3, *model)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert "latent.safetensors" in before and "recon.mp4" in before

    def stopped(self, latent, chunk=None):
        raise Signalled(signal.SIGTERM)  # as a SIGTERM lands: the new latent exists, no video is done

    monkeypatch.setattr(CascadeVPipeline, "vae_decode", stopped)
    code, err = run_cli(capsys, "recon", clip, "-o", out, "--num-frames", 5, *model)
    assert code == 143, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".previous")]
    # A run killed outright (SIGKILL: no clean-up) leaves its new latent and the earlier set hidden; the
    # next run puts the earlier set back before it starts, and leaves no hidden copy when it succeeds.
    (out / "latent.safetensors").rename(out / ".latent.safetensors.previous")
    (out / "recon.mp4").rename(out / ".recon.mp4.previous")
    (out / "latent.safetensors").write_bytes(b"a new latent, half written")
    code, err = run_cli(capsys, "recon", clip, "-o", out, "--num-frames", 5, *model)
    assert code == 143, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    monkeypatch.undo()
    assert run_cli(capsys, "recon", clip, "-o", out, "--num-frames", 3, *model)[0] == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".previous")]
