"""`cascadev train` with configs/tiny.py on generated clips: it learns, resumes exactly, checkpoints
atomically, survives bad data, runs data-parallel over gloo, and its checkpoints decode."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from videos import write_test_video

from cascadev.cli import main
from cascadev.training import checkpoints

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
DIT_WEIGHTS = "dit/diffusion_pytorch_model.safetensors"  # a checkpoint's DiT: a save_pretrained folder


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i in range(4):
        write_test_video(root / f"v{i}.mp4", 6 + i, 64, 80, fps=24.0)
    (root / "four.txt").write_text("".join(f"v{i}.mp4\n" for i in range(4)))
    (root / "one.txt").write_text("v0.mp4\nv0.mp4\n")  # one clip, twice: a batch of two
    return root


def train(work_dir, video_list, *extra, options=()):
    argv = [
        "train",
        TINY,
        "--work-dir",
        str(work_dir),
        "--random-init",
        "--quiet",
        "--device",
        "cpu",
        "--cfg-options",
        f"video_list=['{video_list}']",
        *options,
        *map(str, extra),
    ]
    return main(argv)


def metrics(work_dir):
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_loss_falls_when_overfitting_one_clip(tmp_path, clips, prediction):
    options = ["cache_latents=True", "save_model_steps=100", f"schedule.prediction_type={prediction}"]
    assert train(tmp_path / "w", clips / "one.txt", "--max-steps", 30, options=options) == 0
    losses = [m["loss"] for m in metrics(tmp_path / "w")]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    assert (tmp_path / "w" / "latent_cache" / "00000000.safetensors").is_file()


def test_the_latent_cache_holds_several_epochs_of_clips(tmp_path, clips):
    """latent_cache_epochs=2: the cache holds two versions of each of the 4 items (different clips), and
    the second epoch trains on the second versions."""
    options = ["cache_latents=True", "latent_cache_epochs=2", "save_model_steps=100"]
    # 4 videos, batch 2: 2 steps per epoch, so steps 3-4 are epoch 1 and step 5 is epoch 2 (version 0).
    assert train(tmp_path / "w", clips / "four.txt", "--max-steps", 5, options=options) == 0
    cache = sorted((tmp_path / "w" / "latent_cache").glob("*.safetensors"))
    assert [p.stem for p in cache] == [f"{i:08d}" for i in range(8)]
    first, second = load_file(cache[0]), load_file(cache[4])  # item 0 of epochs 0 and 1
    assert first.keys() == second.keys()
    assert not all(torch.allclose(first[k], second[k]) for k in first)
    indices = [set(m["indices"]) for m in metrics(tmp_path / "w")]
    assert indices[0] | indices[1] == {0, 1, 2, 3}
    assert indices[2] | indices[3] == {4, 5, 6, 7}
    assert indices[4] <= {0, 1, 2, 3}


def test_the_configs_schedule_sets_the_training_target_and_noise(tmp_path, clips):
    """Same seed, data and network: only the target (prediction_type) or the noise levels (the betas the
    samplers use too) differ, so the first losses differ."""
    first = {}
    for name, option in (
        ("epsilon", "schedule.prediction_type=epsilon"),
        ("v_prediction", "schedule.prediction_type=v_prediction"),
        ("beta_end", "schedule.beta_end=0.012"),
    ):
        assert (
            train(tmp_path / name, clips / "one.txt", "--max-steps", 1, options=["save_model_steps=100", option]) == 0
        )
        first[name] = metrics(tmp_path / name)[0]["loss"]
    assert first["epsilon"] != pytest.approx(first["v_prediction"], rel=1e-3)
    assert first["epsilon"] != pytest.approx(first["beta_end"], rel=1e-3)


def test_resumed_run_equals_uninterrupted_run(tmp_path, clips, capsys):
    options = ["save_model_steps=2", "keep_checkpoints=0", "joint_training=0.5", "ema.enabled=True"]
    assert train(tmp_path / "full", clips / "four.txt", "--max-steps", 4, options=options) == 0
    assert train(tmp_path / "split", clips / "four.txt", "--max-steps", 2, options=options) == 0
    assert train(tmp_path / "split", clips / "four.txt", "--max-steps", 4, options=options) == 0  # resumes at 2
    full, split = tmp_path / "full" / "checkpoint-00000004", tmp_path / "split" / "checkpoint-00000004"
    ema_weights = "dit_ema/diffusion_pytorch_model.safetensors"  # a DiT folder: what --ckpt loads
    for name in (DIT_WEIGHTS, ema_weights):
        a, b = load_file(full / name), load_file(split / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), key
    assert [m["step"] for m in metrics(tmp_path / "split")] == [1, 2, 3, 4]
    # Run again: nothing left to train, and no "wrote" line; fewer steps than its checkpoint is refused.
    capsys.readouterr()
    assert train(tmp_path / "split", clips / "four.txt", "--max-steps", 4, options=options) == 0
    out, err = capsys.readouterr()
    assert out == "" and "nothing to train: checkpoint-00000004 is at step 4" in err
    assert train(tmp_path / "split", clips / "four.txt", "--max-steps", 3, options=options) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cascadev: error: --max-steps 3 is below step 4 of "), err
    assert [m["step"] for m in metrics(tmp_path / "split")] == [1, 2, 3, 4]
    state = json.loads((split / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["micro_step"] == 4
    assert not torch.equal(
        load_file(full / DIT_WEIGHTS)["final_layer.linear.weight"],
        load_file(full / ema_weights)["final_layer.linear.weight"],
    )
    # Saving the EMA weights swaps them in and back out: training goes on exactly as without EMA.
    plain = ["save_model_steps=2", "keep_checkpoints=0", "joint_training=0.5"]
    assert train(tmp_path / "plain", clips / "four.txt", "--max-steps", 4, options=plain) == 0
    a, b = load_file(full / DIT_WEIGHTS), load_file(tmp_path / "plain" / "checkpoint-00000004" / DIT_WEIGHTS)
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    assert load_file(full / ema_weights).keys() == a.keys()  # a whole DiT, buffers too
    assert (full / "dit_ema" / "config.json").read_text() == (full / "dit" / "config.json").read_text()


def test_checkpoints_are_atomic_and_pruned(tmp_path, clips):
    work = tmp_path / "w"
    work.mkdir()
    (work / ".checkpoint-00000009.partial").mkdir()  # a run killed while saving
    (work / "checkpoint-00000007").mkdir()  # not complete: no manifest, so moved aside, not resumed
    assert train(work, clips / "four.txt", "--max-steps", 3, options=["save_model_steps=1", "keep_checkpoints=2"]) == 0
    names = sorted(p.name for p in work.iterdir() if "checkpoint" in p.name)
    assert names[:2] == ["checkpoint-00000002", "checkpoint-00000003"]
    assert len(names) == 3 and names[2].startswith("checkpoint-00000007.damaged-")
    assert [m["step"] for m in metrics(work)][0] == 1  # the incomplete folder was not resumed from
    effective = (work / "config.py").read_text()
    assert "four.txt" in effective and "keep_checkpoints = 2" in effective
    assert list((work / "logs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    record = metrics(work)[-1]
    for key in ("step", "loss", "grad_norm", "lr", "samples_per_sec", "global_batch"):
        assert key in record
    assert record["global_batch"] == 2


def test_trained_checkpoint_decodes_and_load_from_starts_from_it(tmp_path, clips, tiny_weights):
    work = tmp_path / "w"
    assert (
        train(
            work,
            clips / "four.txt",
            "--max-steps",
            2,
            options=["validation.video=" + str(clips / "v3.mp4"), "validation.interval=2"],
        )
        == 0
    )
    ckpt = work / "checkpoint-00000002" / "dit"
    from PIL import Image

    from cascadev.pictures import sheet_size

    picture = np.asarray(Image.open(work / "validation" / "step_00000002.png"))
    assert picture.shape[:2] == sheet_size(4, 3, 64, 64)  # 4 frames x (original | preview | step 2), labelled
    assert (picture[:16] < 128).any()  # the column titles
    latent = tmp_path / "l.safetensors"
    common = ["--config", TINY, "--weights-dir", str(tiny_weights), "--quiet"]
    assert main(["encode", str(clips / "v0.mp4"), "-o", str(latent), *common]) == 0
    assert (
        main(["decode", str(latent), "-o", str(tmp_path / "v.mp4"), "--ckpt", str(ckpt), "--steps", "1", *common]) == 0
    )

    again = tmp_path / "again"
    assert train(again, clips / "four.txt", "--max-steps", 1, options=[f"load_from={ckpt}", "optimizer.lr=1e-12"]) == 0
    start, trained = load_file(again / "checkpoint-00000001" / DIT_WEIGHTS), load_file(ckpt / checkpoints.MODEL_WEIGHTS)
    assert all(torch.allclose(start[k], trained[k], atol=1e-9) for k in trained)
    assert train(tmp_path / "zero", clips / "four.txt", "--max-steps", 1, options=["optimizer.lr=0"]) == 2


def test_validation_samples_as_build_pipeline_does_and_checkpoints_hold_a_pretrained_folder(
    tmp_path, clips, tiny_weights, monkeypatch
):
    """Validation is build_pipeline's sampler on the live DiT: its frames are those of build_pipeline with the
    checkpoint's DiT (a save_pretrained folder) and the same seed."""
    from cascadev.loading import build_pipeline, load_config
    from cascadev.models import CascadeDiT
    from cascadev.training.trainer import Trainer

    seen = []
    validation_recon = Trainer.validation_recon
    monkeypatch.setattr(Trainer, "validation_recon", lambda self: seen.append(validation_recon(self)) or seen[-1])
    work = tmp_path / "w"
    argv = [
        "train",
        TINY,
        "--work-dir",
        str(work),
        "--weights-dir",
        str(tiny_weights),
        "--quiet",
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--cfg-options",
        f"video_list=['{clips / 'four.txt'}']",
        "validation.interval=2",
        f"validation.video={clips / 'v3.mp4'}",
    ]
    assert main(argv) == 0
    ((clip, _, recon, _),) = seen
    folder = work / "checkpoint-00000002" / checkpoints.MODEL_DIR
    assert {"dit/config.json", DIT_WEIGHTS} <= set(json.loads((folder.parent / "manifest.json").read_text())["files"])
    assert not (folder.parent / "model.safetensors").exists()  # the DiT is saved once
    dit = CascadeDiT.from_pretrained(str(folder))
    assert dit.config.hidden_size == 96 and dit.config.lats_per_vid == 4  # tiny's model, from config.json
    cfg = load_config(TINY)
    frames = clip  # (T, 3, S, S)

    def run(ckpt):
        pipe = build_pipeline(cfg, weights_dir=tiny_weights, ckpt=ckpt)
        latent = pipe.encode(frames)
        return torch.cat(
            list(
                pipe.decode(
                    lambda a, b: latent[:, a:b],
                    latent.shape[1],
                    steps=cfg.validation.steps,
                    scheduler=cfg.validation.scheduler,
                    seed=0,
                    progress=False,
                )
            )
        )

    expected = run(folder)
    assert recon.shape == expected.shape == frames.shape
    assert torch.allclose(recon, expected, atol=1e-4), (recon - expected).abs().max()
    assert (recon - run(None)).abs().max() > 1e-3  # the untrained DiT gives other frames: the live weights are used


def test_bad_videos_are_skipped_counted_and_all_bad_is_an_error(tmp_path, clips, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{bad}\n{clips / 'v1.mp4'}\n{clips / 'v2.mp4'}\n{clips / 'v3.mp4'}\n")
    with pytest.warns(UserWarning, match="bad.mp4"):
        assert train(tmp_path / "w", mixed, "--max-steps", 2, options=["log_interval=2"]) == 0
    assert metrics(tmp_path / "w")[-1]["skipped_videos"] >= 1

    all_bad = tmp_path / "all_bad.txt"
    all_bad.write_text(f"{bad}\n{bad}\n")
    capsys.readouterr()
    assert train(tmp_path / "w2", all_bad, "--max-steps", 1) == 2
    err = capsys.readouterr().err
    assert "could be read" in err and "Traceback" not in err
    assert not (tmp_path / "w2").exists()  # stopped at its first batch: no config.py and empty logs left
    assert train(tmp_path / "w3", tmp_path / "missing.txt", "--max-steps", 1) == 2
    assert not (tmp_path / "w3").exists()  # the folder this run made is gone with it: no config.py alone
    (tmp_path / "mine").mkdir()
    assert train(tmp_path / "mine", tmp_path / "missing.txt", "--max-steps", 1) == 2
    assert (tmp_path / "mine").is_dir()  # one the user made stays


def test_two_processes_split_the_batch_and_stay_in_sync(tmp_path, clips):
    """train_vae.sh with USE_CPU=1 GPUS=2: accelerate launches 2 gloo processes. Run from another folder,
    its relative WORK_DIR is that folder's (was: the repository's)."""
    work = tmp_path / "w"
    env = dict(
        os.environ,
        USE_CPU="1",
        GPUS="2",
        CONFIG=TINY,
        WORK_DIR="w",
        MASTER_PORT="29617",
        ACCELERATE=str(Path(sys.executable).with_name("accelerate")),
        OMP_NUM_THREADS="1",
    )
    cmd = [
        "bash",
        str(ROOT / "train_vae.sh"),
        "--max-steps",
        "2",
        "--random-init",
        "--quiet",
        "--cfg-options",
        f"video_list=['{clips / 'four.txt'}']",
        "lr_schedule_args.num_warmup_steps=10",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics(work)
    assert [r["global_batch"] for r in records] == [4, 4]
    for record in records:  # ranks 0 and 1 each had 2 clips of the step's 4, all different
        assert len(record["indices"]) == 4 and len(set(record["indices"])) == 4
    sums = json.loads((work / "replica_checksums.json").read_text())["checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    # The warm-up counts optimizer steps, whatever the number of processes (tiny's lr 3e-4, over 10 steps).
    assert [r["lr"] for r in records] == pytest.approx([3e-4 * step / 10 for step in (1, 2)])


def test_resize_condition_adamw_accumulation_bf16_and_warmup(tmp_path, clips):
    """Paper Fig. 4b's condition (8 input channels) with the other optimisation options."""
    work = tmp_path / "w"
    options = [
        "condition=resize",
        "optimizer.type=AdamW",
        "optimizer.lr=1e-3",
        "optimizer.betas=(0.9,0.999)",
        "optimizer.eps=1e-8",
        "gradient_accumulation_steps=2",
        "mixed_precision=bf16",
        "fp32_attention=True",
        "lr_schedule_args.num_warmup_steps=4",
    ]
    assert train(work, clips / "four.txt", "--max-steps", 2, options=options) == 0
    records = metrics(work)
    assert [r["lr"] for r in records] == pytest.approx([2.5e-4, 5e-4])  # linear warm-up over 4 steps
    assert records[-1]["global_batch"] == 4  # 2 per process x 2 accumulated micro-batches
    state = json.loads((work / "checkpoint-00000002" / "trainer_state.json").read_text())
    assert state["micro_step"] == 4
    weights = load_file(work / "checkpoint-00000002" / DIT_WEIGHTS)
    assert weights["x_embedder.proj.weight"].shape[1] == 8


def test_a_one_video_list_fills_the_batch_with_several_clips(tmp_path, clips):
    """A one-line list (the README's smoke run, example/train.demo.txt) trains: its video gives both clips."""
    single = tmp_path / "single.txt"
    single.write_text(f"{clips / 'v3.mp4'}\n")
    assert train(tmp_path / "w", single, "--max-steps", 2) == 0
    records = metrics(tmp_path / "w")
    assert [r["step"] for r in records] == [1, 2]
    assert all(sorted(r["indices"]) == [0, 1] for r in records)  # two clips of the one video per batch


def test_clips_per_video_draws_distinct_clips_of_each_video(clips):
    from cascadev.data import VideoClipDataset

    data = VideoClipDataset([str(clips / "v3.mp4")], 4, 1, 32, clips_per_video=3)
    assert len(data) == 3
    items = [data[i] for i in range(3)]
    assert [item["source_index"] for item in items] == [0, 0, 0]
    assert not any(item["substituted"] for item in items)
    assert not torch.equal(items[0]["video"], items[1]["video"]) or not torch.equal(
        items[1]["video"], items[2]["video"]
    )
    with pytest.raises(IndexError):
        data[3]


def test_a_warning_is_one_line_like_the_errors_and_no_work_dir_is_left(tmp_path):
    """The release config on a CPU: its fp16 recipe is dropped with a warning, then the weights are missing."""
    cmd = [sys.executable, "-m", "cascadev", "train", str(ROOT / "configs" / "s1024_effn_f32.py")]
    cmd += ["--work-dir", str(tmp_path / "w"), "--device", "cpu", "--max-steps", "1"]
    cmd += ["--cfg-options", f"video_list=['{ROOT / 'example' / 'train.demo.txt'}']"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # no pretrained/ here
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == "cascadev: warning: fp16 mixed precision needs a GPU; training in fp32 on the CPU"
    assert len(lines) == 2 and lines[1].startswith("cascadev: error: missing weights: pretrained/svd_vae")
    assert not (tmp_path / "w").exists()


def test_configs_a_run_cannot_use_are_one_line_before_training(tmp_path, clips, capsys):
    from cli_checks import assert_one_line_error

    one = clips / "one.txt"
    bad = {
        "betas": (["optimizer.betas=[0.9,0.999]"], "CAME takes 3 betas and 2 eps"),
        "unknown": (["optimizer.foo=1"], "the config's optimizer CAME cannot be built: TypeError"),
        "adamw": (["optimizer.type=AdamW", "optimizer.eps=[1e-8,1e-8]"], "AdamW takes 2 betas and 1 eps"),
        "cache": (["cache_latents=True", f"latent_cache_dir={clips / 'v0.mp4'}"], "is not a writable folder"),
        "video": ([f"validation.video={one}"], f"validation.video: {one} is not a readable video"),
    }
    capsys.readouterr()
    for name, (options, needle) in bad.items():
        code = train(tmp_path / name, one, "--max-steps", 1, options=["save_model_steps=100", *options])
        assert_one_line_error(code, capsys.readouterr().err, needle)


def test_a_resume_with_another_optimizer_or_new_ema_is_refused_in_one_line(tmp_path, clips, capsys):
    from cli_checks import assert_one_line_error

    work = tmp_path / "w"
    assert train(work, clips / "one.txt", "--max-steps", 1, options=["save_model_steps=1"]) == 0
    capsys.readouterr()
    for options, needle in (
        (["optimizer.type=AdamW", "optimizer.betas=[0.9,0.999]", "optimizer.eps=1e-8"], "was trained with CAME"),
        (["ema.enabled=True"], "holds no EMA weights (trained with ema.enabled=False)"),
    ):
        code = train(work, clips / "one.txt", "--max-steps", 2, options=["save_model_steps=1", *options])
        assert_one_line_error(code, capsys.readouterr().err, "checkpoint-00000001", needle)


def test_a_missing_load_from_names_the_release_only_when_it_is_the_releases(tmp_path, clips, capsys, monkeypatch):
    from cli_checks import assert_one_line_error

    from cascadev.config_defaults import shipped

    monkeypatch.chdir(tmp_path)  # the release's relative path is missing here even where its weights are installed
    capsys.readouterr()
    for start, release in ((shipped()["load_from"], True), (str(tmp_path / "mine.safetensors"), False)):
        start = start[0] if isinstance(start, list) else start
        code = train(tmp_path / "w", clips / "one.txt", "--max-steps", 1, options=[f"load_from={start}"])
        err = capsys.readouterr().err
        assert_one_line_error(code, err, f"load_from {start} does not exist")
        assert ("pretrained/download.sh" in err) is release
