"""Training checkpoints that survive damage, full disks, pruning, pickles and signals (configs/tiny.py,
--random-init, generated clips): a checkpoint counts only through its manifest, a damaged one is moved
aside and the previous one resumed, and the bookkeeping (metrics.jsonl, TensorBoard) has no step twice."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error
from videos import write_test_video

from cascadev.cli import main
from cascadev.training import checkpoints
from cascadev.training.trainer import Trainer

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
CKPT2, CKPT4 = "checkpoint-00000002", "checkpoint-00000004"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i in range(2):
        write_test_video(root / f"v{i}.mp4", 4, 64, 64, fps=24.0)
    (root / "list.txt").write_text("v0.mp4\nv1.mp4\n")
    return root / "list.txt"


def train_argv(work_dir, video_list, max_steps, *options):
    return [
        "train",
        TINY,
        "--work-dir",
        str(work_dir),
        "--random-init",
        "--quiet",
        "--device",
        "cpu",
        "--max-steps",
        str(max_steps),
        "--cfg-options",
        f"video_list=['{video_list}']",
        "save_model_steps=2",
        "keep_checkpoints=0",
        *options,
    ]


def train(work_dir, video_list, max_steps, *options):
    return main(train_argv(work_dir, video_list, max_steps, *options))


def steps_logged(work_dir):
    return [json.loads(line)["step"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clips):
    """A work dir with checkpoints at steps 2 and 4 (copy it before changing it)."""
    work = tmp_path_factory.mktemp("trained") / "w"
    assert train(work, clips, 4) == 0
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    return work


def copy_of(trained, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    return work


def _truncate(path: Path, size: int | None = None) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2 if size is None else size)


def _keep_only_state(folder: Path) -> None:
    """What an interrupted non-atomic prune left: trainer_state.json and nothing else."""
    for path in folder.iterdir():
        if path.is_dir():  # the DiT's save_pretrained folder
            shutil.rmtree(path)
        elif path.name != checkpoints.STATE_FILE:
            path.unlink()


DIT = "dit/diffusion_pytorch_model.safetensors"  # the DiT's save_pretrained folder in a checkpoint
DAMAGE = {
    "truncated model": (DIT, lambda d: _truncate(d / DIT)),
    "empty model": (DIT, lambda d: _truncate(d / DIT, 0)),
    "deleted model": (DIT, lambda d: (d / DIT).unlink()),
    "truncated trainer state": ("trainer_state.json", lambda d: _truncate(d / "trainer_state.json")),
    "truncated optimizer": ("optimizer.bin", lambda d: _truncate(d / "optimizer.bin")),
    "missing manifest": ("manifest.json", lambda d: (d / "manifest.json").unlink()),
    "half-pruned folder": ("manifest.json", _keep_only_state),
    # A state that is no JSON object of counters, under a manifest that vouches for it (rewritten with it).
    "garbage trainer state": ("trainer_state.json", lambda d: _rewrite_state(d, "{garbage")),
    "negative step": ("trainer_state.json", lambda d: _rewrite_state(d, '{"step": -1}')),
}


def _rewrite_state(folder: Path, text: str) -> None:
    (folder / checkpoints.STATE_FILE).write_text(text)
    checkpoints.write_manifest(folder)


def _assert_resumed_from_2(work, err, damaged_file):
    """The damaged checkpoint-4 was named, kept aside, and training went on from step 2 to 5."""
    lines = [line for line in err.splitlines() if line.startswith("cascadev: ")]
    assert lines[0].startswith(f"cascadev: {CKPT4}/{damaged_file} ") and "moved it aside" in lines[0], err
    assert lines[1] == f"cascadev: resuming from {CKPT2} (step 2)", err
    assert len(lines) == 2 and "Traceback" not in err, err
    aside = [p.name for p in work.iterdir() if p.name.startswith(CKPT4 + ".damaged-")]
    assert len(aside) == 1 and not checkpoints.PATTERN.match(aside[0])  # never deleted, out of the pattern
    assert checkpoints.verify(work / CKPT4) is None  # trained again from step 2
    state = checkpoints.read_state(work / "checkpoint-00000005")
    assert state["step"] == 5 and state["micro_step"] == 5  # 2 from the checkpoint + 3 new steps
    assert steps_logged(work) == [1, 2, 3, 4, 5]  # the replayed steps 3 and 4 are not there twice
    return work / aside[0]


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_damage_kind_is_named_and_the_folder_moved_aside(trained, tmp_path, kind):
    work = copy_of(trained, tmp_path)
    damaged_file, damage = DAMAGE[kind]
    damage(work / CKPT4)
    before = sorted(p.name for p in (work / CKPT4).iterdir())
    assert [p.name for _, p in checkpoints.list_checkpoints(work)] == [CKPT2] + (
        [CKPT4] if "manifest" not in damaged_file else []
    )
    found, messages = checkpoints.resume_point(work)
    assert found == work / CKPT2
    assert len(messages) == 1 and messages[0].startswith(f"{CKPT4}/{damaged_file} ")
    aside = messages[0].split("moved it aside to ")[1]
    assert sorted(p.name for p in (work / aside).iterdir()) == before  # moved as it was, never deleted
    assert not (work / CKPT4).exists() and not checkpoints.PATTERN.match(aside)


@pytest.mark.parametrize("kind", ["deleted model", "truncated trainer state"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(trained, tmp_path, clips, capsys, kind):
    work = copy_of(trained, tmp_path)
    damaged_file, damage = DAMAGE[kind]
    damage(work / CKPT4)
    (work / ".checkpoint-00000003.deleting").mkdir()  # a prune interrupted by an earlier run
    (work / ".checkpoint-00000003.deleting" / "trainer_state.json").write_text('{"step": 3}')
    capsys.readouterr()
    assert train(work, clips, 5, "validation.interval=0") == 0
    _assert_resumed_from_2(work, capsys.readouterr().err, damaged_file)
    assert not list(work.glob(".checkpoint-*"))


def test_tensorboard_has_no_step_twice_after_resume(trained, tmp_path, clips):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = copy_of(trained, tmp_path)
    shutil.rmtree(work / CKPT4)  # killed after logging steps 3 and 4, before saving them
    assert train(work, clips, 5) == 0
    assert steps_logged(work) == [1, 2, 3, 4, 5]
    events = EventAccumulator(str(work / "logs" / "cascadev"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2, 3, 4, 5]


def test_no_good_checkpoint_starts_fresh_and_says_so(trained, tmp_path, clips, capsys):
    work = copy_of(trained, tmp_path)
    _truncate(work / CKPT4 / "optimizer.bin")
    (work / CKPT2 / "manifest.json").write_text('{"files": ')
    capsys.readouterr()
    assert train(work, clips, 1, "validation.interval=0") == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"cascadev: {CKPT4}/optimizer.bin is damaged (")
    assert lines[1].startswith(f"cascadev: {CKPT2}/manifest.json is damaged; moved it aside to {CKPT2}.damaged-")
    assert lines[2] == "cascadev: no complete checkpoint is left; starting fresh"
    assert len(lines) == 3
    assert steps_logged(work) == [1]
    assert checkpoints.read_state(work / "checkpoint-00000001")["micro_step"] == 1


# ------------------------------------------------------------------ pickles that would run code


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(folder: Path, name: str, marker: Path) -> None:
    """A crafted checkpoint: ``name`` is a pickle that runs code, and the manifest matches the files."""
    if name == "pytorch_model.bin":  # accelerate falls back to it when neither dit/ nor model.safetensors is there
        shutil.rmtree(folder / checkpoints.MODEL_DIR)
    torch.save({"state": torch.ones(2), "payload": _RunsCodeWhenUnpickled(marker)}, folder / name)
    (folder / "manifest.json").unlink()
    checkpoints.write_manifest(folder)


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])  # the second, accelerate would skip silently
def test_malicious_pickle_is_refused_in_one_line_and_the_previous_checkpoint_resumed(
    trained, tmp_path, clips, capsys, name
):
    work = copy_of(trained, tmp_path)
    marker = tmp_path / "code_was_run"
    _plant(work / CKPT4, name, marker)
    capsys.readouterr()
    assert train(work, clips, 5, "validation.interval=0") == 0
    err = capsys.readouterr().err
    assert f"cascadev: {CKPT4}/{name} is not a plain tensor checkpoint and was not loaded; moved it aside" in err
    aside = _assert_resumed_from_2(work, err, name)
    assert not marker.exists()
    control = torch.load(aside / name, weights_only=False)  # the payload is real
    control["payload"].close()
    assert marker.exists()


@pytest.mark.parametrize("name", ["scheduler.bin", "pytorch_model.bin", "random_states_0.pkl"])
def test_verify_refuses_malicious_pickles_and_accepts_intact_checkpoints(trained, tmp_path, name):
    work = copy_of(trained, tmp_path)
    marker = tmp_path / "code_was_run"
    assert checkpoints.verify(work / CKPT2) is None and checkpoints.verify(work / CKPT4) is None
    torch.save({"x": _RunsCodeWhenUnpickled(marker)}, work / CKPT2 / name)  # changed after the manifest
    assert checkpoints.verify(work / CKPT2).startswith(f"{CKPT2}/{name} is ")
    _plant(work / CKPT4, name, marker)
    assert checkpoints.verify(work / CKPT4) == f"{CKPT4}/{name} is not a plain tensor checkpoint and was not loaded"
    assert not marker.exists()


# ------------------------------------------------------------------ pruning, full disk


def test_interrupted_prune_leaves_nothing_that_looks_like_a_checkpoint(trained, tmp_path, monkeypatch):
    work = copy_of(trained, tmp_path)

    def interrupted(path, ignore_errors=False):  # Ctrl-C while the renamed folder is being deleted
        if Path(path).exists():
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoints._delete(work / CKPT2)
    monkeypatch.undo()
    assert [p for _, p in checkpoints.list_checkpoints(work)] == [work / CKPT4]
    assert (work / f".{CKPT2}.deleting" / "trainer_state.json").is_file()  # not a checkpoint by name
    checkpoints.remove_leftovers(work)
    assert not (work / f".{CKPT2}.deleting").exists()


@pytest.mark.parametrize("failure", ["safetensors", "torch"])
def test_full_disk_during_a_checkpoint_save_is_one_line_and_leaves_no_partial(
    tmp_path, clips, capsys, monkeypatch, failure
):
    import accelerate.checkpointing

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\0" * 1000)  # what was written before the space ran out
        if failure == "safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 576 vs 534")

    monkeypatch.setattr(accelerate.checkpointing, "save", save_on_a_full_disk)
    work = tmp_path / "w"
    capsys.readouterr()
    code = train(work, clips, 2, "validation.interval=0")
    assert_one_line_error(code, capsys.readouterr().err, "disk is full", str(work.resolve() / "checkpoint-00000002"))
    assert not list(work.glob("*checkpoint*"))


def test_other_write_failures_during_a_save_are_one_line_too(tmp_path, clips, capsys, monkeypatch):
    import accelerate.checkpointing

    def save_failing(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"\0" * 1000)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(accelerate.checkpointing, "save", save_failing)
    work = tmp_path / "w"
    capsys.readouterr()
    code = train(work, clips, 2, "validation.interval=0")
    assert_one_line_error(code, capsys.readouterr().err, "checkpoint-00000002", "Input/output error")
    assert not list(work.glob("*checkpoint*"))


# ------------------------------------------------------------------ signals


def test_sigint_finishes_the_step_saves_and_exits_130(tmp_path, clips, capsys, monkeypatch):
    real_step = Trainer._micro_step

    def step_then_ctrl_c(self, batch):
        if self.state["micro_step"] == 0:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of step 1
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_micro_step", step_then_ctrl_c)
    work = tmp_path / "w"
    capsys.readouterr()
    assert train(work, clips, 100, "validation.interval=0") == 130
    assert capsys.readouterr().err.splitlines()[-1] == "cascadev: interrupted, saved checkpoint-00000001"
    assert checkpoints.verify(work / "checkpoint-00000001") is None
    assert checkpoints.read_state(work / "checkpoint-00000001")["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_sigterm_saves_the_current_step_and_a_resume_continues_from_it(tmp_path, clips, capsys):
    """As `timeout` or `docker stop` preempts a run: SIGTERM after the first step."""
    work = tmp_path / "w"
    argv = train_argv(work, clips, 1000)
    argv[argv.index("save_model_steps=2")] = "save_model_steps=1000"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cascadev.cli", *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        deadline = time.time() + 120
        while not ((work / "metrics.jsonl").is_file() and (work / "metrics.jsonl").read_text()):
            assert proc.poll() is None and time.time() < deadline, (
                proc.stderr.read() if proc.poll() is not None else "slow"
            )
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    lines = err.splitlines()
    assert lines[0] == "cascadev: validation is off: validation.video is not set (validation.interval needs a clip)"
    match = re.fullmatch(r"cascadev: interrupted, saved (checkpoint-(\d+))", lines[-1])
    assert match and len(lines) == 2, err
    step = int(match.group(2))
    assert steps_logged(work) == list(range(1, step + 1))
    folder = work / match.group(1)
    assert checkpoints.verify(folder) is None and checkpoints.read_state(folder)["step"] == step
    for path in (p for p in folder.rglob("*") if p.is_file()):  # the DiT's folder included (written 0600)
        assert path.stat().st_mode & 0o777 == 0o644, path.name

    capsys.readouterr()
    assert train(work, clips, step + 1, "save_model_steps=1000", "validation.interval=0") == 0
    assert capsys.readouterr().err.splitlines() == [f"cascadev: resuming from {match.group(1)} (step {step})"]
    assert steps_logged(work) == list(range(1, step + 2))
    assert checkpoints.read_state(work / f"checkpoint-{step + 1:08d}")["micro_step"] == step + 1


def test_metrics_log_keeps_the_resumed_steps_and_drops_replayed_and_cut_lines(tmp_path):
    from cascadev.training import metrics_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n\n{"step": 4, "lo')  # killed while writing step 4
    assert metrics_log.keep_until(log, 2) == 3  # step 3, the blank line, the cut line
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert metrics_log.keep_until(log, 2) == 0 and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


# ------------------------------------------------------------------ the previous checkpoint layout


def _to_previous_layout(folder: Path) -> None:
    """The checkpoint as the previous layout wrote it: the DiT as accelerate's top-level model.safetensors."""
    (folder / DIT).rename(folder / checkpoints.MODEL_FILE)
    shutil.rmtree(folder / checkpoints.MODEL_DIR)
    (folder / "manifest.json").unlink()
    checkpoints.write_manifest(folder)


def test_previous_layout_checkpoint_resumes_exactly_and_loads_as_ckpt(trained, tmp_path, clips, capsys):
    from safetensors.torch import load_file

    from cascadev.loading import build_pipeline, load_config

    new, old = copy_of(trained, tmp_path / "new"), copy_of(trained, tmp_path / "old")
    _to_previous_layout(old / CKPT4)
    capsys.readouterr()
    for work in (new, old):
        assert train(work, clips, 5, "validation.interval=0") == 0
        assert f"cascadev: resuming from {CKPT4} (step 4)" in capsys.readouterr().err.splitlines()
    resumed, reference = load_file(old / "checkpoint-00000005" / DIT), load_file(new / "checkpoint-00000005" / DIT)
    assert resumed.keys() == reference.keys()
    assert all(torch.allclose(resumed[k], reference[k], atol=1e-6) for k in reference)  # the old weights were loaded
    weights = load_file(old / CKPT4 / checkpoints.MODEL_FILE)
    for ckpt in (old / CKPT4, old / CKPT4 / checkpoints.MODEL_FILE, new / CKPT4):  # a checkpoint folder is its DiT
        dit = build_pipeline(load_config(TINY), ["dit"], random_init=True, ckpt=ckpt).dit
        assert all(torch.equal(dit.state_dict()[k], weights[k]) for k in weights), ckpt


def _snapshot(folder: Path) -> dict:
    """Every path under ``folder`` (the folder too) with its mtime and, for a file, its bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in [folder, *folder.rglob("*")]
    }


def test_a_run_with_nothing_to_train_leaves_the_work_dir_as_it_was(trained, tmp_path, clips, capsys):
    """Resumed at its --max-steps: no config copy rewritten, no TensorBoard file, no metrics.jsonl rewrite."""
    work = copy_of(trained, tmp_path)
    with open(work / "metrics.jsonl", "a") as log:  # a step logged by a run killed before it saved step 5
        log.write('{"step": 5, "loss": 0.5}\n')
    before = _snapshot(work)
    time.sleep(0.01)  # a rewrite, even of the same bytes, shows in the mtimes
    capsys.readouterr()
    assert train(work, clips, 4) == 0
    assert f"nothing to train: {CKPT4} is at step 4" in capsys.readouterr().err
    assert _snapshot(work) == before
