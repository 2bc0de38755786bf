"""`cascadev train-ae`: the compressor + previewer and the VAE trained on the Trainer's loop (learning,
exact resume, checkpoints), and exported weights that the other commands load."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import assert_one_line_error
from safetensors.torch import load_file
from videos import write_test_video

from cascadev.cli import main
from cascadev.loading import build_pipeline, load_config
from cascadev.training.autoencoders import part_config

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each run is its own accelerate state


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i in range(2):
        write_test_video(root / f"v{i}.mp4", 6, 64, 80, fps=24.0)
    (root / "two.txt").write_text("v0.mp4\nv1.mp4\n")
    (root / "one.txt").write_text("v0.mp4\nv0.mp4\n")
    return root


def train_ae(part, work_dir, video_list, *extra, options=()):
    argv = [
        "train-ae",
        TINY,
        "--part",
        part,
        "--work-dir",
        str(work_dir),
        "--quiet",
        "--device",
        "cpu",
        "--cfg-options",
        f"video_list=['{video_list}']",
        *options,
        *map(str, extra),
    ]
    return main(argv)


def losses(work_dir):
    return [json.loads(line)["loss"] for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("part", ["compressor", "vae"])
def test_loss_falls_when_overfitting_one_clip(tmp_path, clips, part):
    options = [
        "save_model_steps=100",
        "optimizer.lr=2e-3",
        "lr_schedule_args.num_warmup_steps=0",
        "sample_size=32",
        "num_frames_per_video=2",
    ]
    assert train_ae(part, tmp_path / "w", clips / "one.txt", "--max-steps", 30, options=options) == 0
    values = losses(tmp_path / "w")
    assert len(values) == 30
    assert np.mean(values[-5:]) < 0.75 * np.mean(values[:5])


def test_resumed_run_equals_uninterrupted_run_and_exports_loadable_weights(tmp_path, clips):
    options = ["save_model_steps=2", "keep_checkpoints=0", "validation.interval=2"]
    assert train_ae("compressor", tmp_path / "full", clips / "two.txt", "--max-steps", 4, options=options) == 0
    assert train_ae("compressor", tmp_path / "split", clips / "two.txt", "--max-steps", 2, options=options) == 0
    assert train_ae("compressor", tmp_path / "split", clips / "two.txt", "--max-steps", 4, options=options) == 0
    full = load_file(tmp_path / "full" / "checkpoint-00000004" / "model.safetensors")
    split = load_file(tmp_path / "split" / "checkpoint-00000004" / "model.safetensors")
    assert full.keys() == split.keys()
    for key in full:
        assert torch.allclose(full[key], split[key], atol=1e-6), key
    from PIL import Image

    from cascadev.pictures import sheet_size

    picture = np.asarray(Image.open(tmp_path / "split" / "validation" / "step_00000004.png"))
    assert picture.shape[:2] == sheet_size(4, 2, 64, 64)  # 4 frames x (original | step 4), labelled
    # The export holds the trained weights under the config's names, and the pipeline loads them.
    cfg = load_config(TINY)
    pipe = build_pipeline(cfg, ["compressor", "previewer"], weights_dir=tmp_path / "full" / "weights")
    assert torch.equal(pipe.compressor.mapper[0].weight, full["compressor.mapper.0.weight"])
    assert torch.equal(pipe.previewer.blocks[0].weight, full["previewer.blocks.0.weight"])
    assert not torch.equal(pipe.compressor.mapper[1].running_var, torch.ones(16))  # BatchNorm statistics learned


def test_vae_export_is_a_diffusers_folder_the_pipeline_loads(tmp_path, clips, capsys):
    export = tmp_path / "weights"
    assert train_ae("vae", tmp_path / "w", clips / "two.txt", "--max-steps", 1, "--export", export) == 0
    # The last line names what --weights-dir takes, and the checkpoint beside it.
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"cascadev: wrote {export} (step 1, checkpoint {tmp_path / 'w' / 'checkpoint-00000001'})"
    assert sorted(p.name for p in export.iterdir()) == ["svd_vae"]  # tiny's weights.vae name
    vae = build_pipeline(load_config(TINY), ["vae"], weights_dir=export).vae
    trained = load_file(tmp_path / "w" / "checkpoint-00000001" / "vae" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(vae.encoder.conv_in.weight, trained["encoder.conv_in.weight"])


def test_a_work_dir_resumes_only_the_network_it_holds(tmp_path, clips, capsys):
    work = tmp_path / "w"
    assert train_ae("vae", work, clips / "two.txt", "--max-steps", 1) == 0
    assert json.loads((work / "checkpoint-00000001" / "trainer_state.json").read_text())["model"] == "vae"
    capsys.readouterr()
    assert train_ae("compressor", work, clips / "two.txt", "--max-steps", 2) == 2  # the same W for both parts
    assert_one_line_error(2, capsys.readouterr().err, str(work), "checkpoints of the vae, not of the compressor")
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-00000001"]  # left as it was
    assert train_ae("vae", work, clips / "two.txt", "--max-steps", 2) == 0  # its own network resumes


def test_decoder_fine_tune_starts_from_exported_weights_and_keeps_the_encoder(tmp_path, clips, capsys):
    first = tmp_path / "first" / "weights"
    assert train_ae("vae", tmp_path / "first", clips / "two.txt", "--max-steps", 1, "--export", first) == 0
    frozen = ["autoencoder_training.vae.frozen_modules=[encoder,quant_conv]", "data.gamma_range=(0.5,2.0)"]
    start = [f"autoencoder_training.vae.load_from={first}", *frozen]
    tuned = tmp_path / "tuned" / "weights"
    assert (
        train_ae("vae", tmp_path / "tuned", clips / "two.txt", "--max-steps", 2, "--export", tuned, options=start) == 0
    )
    before = build_pipeline(load_config(TINY), ["vae"], weights_dir=first).vae.state_dict()
    after = build_pipeline(load_config(TINY), ["vae"], weights_dir=tuned).vae.state_dict()
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert not any(key.startswith(("encoder.", "quant_conv.")) for key in changed)  # the latents a DiT knows
    assert len(changed) > 0.9 * sum(key.startswith("decoder.") for key in before)  # the decoder learns
    # Resuming rebuilds the same trainable set (the optimizer state fits) and ignores load_from.
    more = tmp_path / "tuned" / "more"
    assert (
        train_ae("vae", tmp_path / "tuned", clips / "two.txt", "--max-steps", 3, "--export", more, options=frozen) == 0
    )
    assert "resuming from checkpoint-00000002" in capsys.readouterr().err

    # The compressor part starts from its own export the same way (one step away from it, not from random).
    compressor = tmp_path / "c" / "weights"
    assert train_ae("compressor", tmp_path / "c", clips / "two.txt", "--max-steps", 1, "--export", compressor) == 0
    again = [f"autoencoder_training.compressor.load_from={compressor}"]
    assert train_ae("compressor", tmp_path / "c2", clips / "two.txt", "--max-steps", 1, options=again) == 0
    parts = ["compressor", "previewer"]
    start = build_pipeline(load_config(TINY), parts, weights_dir=compressor)
    step = build_pipeline(load_config(TINY), parts, weights_dir=tmp_path / "c2" / "weights")
    assert (step.previewer.blocks[0].weight - start.previewer.blocks[0].weight).abs().max() < 1e-2
    assert not torch.equal(step.previewer.blocks[0].weight, start.previewer.blocks[0].weight)

    capsys.readouterr()
    bad = {
        "w1": ("vae", [f"autoencoder_training.vae.load_from={tmp_path / 'nowhere'}"], ["vae.load_from", "nowhere"]),
        # a folder with a VAE in it, not a compressor
        "w2": (
            "compressor",
            [f"autoencoder_training.compressor.load_from={first}"],
            ["compressor.load_from", "effnet_encoder.safetensors"],
        ),
        "w3": ("vae", ["frozen_modules=[encoder,decodr]"], ["frozen_modules", "decodr"]),
        "w4": ("vae", ["frozen_modules=[encoder,decoder,quant_conv]"], ["frozen_modules", "nothing to train"]),
    }
    for work_dir, (part, options, needles) in bad.items():
        code = train_ae(part, tmp_path / work_dir, clips / "two.txt", "--max-steps", 1, options=options)
        assert_one_line_error(code, capsys.readouterr().err, *needles)


def test_part_overrides_and_bad_part(tmp_path, capsys):
    cfg = load_config(ROOT / "configs" / "nano.py")
    vae = part_config(cfg, "vae")
    assert (vae.train_batch_size, vae.sample_size, vae.num_frames_per_video) == (2, 64, 4)
    assert vae.data.crop == "random" and vae.data.scale_range == (4.0, 6.0)  # merged into, not replacing, data
    assert vae.optimizer.type == "AdamW" and cfg.train_batch_size == 1  # the original is left alone
    # Latent caching is the DiT's: a part's own cache_latents=True is overruled too.
    assert part_config(load_config(TINY, ["autoencoder_training.vae.cache_latents=True"]), "vae").cache_latents is False
    with pytest.raises(SystemExit) as stop:  # argparse's choices, through cascadev's one-line error
        main(["train-ae", TINY, "--part", "dit", "--work-dir", str(tmp_path / "w")])
    assert_one_line_error(stop.value.code, capsys.readouterr().err, "--part", "dit")


def test_latent_scale_is_one_over_the_std_of_the_training_clips_posterior_samples(clips, tiny_weights):
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from latent_scale import latent_scale

    from cascadev.training.trainer import build_dataset

    cfg = load_config(TINY, [f"video_list=['{clips / 'two.txt'}']"])
    scale = latent_scale(cfg, str(tiny_weights), clips=2)
    vae = build_pipeline(cfg, ["vae"], weights_dir=tiny_weights).vae
    dataset = build_dataset(cfg, 0, clips_per_batch=1)
    with torch.no_grad():  # the same clips through diffusers' posterior, in one call each
        posteriors = [vae.encode(dataset[i]["video"]).latent_dist for i in range(2)]
    means = torch.cat([p.mean.flatten() for p in posteriors])
    stds = torch.cat([p.std.flatten() for p in posteriors])
    # A sample's variance is the means' plus the posterior's own (mean of std^2): within 20% of that.
    expected = 1 / torch.sqrt(means.var() + stds.pow(2).mean())
    assert scale == pytest.approx(float(expected), rel=0.2)
    assert scale != pytest.approx(float(1 / means.std()), rel=0.2)  # the noise is in it, not the means alone


def test_an_unwritable_export_is_refused_before_training(tmp_path, clips, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    code = train_ae("vae", tmp_path / "w", clips / "two.txt", "--max-steps", 1, "--export", a_file)
    assert_one_line_error(code, capsys.readouterr().err, f"--export {a_file} is a file, not a folder")
    assert not (tmp_path / "w").exists() and a_file.read_text() == "mine"  # nothing trained, nothing left
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tmp_path / 'missing.mp4'}\n")  # fails in training, once the export folder is made
    export = ["--export", tmp_path / "exported"]
    code = train_ae("vae", tmp_path / "w2", bad, "--max-steps", 1, *export, options=["validation.interval=0"])
    assert_one_line_error(code, capsys.readouterr().err, "None of the 1 videos")
    assert not (tmp_path / "exported").exists()
