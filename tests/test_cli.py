"""`cascadev encode | decode | recon` end to end with configs/tiny.py, and every kind of bad input."""

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
from cascadev.latent_io import LatentReader
from cascadev.video_io import VideoReader

TINY = str(Path(__file__).parents[1] / "configs" / "tiny.py")


def run_cli(capsys, *argv):
    code = exit_status(main, [str(a) for a in argv])  # an option's value is checked by the parser (SystemExit)
    captured = capsys.readouterr()
    return code, captured.err


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_test_video(path, 7, 70, 100, fps=25.0)
    return path


def test_recon_random_init_writes_the_five_outputs(tmp_path, capsys, clip):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "recon", clip, "-o", out, "--config", TINY, "--random-init", "--quiet", "--crf", 0)
    assert code == 0, err
    assert leftovers(out) == [
        "compare.mp4",
        "compare.png",
        "latent.safetensors",
        "original.mp4",
        "preview.mp4",
        "recon.mp4",
    ]
    for name, width in [("recon.mp4", 100), ("preview.mp4", 100), ("original.mp4", 100), ("compare.mp4", 300)]:
        video = VideoReader(out / name)
        assert (video.num_frames, video.height, video.width) == (7, 70, width)
        assert abs(video.fps - 25.0) < 1e-3
    latent = LatentReader(out / "latent.safetensors")
    assert latent.shape == (16, 7, 3, 4)  # 70x100 padded to 96x128
    meta = latent.meta
    assert (meta.height, meta.width, meta.source_height, meta.source_width, meta.start) == (70, 100, 70, 100, 0)
    from PIL import Image

    from cascadev.pictures import sheet_size, tile_origin

    sheet = np.asarray(Image.open(out / "compare.png"))
    assert sheet.shape == (*sheet_size(4, 3, 70, 100), 3)  # 4 frames x (original | preview | recon), labelled
    top, left = tile_origin(1, 1, 70, 100)
    assert (sheet[top - 16 : top] < 128).any() and (sheet[top : top + 70, left - 4 : left] == 255).all()
    # The left third of the comparison is the original clip, and original.mp4 is that clip.
    original = VideoReader(clip).read([0])[0].astype(int)
    compare = VideoReader(out / "compare.mp4").read([0])[0].astype(int)
    assert np.abs(compare[:, :100] - original).mean() < 6
    assert np.abs(VideoReader(out / "original.mp4").read([0])[0].astype(int) - original).mean() < 6
    for name in ("recon.mp4", "preview.mp4", "compare.mp4"):  # x264 records its settings in the stream
        assert b" qp=0" in (out / name).read_bytes()  # crf 0: x264 goes lossless


def test_encode_then_decode_with_weight_files(tmp_path, capsys, clip, tiny_weights):
    latent = tmp_path / "clip.safetensors"
    common = ["--config", TINY, "--weights-dir", tiny_weights, "--quiet"]
    code, err = run_cli(capsys, "encode", clip, "-o", latent, "--size", 40, "--start", 2, "--num-frames", 5, *common)
    assert code == 0, err
    reader = LatentReader(latent)
    assert reader.shape == (16, 5, 2, 2)  # 70x100 -> 40x57, padded to 64x64
    assert (reader.meta.height, reader.meta.width, reader.meta.start) == (40, 57, 2)

    # --crf 0: lossless, so equal pixels prove equal samples (x264 may order its decisions differently
    # from run to run, so the files' bytes are not compared).
    video = tmp_path / "clip.mp4"
    decode = ["decode", latent, "--steps", 2, "--seed", 3, "--scheduler", "ddim", "--crf", 0, *common]
    code, err = run_cli(capsys, *decode, "-o", video)
    assert code == 0, err
    decoded = VideoReader(video)
    assert (decoded.num_frames, decoded.height, decoded.width) == (5, 40, 58)  # 57 padded to even for yuv420p

    again = tmp_path / "again.mp4"
    assert run_cli(capsys, *decode, "-o", again)[0] == 0
    assert np.array_equal(VideoReader(again).read(range(5)), decoded.read(range(5)))


@pytest.mark.parametrize("scheduler", ["euler_a", "dpm_solver"])
def test_decode_with_each_scheduler(tmp_path, capsys, clip, scheduler):
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet")[0] == 0
    code, err = run_cli(
        capsys,
        "decode",
        latent,
        "-o",
        tmp_path / "v.mp4",
        "--config",
        TINY,
        "--random-init",
        "--scheduler",
        scheduler,
        "--steps",
        3,
        "--quiet",
    )
    assert code == 0, err


def test_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).with_name("cascadev")
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "recon" in result.stdout


# ----------------------------------------------------------------------------- bad input


def test_missing_video(tmp_path, capsys):
    code, err = run_cli(
        capsys, "recon", tmp_path / "nope.mp4", "-o", tmp_path / "out", "--config", TINY, "--random-init"
    )
    assert_one_line_error(code, err, "nope.mp4")
    assert leftovers(tmp_path) == []


def test_non_video_and_corrupt_files(tmp_path, capsys, clip):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clip.read_bytes()[:600])
    for bad in (text, corrupt):
        code, err = run_cli(capsys, "encode", bad, "-o", tmp_path / "l.safetensors", "--config", TINY, "--random-init")
        assert_one_line_error(code, err, bad.name)
    assert leftovers(tmp_path) == ["corrupt.mp4", "notes.mp4"]


def test_video_shorter_than_asked(tmp_path, capsys, clip):
    code, err = run_cli(
        capsys, "recon", clip, "-o", tmp_path / "out", "--num-frames", 50, "--config", TINY, "--random-init"
    )
    assert_one_line_error(code, err, "7 frames")
    assert leftovers(tmp_path) == []


def test_checkpoint_that_does_not_fit(tmp_path, capsys, clip, tiny_weights):
    from cascadev.checkpoint import save_safetensors
    from cascadev.models.dit import CascadeDiT

    wrong = tmp_path / "wrong.safetensors"
    save_safetensors(
        CascadeDiT(input_size=8, in_channels=8, hidden_size=48, depth=3, num_heads=2, lats_per_vid=4).state_dict(),
        wrong,
    )
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet")[0] == 0
    out = tmp_path / "v.mp4"
    code, err = run_cli(
        capsys, "decode", latent, "-o", out, "--config", TINY, "--weights-dir", tiny_weights, "--ckpt", wrong
    )
    assert_one_line_error(code, err, "wrong.safetensors", "missing", "blocks.3", "x_embedder.proj.weight")
    assert not out.exists()


def test_pth_checkpoint_loads_through_weights_only(tmp_path, capsys, clip, tiny_weights):
    from cascadev.loading import load_config
    from cascadev.models import build_model

    state = build_model(load_config(TINY).model).state_dict()
    good = tmp_path / "tiny.pth"
    torch.save({"state_dict": state, "step": 3}, good)
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet")[0] == 0
    code, err = run_cli(
        capsys,
        "decode",
        latent,
        "-o",
        tmp_path / "v.mp4",
        "--config",
        TINY,
        "--weights-dir",
        tiny_weights,
        "--ckpt",
        good,
        "--quiet",
        "--steps",
        1,
    )
    assert code == 0, err


@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--scheduler", "heun", "unknown scheduler"),
        ("--dtype", "fp8", "unknown dtype"),
        ("--device", "tpu", "unknown device"),
    ],
)
def test_unknown_options(tmp_path, capsys, clip, option, value, needle):
    code, err = run_cli(capsys, "recon", clip, "-o", tmp_path / "out", "--config", TINY, "--random-init", option, value)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out" / "recon.mp4").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tmp_path, capsys, clip):
    code, err = run_cli(
        capsys, "encode", clip, "-o", tmp_path / "l.safetensors", "--config", TINY, "--random-init", "--device", "cuda"
    )
    assert_one_line_error(code, err, "no CUDA device")


def test_unwritable_outputs(tmp_path, capsys, clip):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run_cli(capsys, "encode", clip, "-o", blocker / "l.safetensors", "--config", TINY, "--random-init")
    assert_one_line_error(code, err, f"{blocker} is a file, not a folder")
    code, err = run_cli(capsys, "recon", clip, "-o", blocker / "out", "--config", TINY, "--random-init")
    assert_one_line_error(code, err, "out")
    code, err = run_cli(capsys, "decode", clip, "-o", blocker / "v.mp4", "--config", TINY, "--random-init")
    assert_one_line_error(code, err, "clip.mp4")  # the input is checked first
    code, err = run_cli(capsys, "encode", clip, "-o", tmp_path / "l.mp4", "--config", TINY, "--random-init")
    assert_one_line_error(
        code, err, f"Cannot write {tmp_path / 'l.mp4'}: a latent file's name must end in .safetensors"
    )
    assert leftovers(tmp_path) == ["file"]


def test_every_command_creates_a_missing_output_folder_and_says_what_it_wrote(tmp_path, capsys, clip):
    latent = tmp_path / "a" / "b" / "l.safetensors"
    fast = ["--config", TINY, "--random-init", "--quiet", "--steps", 1]
    assert main([str(a) for a in ["encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet"]]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"cascadev: wrote {latent} (latent 16x7x3x4 of 7 frames, 100x70, 25 fps)"
    ]
    video = tmp_path / "c" / "d" / "v.mp4"
    assert main([str(a) for a in ["decode", latent, "-o", video, *fast]]) == 0
    assert capsys.readouterr().out.splitlines() == [f"cascadev: wrote {video} (7 frames, 100x70, 25 fps)"]


def test_corrupt_latent(tmp_path, capsys):
    bad = tmp_path / "l.safetensors"
    bad.write_bytes(os.urandom(64))
    code, err = run_cli(capsys, "decode", bad, "-o", tmp_path / "v.mp4", "--config", TINY, "--random-init")
    assert_one_line_error(code, err, "l.safetensors")
    assert leftovers(tmp_path) == ["l.safetensors"]


def test_missing_weights_stop_at_once_naming_each_file(tmp_path, capsys, clip):
    code, err = run_cli(
        capsys, "recon", clip, "-o", tmp_path / "out", "--config", TINY, "--weights-dir", tmp_path / "w"
    )
    assert_one_line_error(
        code,
        err,
        "tiny.safetensors",
        "effnet_encoder.safetensors",
        "previewer.safetensors",
        "svd_vae",
        "pretrained/download.sh",
    )


def test_missing_config(tmp_path, capsys, clip):
    code, err = run_cli(capsys, "encode", clip, "-o", tmp_path / "l.safetensors", "--config", tmp_path / "none.py")
    assert_one_line_error(code, err, "none.py")


def test_recon_sh_runs_cascadev_recon_on_the_users_relative_paths(tmp_path):
    """Run from the user's own folder: relative paths are theirs and the outputs land there, not in the repo."""
    video = tmp_path / "nine.mp4"
    write_test_video(video, 9, 48, 64)
    env = dict(os.environ, CASCADEV=str(Path(sys.executable).with_name("cascadev")))
    result = subprocess.run(
        [
            "bash",
            str(Path(TINY).parents[1] / "recon.sh"),
            "nine.mp4",
            "out/nine",
            "--config",
            TINY,
            "--random-init",
            "--size",
            "48",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert VideoReader(tmp_path / "out" / "nine" / "recon.mp4").num_frames == 8  # recon.sh's --num-frames 8
    assert result.stdout.startswith("cascadev: wrote out/nine/ (latent.safetensors, original.mp4")


def test_decode_in_bfloat16_on_the_cpu(tmp_path, capsys, clip):
    latent = tmp_path / "l.safetensors"
    assert (
        run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet", "--dtype", "bf16")[
            0
        ]
        == 0
    )
    code, err = run_cli(
        capsys,
        "decode",
        latent,
        "-o",
        tmp_path / "v.mp4",
        "--config",
        TINY,
        "--random-init",
        "--dtype",
        "bf16",
        "--steps",
        2,
        "--quiet",
    )
    assert code == 0, err
    assert VideoReader(tmp_path / "v.mp4").num_frames == 7
    code, err = run_cli(
        capsys, "decode", latent, "-o", tmp_path / "w.mp4", "--config", TINY, "--random-init", "--dtype", "fp16"
    )
    assert_one_line_error(code, err, "fp16 needs a CUDA device")


def test_explicit_ckpt_is_loaded_under_random_init(tmp_path, capsys, clip, tiny_weights):
    from safetensors.torch import load_file

    from cascadev.loading import build_pipeline, load_config

    ckpt = tiny_weights / "tiny.safetensors"
    pipe = build_pipeline(load_config(TINY), ["dit", "vae"], random_init=True, ckpt=ckpt)
    saved = load_file(ckpt)
    assert all(torch.equal(p, saved[k]) for k, p in pipe.dit.state_dict().items())
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet")[0] == 0
    code, err = run_cli(
        capsys,
        "decode",
        latent,
        "-o",
        tmp_path / "v.mp4",
        "--config",
        TINY,
        "--random-init",
        "--ckpt",
        tmp_path / "mine.safetensors",
    )
    assert_one_line_error(code, err, "mine.safetensors", "--ckpt")
    assert not (tmp_path / "v.mp4").exists()


def test_each_missing_weight_file_names_its_own_option(tmp_path, capsys, clip, tiny_weights):
    only_dit = tmp_path / "weights"
    only_dit.mkdir()
    code, err = run_cli(
        capsys,
        "recon",
        clip,
        "-o",
        tmp_path / "out",
        "--config",
        TINY,
        "--weights-dir",
        only_dit,
        "--ckpt",
        tiny_weights / "tiny.safetensors",
    )
    assert_one_line_error(
        code,
        err,
        "svd_vae (",
        "--weights-dir, config key weights.vae",
        "config key weights.compressor",
        "config key weights.previewer",
    )
    assert "--ckpt" not in err  # the DiT was found; nothing missing is the --ckpt file's business
    code, err = run_cli(capsys, "recon", clip, "-o", tmp_path / "out", "--config", TINY, "--weights-dir", only_dit)
    assert_one_line_error(code, err, "tiny.safetensors (", "--ckpt or --weights-dir, config key weights.dit")


def test_recon_keeps_the_inputs_audio_from_start(tmp_path, capsys):
    video = tmp_path / "tone.mp4"
    write_test_video(video, 12, 32, 32, fps=10.0, audio=True)
    out = tmp_path / "out"
    code, err = run_cli(
        capsys,
        "recon",
        video,
        "-o",
        out,
        "--start",
        2,
        "--num-frames",
        5,
        "--config",
        TINY,
        "--random-init",
        "--quiet",
        "--steps",
        1,
    )
    assert code == 0, err
    for name in ("recon.mp4", "original.mp4"):
        with av.open(str(out / name)) as container:
            stream = container.streams.audio[0]
            assert float(stream.duration * stream.time_base) == pytest.approx(0.5, abs=0.06)
    with av.open(str(out / "preview.mp4")) as container:
        assert not container.streams.audio


def test_version_descriptions_and_help(capsys):
    from cascadev import __version__
    from cascadev.cli import build_parser

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"cascadev {__version__}"
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.description, name
        options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        assert options[0].option_strings[0] in ("-o", "--work-dir"), (name, options[0].option_strings)
        for action in sub._actions:
            if not action.option_strings:
                assert action.help, (name, action.dest)
    recon_help = commands["recon"].format_help()
    for produced in ("latent.safetensors", "original.mp4", "preview.mp4", "recon.mp4", "compare.mp4", "compare.png"):
        assert produced in recon_help
    crf = next(a for a in commands["decode"]._actions if a.dest == "crf")
    assert "libx265" in crf.help and "x264 quality" not in crf.help


def test_help_never_breaks_a_metric_name(monkeypatch, capsys):
    from cascadev.evaluation import ALL_METRICS

    monkeypatch.setenv("COLUMNS", "70")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for metric in ALL_METRICS:
        assert metric in text, metric


# Runs the CLI in a fresh interpreter and reports which heavy libraries it imported on the way.
_IMPORTS_PROBE = """
import sys
from cascadev.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(sorted(m for m in ("torch", "diffusers", "mmengine", "decord") if m in sys.modules))
sys.exit(code)
"""


def test_a_typo_fails_before_the_heavy_imports(tmp_path):
    """A missing input costs well under a second, not the ~10 s torch and diffusers take to import.

    Checked by what gets imported, not by the clock, so a busy machine cannot fail it.
    """
    exe = str(Path(sys.executable).with_name("cascadev"))
    env = dict(os.environ, PYTHONPATH=str(Path(TINY).parents[1]))
    for argv in (
        ["recon", "nope.mp4", "-o", "out"],
        ["decode", "nope.safetensors", "-o", "v.mp4"],
        ["train", "nope.py", "--work-dir", "w"],
    ):
        result = subprocess.run([exe, *argv], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert_one_line_error(result.returncode, result.stderr, "nope.")
        assert "torch" not in result.stderr
        probe = subprocess.run(
            [sys.executable, "-c", _IMPORTS_PROBE, *argv], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert probe.returncode == result.returncode, probe.stderr
        assert probe.stdout.strip() == "[]", (argv, probe.stdout)


def test_one_progress_bar_per_stage_counting_frames(tmp_path, capsys, clip):
    code, err = run_cli(capsys, "recon", clip, "-o", tmp_path / "out", "--config", TINY, "--random-init", "--steps", 1)
    assert code == 0, err
    assert "encoding: 100%" in err and "7/7" in err and "decoding: 100%" in err
    assert "sampling" not in err  # no step bar whose rate also covers encoding and decoding


def test_an_unrecognized_argument_is_named_with_its_command(tmp_path, capsys):
    code, err = run_cli(capsys, "recon", tmp_path / "in.mp4", "-o", tmp_path / "out", "--bogus", "1")
    assert_one_line_error(code, err, "recon: unrecognized arguments: --bogus 1")


def test_every_latent_file_a_command_opens_is_closed(tmp_path, capsys, clip, monkeypatch):
    """Readers hold the file mapped: a command closes each one it opens, not the garbage collector."""
    from cascadev import batch

    open_readers: set[int] = set()
    opened, closed = LatentReader.__init__, LatentReader.close

    def track_open(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        open_readers.add(id(self))

    def track_close(self):
        open_readers.discard(id(self))
        closed(self)

    monkeypatch.setattr(LatentReader, "__init__", track_open)
    monkeypatch.setattr(LatentReader, "close", track_close)
    common = ["--config", TINY, "--random-init", "--quiet", "--steps", 1]
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clip, "-o", latent, *common[:3])[0] == 0  # its summary line reads the latent
    assert run_cli(capsys, "decode", latent, "-o", tmp_path / "d.mp4", *common)[0] == 0
    assert run_cli(capsys, "recon", clip, "-o", tmp_path / "r", *common)[0] == 0
    assert batch.count_frames(latent, latent=True) == 7
    assert not open_readers


def test_recon_and_decode_refuse_a_resize_condition_model_before_any_work(tmp_path, capsys, clip):
    resize = ["--config", TINY, "--random-init", "--quiet", "--cfg-options", "condition=resize"]
    latent = tmp_path / "l.safetensors"
    assert run_cli(capsys, "encode", clip, "-o", latent, "--config", TINY, "--random-init", "--quiet")[0] == 0
    for command, source, out in (("recon", clip, tmp_path / "r"), ("decode", latent, tmp_path / "d.mp4")):
        code, err = run_cli(capsys, command, source, "-o", out, *resize)
        assert_one_line_error(code, err, f"{command} decodes semantic latents", "the resize condition")
        assert not out.exists()


def test_a_vae_folder_with_only_a_pickled_bin_is_refused_in_one_line(tmp_path, capsys, clip, tiny_weights):
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    vae = weights / "svd_vae"
    from safetensors.torch import load_file

    state = load_file(vae / "diffusion_pytorch_model.safetensors")
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, vae / "diffusion_pytorch_model.bin")  # what diffusers would unpickle
    code, err = run_cli(
        capsys, "recon", clip, "-o", tmp_path / "r", "--config", TINY, "--weights-dir", weights, "--quiet"
    )
    assert_one_line_error(code, err, f"SVD VAE folder {vae} has no diffusion_pytorch_model(.fp16).safetensors")
    assert not (tmp_path / "r").exists()


def test_a_vae_with_nan_weights_is_refused_like_the_other_networks(tmp_path, capsys, clip, tiny_weights):
    import shutil

    from safetensors.torch import load_file, save_file

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    file = weights / "svd_vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    key = sorted(state)[0]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, file)
    code, err = run_cli(
        capsys, "recon", clip, "-o", tmp_path / "r", "--config", TINY, "--weights-dir", weights, "--quiet"
    )
    assert_one_line_error(
        code, err, f"checkpoint {weights / 'svd_vae'} has non-finite values (NaN or Inf) in tensor {key}"
    )


def test_store_options_without_shards_are_refused(tmp_path, capsys, clip):
    for option in (["--clip-frames", "4"], ["--shard-size", "10"]):
        code, err = run_cli(capsys, "encode", clip, "-o", tmp_path / "l.safetensors", *option, "--config", TINY)
        assert_one_line_error(code, err, f"{option[0]} shape a latent store: add --shards")
    assert leftovers(tmp_path) == []
