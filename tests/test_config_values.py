"""Values that used to slip through: config keys against the schema, seeds, sizes, the work dir."""

import errno
import tempfile
from pathlib import Path

import pytest
from cli_checks import assert_one_line_error
from videos import write_test_video

from cascadev.cli import build_parser, main
from cascadev.config_schema import SCHEMA, validate_config
from cascadev.errors import CascadeVError
from cascadev.loading import load_config
from cascadev.reconstruct import SamplingArgs

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = str(CONFIGS / "tiny.py")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def parse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert_one_line_error(exit_.value.code, err)
    return err


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_test_video(path, 2, 32, 32)
    return path


@pytest.mark.parametrize("config", ["tiny.py", "s1024_effn_f32.py"])
def test_shipped_configs_pass_the_schema(config):
    load_config(CONFIGS / config)


def test_every_schema_key_exists_in_the_released_config():
    cfg = load_config(CONFIGS / "s1024_effn_f32.py").to_dict()
    for key in SCHEMA:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]


@pytest.mark.parametrize(
    "option,key",
    [
        ("model.depth=abc", "model.depth"),
        ("sampling.steps=abc", "sampling.steps"),
        ("scale_factor=abc", "scale_factor"),
        ("model=abc", "model"),
        ("optimizer.lr='abc'", "optimizer.lr"),
        ("sampling.vae_chunk=0", "sampling.vae_chunk"),
        ("save_model_steps=0", "save_model_steps"),
        ("log_interval=0", "log_interval"),
        ("train_batch_size=0", "train_batch_size"),
        ("model.depth=-1", "model.depth"),
        ("sampling.steps=0", "sampling.steps"),
        ("sampling.tile_stride=0", "sampling.tile_stride"),
        ("seed=-1", "seed"),
        ("mixed_precision=fp8", "mixed_precision"),
        ("model.pred_sigma=1", "model.pred_sigma"),
        ("scale_factor=inf", "scale_factor"),
        ("schedule.prediction_type=sample", "schedule.prediction_type"),
        ("sampling.attention_backend=xformers", "sampling.attention_backend"),
        ("sampling.compile=fast", "sampling.compile"),
        ("schedule.beta_schedule=scaled_linear", "schedule.beta_schedule"),
        ("data.scale_range=[1.0,1.2,1.4]", "data.scale_range"),  # the training loss has no such betas
    ],
)
def test_bad_config_values_name_the_key(tmp_path, capsys, clip, option, key):
    code, err = run_cli(
        capsys,
        "encode",
        clip,
        "-o",
        tmp_path / "l.safetensors",
        "--config",
        TINY,
        "--random-init",
        "--cfg-options",
        option,
    )
    assert_one_line_error(code, err, f"config key {key} must be")
    assert not (tmp_path / "l.safetensors").exists()


@pytest.mark.parametrize("option", ["=3", "model..depth=3", ".x=1"])
def test_empty_cfg_options_key(tmp_path, capsys, clip, option):
    code, err = run_cli(
        capsys,
        "encode",
        clip,
        "-o",
        tmp_path / "l.safetensors",
        "--config",
        TINY,
        "--random-init",
        "--cfg-options",
        option,
    )
    assert_one_line_error(code, err, "empty key", option)


def test_key_below_a_plain_value(tmp_path, capsys, clip):
    code, err = run_cli(
        capsys,
        "encode",
        clip,
        "-o",
        tmp_path / "l.safetensors",
        "--config",
        TINY,
        "--random-init",
        "--cfg-options",
        "scale_factor.x=1",
    )
    assert_one_line_error(code, err, "scale_factor.x", "not a section")


def test_train_checks_the_config_before_touching_the_work_dir(tmp_path, capsys):
    work = tmp_path / "work"
    code, err = run_cli(
        capsys,
        "train",
        TINY,
        "--work-dir",
        work,
        "--random-init",
        "--device",
        "cpu",
        "--cfg-options",
        "train_batch_size=0",
    )
    assert_one_line_error(code, err, "config key train_batch_size")
    assert not work.exists()


def test_unknown_extra_keys_stay_allowed():
    cfg = load_config(TINY, ["my_note='hello'", "sampling.my_option=3"])
    assert cfg.my_note == "hello" and cfg.sampling.my_option == 3


def test_pixart_train_sampling_steps_must_agree_with_the_shared_schedule():
    load_config(TINY, ["train_sampling_steps=1000"])  # a PixArt config's value, the same: accepted
    load_config(TINY, ["train_sampling_steps=500", "schedule.num_train_timesteps=500"])
    with pytest.raises(
        CascadeVError, match=r"train_sampling_steps=500 disagrees with schedule.num_train_timesteps=1000"
    ):
        load_config(TINY, ["train_sampling_steps=500"])


def test_a_config_without_the_model_sections():
    with pytest.raises(CascadeVError, match="lacks the key model"):
        validate_config({"scale_factor": 0.1})


def test_work_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "work"
    blocker.write_text("notes")
    code, err = run_cli(capsys, "train", TINY, "--work-dir", blocker, "--random-init", "--device", "cpu")
    assert_one_line_error(code, err, "--work-dir", "is a file")
    assert blocker.read_text() == "notes"


def test_work_dir_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code, err = run_cli(capsys, "train", TINY, "--work-dir", tmp_path / "work", "--random-init", "--device", "cpu")
    assert_one_line_error(code, err, "--work-dir", "Read-only file system")


@pytest.mark.parametrize("value", ["-1", str(2**63), "1.5", "abc"])
def test_seed_is_a_non_negative_integer_below_2_63(tmp_path, capsys, clip, value):
    out = tmp_path / "out"
    err = parse_error(capsys, "recon", clip, "-o", out, "--seed", value, "--config", TINY, "--random-init")
    assert "--seed" in err and "2**63" in err
    assert not out.exists()


def test_largest_seed_is_accepted():
    args = build_parser().parse_args(["decode", "l.safetensors", "-o", "v.mp4", "--seed", str(2**63 - 1)])
    assert SamplingArgs(seed=args.seed).seed == 2**63 - 1
    with pytest.raises(CascadeVError, match="seed"):
        SamplingArgs(seed=-1)


def test_size_is_bounded(tmp_path, capsys, clip, monkeypatch):
    err = parse_error(capsys, "encode", clip, "-o", tmp_path / "l.safetensors", "--size", "100000")
    assert "--size" in err and "8192" in err and "GiB" in err and "CASCADEV_MAX_SIZE" in err
    monkeypatch.setenv("CASCADEV_MAX_SIZE", "200000")
    assert build_parser().parse_args(["encode", str(clip), "-o", "l", "--size", "100000"]).size == 100000


def test_upscale_output_size_is_bounded(tmp_path, capsys, clip):
    out = tmp_path / "big.mp4"
    code, err = run_cli(capsys, "upscale", clip, "-o", out, "--scale", "1000", "--config", TINY, "--random-init")
    assert_one_line_error(code, err, "32000x32000", "8192")
    assert not out.exists()


@pytest.mark.parametrize(
    "options,needle",
    [
        (
            ["model.lats_per_vid=3"],
            "config key model.attn_strides has the item [2, 1]: ts 2 does not divide the 3 frames of a window",
        ),
        (["model.num_heads=7"], "hidden_size 96 is not divisible by num_heads 7"),
        (["model.hidden_size=128"], "cannot be split into 1D + 2D sin-cos embeddings"),
        (["model.patch_size=3"], "input_size 8 is not a multiple of patch_size 3"),
        (["vae.block_out_channels=[]"], "config key vae.block_out_channels must be a non-empty list"),
        (["model.attn_strides=[[1,2"], "the value '[[1,2' has unbalanced brackets"),
        (["ema=dict(enabled=True,decay=0.9)"], "cannot be parsed; give a section's keys one by one (ema.name=value)"),
        (
            ["sampling.steps=1001", "sampling.scheduler=ddim"],
            "1001 sampling steps are more than the noise schedule's 1000",
        ),
    ],
)
def test_values_that_fit_the_schema_but_not_each_other_stop_before_any_work(tmp_path, capsys, clip, options, needle):
    out = tmp_path / "r"
    code, err = run_cli(capsys, "recon", clip, "-o", out, "--config", TINY, "--random-init", "--cfg-options", *options)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "strides,needle",
    [
        ("[[1,2,3]]", "[1, 2, 3]: it must be None or a pair [ts, xs] of whole numbers of at least 1"),
        ("[[1.5,2]]", "[1.5, 2]: it must be None or a pair"),
        ("[None,5]", "5: it must be None or a pair"),
        ("[[0,1]]", "[0, 1]: it must be None or a pair"),
        ("[[3,1]]", "[3, 1]: ts 3 does not divide the 4 frames of a window (lats_per_vid)"),
        ("[[1,3]]", "[1, 3]: xs 3 does not divide the 4 tokens per side (input_size / patch_size)"),
    ],
)
def test_attn_strides_items_the_dit_cannot_run(tmp_path, capsys, clip, strides, needle):
    """Each item is None or [ts, xs] dividing tiny's window (4 frames of 4x4 tokens); named with its file."""
    config = tmp_path / "edited.py"
    config.write_text(f"_base_ = [{TINY!r}]\nmodel = dict(attn_strides={strides})\n")
    option = f"model.attn_strides={strides}"
    for argv, source in (
        (["--config", config], "(in config edited.py)"),
        (["--config", TINY, "--cfg-options", option], "(in config tiny.py with --cfg-options)"),
    ):
        out = tmp_path / "r"
        code, err = run_cli(capsys, "recon", clip, "-o", out, "--random-init", *argv)
        assert_one_line_error(code, err, f"config key model.attn_strides has the item {needle}", source)
        assert not out.exists()
    load_config(TINY, ["model.attn_strides=[None,[4,2]]"])  # ts capped at a 2x-mode window's single frame


def test_training_clips_must_be_the_dits_window_and_autoencoder_crops_its_grid(tmp_path, capsys, clip):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clip}\n")
    common = ["--random-init", "--device", "cpu", "--quiet", "--cfg-options", f"video_list=['{listing}']"]
    code, err = run_cli(capsys, "train", TINY, "--work-dir", tmp_path / "w", *common, "num_frames_per_video=8")
    assert_one_line_error(code, err, "num_frames_per_video=8 and sample_size=64 must be the DiT's window")
    code, err = run_cli(
        capsys,
        "train-ae",
        TINY,
        "--part",
        "vae",
        "--work-dir",
        tmp_path / "w2",
        *common[1:],
        "autoencoder_training.vae.sample_size=30",
    )
    assert_one_line_error(code, err, "sample_size 30 must be a multiple of 8 to train the vae")
    assert not (tmp_path / "w").exists() and not (tmp_path / "w2").exists()


def test_a_scheduler_that_cannot_sample_the_schedule_stops_before_any_work(tmp_path, capsys, clip):
    out = tmp_path / "r"
    code, err = run_cli(
        capsys, "recon", clip, "-o", out, "--config", TINY, "--random-init", "--preset", "release",
        "--scheduler", "dpm_solver", "--cfg-options", "schedule.beta_schedule=squaredcos_cap_v2",
    )  # fmt: skip
    assert_one_line_error(code, err, "the dpm_solver_pixart scheduler cannot sample this noise schedule")
    assert not out.exists()


def test_validation_steps_beyond_the_schedule_stop_training_before_it_starts(tmp_path, capsys, clip):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clip}\n")
    options = [f"video_list=['{listing}']", f"validation.video={clip}", "validation.steps=5000"]
    code, err = run_cli(capsys, "train", TINY, "--work-dir", tmp_path / "w", "--random-init", "--device", "cpu",
                        "--quiet", "--cfg-options", *options)  # fmt: skip
    assert_one_line_error(code, err, "5000 sampling steps are more than the noise schedule's 1000")
    assert not (tmp_path / "w").exists()
