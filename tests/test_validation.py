"""Validate once, at the edge: one parser class with one-line errors for cascadev, eval and every tool;
choices for the named values; each rule refuses its bad values through the CLI and the Python API alike."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error, exit_status
from videos import write_test_video

from cascadev import rules
from cascadev.argparsing import Parser
from cascadev.cli import build_parser, main
from cascadev.errors import CascadeVError

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")

# Every script that parses arguments, with a bad option value and the word its error line must contain.
# The tool's own name starts the line (cascadev's for the scripts, which run cascadev's parser).
BAD_OPTIONS = {
    "tools/benchmark.py": (["--steps", "0"], "benchmark", "--steps"),
    "tools/benchmark_dit.py": (["--dtype", "fp8"], "benchmark_dit", "--dtype"),
    "tools/benchmark_train.py": (["--steps", "0"], "benchmark_train", "--steps"),
    "tools/benchmark_table.py": (["no_such_report.json"], "benchmark_table", "no_such_report.json"),
    "tools/benchmark_eval.py": (["--workers", "2", "0"], "benchmark_eval", "--workers"),
    "tools/compare_frames.py": (["a.mp4", "b.mp4", "-o", "c.png", "--filter", "lanczos"], "compare_frames", "--filter"),
    "tools/convert_checkpoint.py": (["x.pth", "--dtype", "fp64"], "convert_checkpoint", "--dtype"),
    "tools/latent_scale.py": ([TINY, "--clips", "-1"], "latent_scale", "--clips"),
    "tools/make_nano_data.py": (["--out"], "make_nano_data", "--out"),
    "tools/plot_training.py": (["work", "-o"], "plot_training", "--output"),
    "tools/precision_table.py": (["--device", "tpu"], "precision_table", "--device"),
    "tools/profile_cascade.py": (["--size", "10x"], "profile_cascade", "expected WIDTHxHEIGHT in pixels"),
    "tools/prepare_inter4k.py": (["src", "-o", "out", "--crf", "-1"], "prepare_inter4k", "--crf"),
    "tools/svd_probe.py": (["--variants", "fp8"], "svd_probe", "--variants"),
    "tools/readme_options.py": (["--update=yes"], "readme_options", "--update"),
    "scripts/evaluate.py": (
        ["--ref", "a", "--rec", "b", "-o", "r.json", "--chunk-frames", "0"],
        "cascadev",
        "--chunk-frames",
    ),
    "scripts/reconstruct.py": (["v.mp4", "-o", "out", "--steps", "x"], "cascadev", "--steps"),
    "scripts/train.py": ([TINY, "--work-dir", "w", "--device", "gpu"], "cascadev", "--device"),
    "cascadev.evaluation.report": (["a.json", "--labels"], "cascadev-report", "--labels"),
    "cascadev.evaluation.baselines": (["src", "-o", "out", "--factor", "0"], "cascadev-bicubic", "--factor"),
}

# Runs each script as __main__ with its bad options, in one interpreter so that torch, which most tools
# import at the top, is imported once; prints {script: [exit status, stderr]} as JSON.
_RUNNER = """
import contextlib, io, json, runpy, sys
results = {}
for script, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    sys.argv = [script, *argv]
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if script.endswith(".py"):
                runpy.run_path(script, run_name="__main__")
            else:
                runpy.run_module(script, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
    results[script] = [code, err.getvalue()]
print(json.dumps(results))
"""


def _parsing_scripts() -> list[str]:
    found = []
    for folder in ("tools", "scripts"):
        for path in sorted((ROOT / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "parse_args" in text or "cascadev.cli import main" in text:
                found.append(f"{folder}/{path.name}")
    return found


def test_every_tool_and_script_gives_one_line_errors(tmp_path):
    assert set(_parsing_scripts()) <= set(BAD_OPTIONS), "a new tool with a parser needs an entry in BAD_OPTIONS"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tools'}")
    argvs = {script: argv for script, (argv, _, _) in BAD_OPTIONS.items()}
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.splitlines()[-1])
    for script, (_, prog, needle) in BAD_OPTIONS.items():
        code, err = results[script]
        lines = err.splitlines()
        assert code == 2 and len(lines) == 1, (script, code, err)
        assert lines[0].startswith(f"{prog}: error: ") and needle in lines[0], (script, lines[0])
        assert "usage:" not in err and "Traceback" not in err, (script, err)


def test_the_reconstruct_script_forwards_each_command_and_defaults_to_recon():
    script = [sys.executable, str(ROOT / "scripts" / "reconstruct.py")]
    for argv, expected in (
        (["upscale", "v.mp4", "-o", "u.mp4", "--scale", "0"], "cascadev: error: upscale: argument --scale"),
        (["interpolate", "v.mp4", "-o", "i.mp4", "--factor", "0"], "cascadev: error: interpolate: argument --factor"),
        (["v.mp4", "-o", "out", "--scale", "2"], "cascadev: error: recon: unrecognized arguments: --scale"),
    ):
        result = subprocess.run([*script, *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 2 and result.stderr.startswith(expected), (argv, result.stderr)


def test_every_parser_is_the_one_class():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert type(parser) is Parser and all(type(sub) is Parser for sub in commands.values())
    assert "eval" in commands


def _parse_error(capsys, *argv: str) -> str:
    err_code = exit_status(main, list(argv))
    err = capsys.readouterr().err
    assert_one_line_error(err_code, err)
    return err


MODEL_COMMANDS = [
    ["encode", "v.mp4", "-o", "l.safetensors"],
    ["decode", "l.safetensors", "-o", "v.mp4"],
    ["recon", "v.mp4", "-o", "out"],
    ["upscale", "v.mp4", "-o", "u.mp4"],
    ["interpolate", "v.mp4", "-o", "i.mp4"],
]


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    "option,value,choices",
    [
        ("--dtype", "fp8", "auto, fp32, fp16 or bf16"),
        ("--device", "tpu", "auto, cpu, cuda or cuda:N"),
        ("--device", "cuda:x", "auto, cpu, cuda or cuda:N"),
    ],
)
def test_precision_and_device_are_choices(capsys, command, option, value, choices):
    err = _parse_error(capsys, *command, option, value)
    assert f"argument {option}: unknown" in err and repr(value) in err and choices in err


@pytest.mark.parametrize("command", [c for c in MODEL_COMMANDS if c[0] != "encode"], ids=lambda c: c[0])
def test_scheduler_is_a_choice(capsys, command):
    err = _parse_error(capsys, *command, "--scheduler", "heun")
    assert "argument --scheduler: unknown scheduler 'heun'; choose euler_a, ddim or dpm_solver" in err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["upscale", "v.mp4", "-o", "u.mp4", "--mode", "4x"],
            "argument --mode: unknown mode '4x'; choose auto, tiles or 2x",
        ),
        (["recon", "v.mp4", "-o", "out", "--preset", "paper"], "argument --preset: unknown preset 'paper'"),
        (["eval", "--ref", "a", "--rec", "b", "-o", "r.json", "--device", "tpu"], "argument --device: unknown device"),
        (
            ["eval", "--ref", "a", "--rec", "b", "-o", "r.json", "--lpips-net", "resnet"],
            "argument --lpips-net: unknown lpips net",
        ),
        (
            ["train", TINY, "--work-dir", "w", "--device", "cuda"],
            "argument --device: unknown device 'cuda'; choose auto or cpu",
        ),
        (["train-ae", TINY, "--work-dir", "w", "--part", "dit"], "argument --part: unknown part 'dit'"),
        (
            ["encode", "v.mp4", "-o", "s", "--shards", "--shard-size", "0"],
            "argument --shard-size: must be a positive finite number",
        ),
        (
            ["encode", "v.mp4", "-o", "s", "--shards", "--shard-size", "inf"],
            "argument --shard-size: must be a positive finite number, got inf",
        ),
        (
            ["interpolate", "v.mp4", "-o", "i.mp4", "--factor", "1.5"],
            "argument --factor: must be a whole number of at least 1",
        ),
        (
            ["decode", "l.safetensors", "-o", "v.mp4", "--vae-chunk", "0"],
            "argument --vae-chunk: must be a whole number of at least 1",
        ),
        (["bogus"], "unknown command 'bogus'"),
    ],
)
def test_other_choices_and_counts(capsys, argv, needle):
    err = _parse_error(capsys, *argv)
    assert needle in err and "usage:" not in err


def test_named_values_match_their_implementations():
    from cascadev import pipeline
    from cascadev.loading import PRECISIONS
    from cascadev.schedulers import SCHEDULERS

    assert set(rules.SCHEDULERS) <= set(SCHEDULERS)
    assert set(rules.PRECISIONS) == {"auto", *PRECISIONS}
    assert pipeline.MODES is rules.MODES


# ----------------------------------------------------------------------------- one rule, CLI and API


def test_steps(capsys):
    from cascadev.reconstruct import SamplingArgs

    assert "--steps: must be a whole number of at least 1, got 0" in _parse_error(
        capsys, "decode", "l", "-o", "v", "--steps", "0"
    )
    for bad in (0, -3, 2.0, True):
        with pytest.raises(CascadeVError, match="sampling steps must be a whole number of at least 1"):
            SamplingArgs(steps=bad)


def test_scheduler_api():
    from cascadev.loading import load_config
    from cascadev.reconstruct import SamplingArgs
    from cascadev.schedulers import make_scheduler

    for check in (lambda: SamplingArgs(scheduler="heun"), lambda: make_scheduler("heun")):
        with pytest.raises(CascadeVError, match="unknown scheduler 'heun'; choose"):
            check()
    with pytest.raises(CascadeVError, match="config key sampling.scheduler must be one of euler_a, ddim, dpm_solver"):
        load_config(TINY, ["sampling.scheduler=heun"])


def test_seed_api():
    from cascadev.data import VideoClipDataset
    from cascadev.reconstruct import SamplingArgs

    for make in (
        lambda s: SamplingArgs(seed=s),
        lambda s: VideoClipDataset(["a.mp4"], num_frames=2, time_stride=1, sample_size=16, seed=s),
    ):
        for bad in (-1, 2**63, 0.5):
            with pytest.raises(CascadeVError, match="seed must be a whole number from 0 to 2\\*\\*63 - 1"):
                make(bad)


def test_dtype_and_device_api():
    from cascadev.evaluation.runner import EvalOptions, evaluate
    from cascadev.loading import resolve_device, resolve_precision

    with pytest.raises(CascadeVError, match="unknown dtype 'fp8'; choose auto, fp32, fp16 or bf16"):
        resolve_precision("fp8", torch.device("cpu"))
    for bad in ("tpu", "cuda:", "CPU"):
        with pytest.raises(CascadeVError, match="unknown device .*; choose auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
        with pytest.raises(CascadeVError, match="unknown device"):
            evaluate(EvalOptions(ref="a", rec="b", output="r.json", device=bad))


def test_counts_api(tmp_path):
    from cascadev.enhance import upscale_video
    from cascadev.evaluation.runner import EvalOptions, evaluate
    from cascadev.reconstruct import SamplingArgs

    never = lambda: pytest.fail("the model must not be loaded")  # noqa: E731
    with pytest.raises(CascadeVError, match="--chunk-frames must be a whole number of at least 1, got 0"):
        evaluate(EvalOptions(ref="a", rec="b", output="r.json", chunk_frames=0))
    with pytest.raises(CascadeVError, match="--scale must be a whole number of at least 1, got 0"):
        upscale_video(never, "v.mp4", tmp_path / "u.mp4", SamplingArgs(), scale=0)
    with pytest.raises(CascadeVError, match="unknown mode '3x'; choose auto, tiles or 2x"):
        upscale_video(never, "v.mp4", tmp_path / "u.mp4", SamplingArgs(), mode="3x")
    assert os.listdir(tmp_path) == []


def test_condition_kind_lives_in_the_conditioning_module(tmp_path, capsys):
    from cascadev import conditioning
    from cascadev.loading import load_config
    from cascadev.training.targets import FrozenEncoders

    assert conditioning.dit_in_channels("semantic") == 20 and conditioning.dit_in_channels("resize") == 8
    assert conditioning.kind_of_dit(20) == "semantic" and conditioning.kind_of_dit(8) == "resize"
    assert conditioning.with_encoder("semantic", ["dit", "vae"]) == ["dit", "compressor", "vae"]
    assert conditioning.with_encoder("resize", ["dit", "vae"]) == ["dit", "vae"]
    assert conditioning.dit_spec(load_config(TINY, ["condition=resize"]))["in_channels"] == 8
    assert conditioning.dit_spec(load_config(TINY, ["model.in_channels=20"]))["in_channels"] == 20
    # A disagreeing value (an older config's 20 under condition=resize) is replaced, and said so.
    with pytest.warns(UserWarning, match=r"model.in_channels=20 is replaced by 8: condition='resize' sets"):
        resize = load_config(TINY, ["condition=resize", "model.in_channels=20"])
        assert conditioning.dit_spec(resize)["in_channels"] == 8
    with pytest.raises(CascadeVError, match="12 input channels; expected 20 \\(semantic\\) or 8 \\(resize\\)"):
        conditioning.kind_of_dit(12)
    for bad in (
        lambda: conditioning.Conditioner(kind="latent"),
        lambda: FrozenEncoders(None, condition="latent"),
        lambda: conditioning.condition_kind({"condition": "latent"}),
    ):
        with pytest.raises(CascadeVError, match="unknown condition 'latent' in the config; choose semantic or resize"):
            bad()
    with pytest.raises(CascadeVError, match="config key condition must be one of semantic, resize"):
        load_config(TINY, ["condition=latent"])
    clip = tmp_path / "clip.mp4"
    write_test_video(clip, 2, 32, 32)
    code = main(
        [
            "upscale",
            str(clip),
            "-o",
            str(tmp_path / "u.mp4"),
            "--config",
            TINY,
            "--random-init",
            "--cfg-options",
            "condition=latent",
        ]
    )
    assert_one_line_error(code, capsys.readouterr().err, "config key condition must be one of semantic, resize")
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_no_other_module_switches_on_the_condition_kind():
    """The kind names appear as values only in cascadev/conditioning.py (its table), nowhere else in the code."""
    for path in sorted((ROOT / "cascadev").rglob("*.py")):
        if path.name == "conditioning.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("semantic", "resize"):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} names the condition kind {node.value!r}")


def test_another_librarys_exception_becomes_one_line_with_or_without_text(tmp_path, capsys, monkeypatch):
    from cascadev.errors import first_line

    assert first_line(RuntimeError()) == "RuntimeError"  # no text: its type alone (no IndexError)
    assert first_line(ValueError("  bad shape\n  at line 3\n")) == "ValueError: bad shape"
    assert first_line(OSError("x" * 300), limit=10) == "OSError: " + "x" * 10

    # A bug's exception in a command: one line that says so, with the switch for its traceback.
    from cascadev import cli

    def broken(*args):
        raise KeyError()

    monkeypatch.setattr(cli, "_check_inputs", broken)
    code = exit_status(main, ["encode", str(tmp_path / "in.mp4"), "-o", str(tmp_path / "l.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and err == "cascadev: internal error: KeyError (set CASCADEV_DEBUG=1 for the traceback)\n"


def test_a_warning_of_cascadevs_own_category_is_one_line_wherever_it_is_raised():
    from cascadev import cli
    from cascadev.data import BadVideoWarning

    torch_file = str(Path(torch.__file__).parent / "utils" / "data" / "_utils" / "fetch.py")
    message = "Skipping a training video, another one takes its place: bad.mp4 is not a video"
    # The dataset warns where torch's DataLoader called it: still cascadev's line.
    assert cli._format_warning(message, BadVideoWarning, torch_file, 54, "data = [...]") == (
        f"cascadev: warning: {message}\n"
    )
    foreign = cli._format_warning("deprecated", UserWarning, torch_file, 54, "data = [...]")
    assert foreign.startswith(f"{torch_file}:54: UserWarning: deprecated")  # another library's, as Python prints it
