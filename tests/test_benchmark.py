"""tools/benchmark.py runs the real file-level tasks end to end and reports every stage."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def test_benchmark_reports_every_stage_on_a_tiny_config(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "benchmark.py"),
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--device",
        "cpu",
        "--case",
        "custom",
        "--frames",
        "6",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--settings",
        "both",
        "-o",
        str(out),
        "--cfg-options",
        "sampling.attention_backend=math",  # a speed lever, for the default settings' run
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["cfg_options"] == ["sampling.attention_backend=math"]
    assert report["commit"] is None or len(report["commit"].split("-")[0]) >= 7  # git's short hash, when git is there
    assert [r["settings"] for r in report["runs"]] == ["release", "default"]
    for run in report["runs"]:
        s = run["seconds"]
        assert len(s["dit_per_step"]) == 2  # one entry per sampling step
        assert s["warmup"] > 0  # the untimed one-step pass before, whose steps are not in dit_per_step
        assert all(v > 0 for v in (s["model_loading"], s["read_and_encode"], s["svd_decode"], s["write"]))
        assert 0 < s["write_wait"] < s["end_to_end_without_loading"] and 0 < s["read"] < s["end_to_end_without_loading"]
        assert 0 < s["of_which_compressor"] <= s["read_and_encode"]  # the frozen encoder runs on the main thread
        assert 0 < s["of_which_video_close"] <= s["read_and_encode"]  # the output file closes on the main thread
        assert s["end_to_end_without_loading"] >= s["dit_total"] + s["svd_decode"]
        assert run["dit_tflop"] > 0 and run["dit_tflop_per_s"] > 0
    # tiny: 6 frames = windows at 0 and 2 (4 frames each), one 8x8 tile, 2 steps.
    assert report["runs"][0]["dit_calls"] == 4  # release settings: one DiT call per window
    assert report["runs"][1]["dit_calls"] == 2  # default: the windows of a step batched into one call
    assert report["release_over_default"]["custom"] > 0

    # The upscale case encodes its conditions on the fly (ConditionStream): timed as well.
    up = tmp_path / "up.json"
    cmd_up = [*cmd[: cmd.index("--settings")], "--upscale", "2", "--settings", "default", "-o", str(up)]
    assert subprocess.run(cmd_up, capture_output=True, text=True, timeout=600, cwd=tmp_path).returncode == 0
    assert json.loads(up.read_text())["runs"][0]["seconds"]["of_which_compressor"] > 0

    # tools/benchmark_table.py turns the report into docs/benchmarks.md's rows.
    table = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark_table.py"), str(out), "--levers", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| custom |")]
    assert [row.split(" | ")[1] for row in rows] == ["release", "default"]
    ratio = f"{report['release_over_default']['custom']:.2f}x"
    assert rows[1].rstrip(" |").endswith(ratio) and not rows[0].rstrip(" |").endswith("x")
    assert "| `sampling.attention_backend=math` |" in table.stdout and "+0.0%" in table.stdout


def test_training_benchmark_runs_the_trainer_and_reports_its_figures(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_train.py"), "--config", str(ROOT / "configs" / "tiny.py")]
    cmd += ["--device", "cpu", "--steps", "2", "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert len(report["losses"]) == 2 and all(0 < loss < 10 for loss in report["losses"])  # one per step
    assert report["samples_per_sec"] > 0 and report["dit_train_tflop_per_sample"] > 0
    assert report["clip"] == {"frames": 4, "size": 64, "batch": 2}  # tiny's clip and batch
    assert report["recipe"]["optimizer"] == "CAME"
    assert report["mfu"] is None and report["peak_memory_gib"] is None  # no GPU, no peak to divide by


def test_training_benchmark_trains_from_scratch_and_takes_config_overrides(tmp_path):
    # A config whose load_from names a released DiT that is not here (as configs/s1024_effn_f32.py's):
    # the benchmark times a DiT from scratch, and --cfg-options reach the trainer and the report.
    config = tmp_path / "released.py"
    config.write_text(
        f"_base_ = [{str(ROOT / 'configs' / 'tiny.py')!r}]\nload_from = 'pretrained/missing.safetensors'\n"
    )
    out = tmp_path / "train.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_train.py"), "--config", str(config), "--device", "cpu"]
    cmd += ["--steps", "1", "-o", str(out), "--cfg-options", "fp32_attention=False", "train_batch_size=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["recipe"]["fp32_attention"] is False and report["clip"]["batch"] == 1
    assert report["cfg_options"] == ["fp32_attention=False", "train_batch_size=1"]


def test_profile_splits_the_time_below_the_stages(tmp_path):
    out = tmp_path / "profile.json"
    cmd = [sys.executable, str(ROOT / "tools" / "profile_cascade.py"), "--config", str(ROOT / "configs" / "tiny.py")]
    cmd += ["--device", "cpu", "--frames", "4", "--size", "64x64", "--repeats", "1", "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    # tiny's attention patterns [1, 2], [2, 1] and full, over a 4 x 8 x 8 window of 64 tokens.
    assert [(r["strides"], r["cells"], r["tokens"]) for r in report["attention"]] == [
        ([1, 2], 4, 16),
        ([2, 1], 2, 32),
        (None, 1, 64),
    ]
    assert all(r["math"]["ms"] > 0 for r in report["attention"])
    # Beside the model's head dim (tiny's 32), the kernels' own: 64, 96 and 128, each with its rate.
    assert all(list(r["math"]["by_head_dim"]) == ["64", "96", "128"] for r in report["attention"])
    assert all(rate > 0 for r in report["attention"] for rate in r["math"]["by_head_dim"].values())
    assert "(head dim 64: " in result.stdout
    dit = report["dit"]
    assert dit["dit_calls"] == 1 and dit["seconds"]["matmul"] > 0 and dit["matmul_tflop_per_s"] > 0
    svd = report["svd"]
    assert svd["chunk_frames"] == 4 and svd["seconds_cudnn_benchmark_false"] > 0 and svd["tflop_per_chunk"] > 0
    assert any("conv" in name for name in svd["by_operator"])  # the decoder is convolutions
    compiled = svd["compiled"]  # sampling.vae_compile's path (dynamo's eager backend on the CPU): the same frames
    assert compiled["backend"] == "eager" and compiled["rel_err"] < 1e-5 and compiled["seconds"] > 0
    trip = report["transfer"]  # tiny at 64x64: a (4, 4, 8, 8) float32 latent
    assert trip["latent_mib"] == 4 * 4 * 8 * 8 * 4 / 2**20 and trip["to_host_s"] > 0 and trip["to_device_s"] > 0
    assert "latent round trip per segment" in result.stdout
    functions = [r["function"] for r in report["host"]["cascadev_by_cumulative"]]
    assert any("run_task" in f for f in functions) and any("decode_latent" in f for f in functions)
    assert "svd chunk of 4" in result.stdout and result.stdout.splitlines()[-1].startswith("host: recon")

    bad = subprocess.run([*cmd[:-2], "--size", "64x50"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "profile_cascade: error: --size 64x50: both sides must be multiples of 32"
    # The full-size DiT's attention on the CPU: the math kernel's scores would not fit; one line, not an OOM.
    full = [sys.executable, str(ROOT / "tools" / "profile_cascade.py"), "--device", "cpu", "--sections", "attention"]
    full += ["--config", str(ROOT / "configs" / "s1024_effn_f32.py")]
    bad = subprocess.run(full, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("profile_cascade: error: the attention section on the CPU runs the math kernel")


def test_training_benchmark_flops_are_three_forwards_of_one_window():
    sys.path.insert(0, str(ROOT / "tools"))
    from benchmark_dit import dit_flops
    from benchmark_train import train_flops_per_sample

    from cascadev.loading import load_config
    from cascadev.models import build_model

    cfg = load_config(ROOT / "configs" / "s1024_effn_f32.py")
    with torch.device("meta"):
        dit = build_model(dict(cfg.model, in_channels=20))
    # 101.0 TFLOP per 8 x 1024 x 1024 window (docs/benchmarks.md), three of them per trained clip.
    assert abs(dit_flops(dit, 8, 128, 128) / 1e12 - 101.0) < 0.05
    assert train_flops_per_sample(cfg) == 3 * dit_flops(dit, 8, 128, 128)


def _run(case, settings, e2e, svd, mfu, peak_gib):
    seconds = dict(
        read_and_encode=0.1, dit_per_step=[0.1], dit_total=0.1, svd_decode=svd, write=0.1, write_wait=0.0,
        end_to_end_without_loading=e2e, model_loading=1.0,
    )  # fmt: skip
    return dict(case=case, settings=settings, seconds=seconds, dit_tflop_per_s=400.0, mfu=mfu, peak_memory_gib=peak_gib)


def test_benchmark_table_checks_the_targets_and_compares_levers(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark_table

    base = dict(device="H100", torch="2.x", runs=[_run("8x1024", "default", 1.9, 0.35, 0.52, 15.0)])
    lever = dict(
        base, cfg_options=["sampling.compile=default"], runs=[_run("8x1024", "default", 1.52, 0.35, 0.7, 15.0)]
    )
    other = dict(base, runs=[_run("8x2048", "default", 9.0, 1.0, 0.5, 20.0)])
    batched = dict(other, cfg_options=["sampling.batch_size=9"], runs=[_run("8x2048", "default", 6.3, 1.0, 0.5, 20.0)])
    paths = []
    for name, report in (("base", base), ("lever", lever), ("other", other), ("batched", batched)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    text = benchmark_table.tables([str(paths[0])], [str(paths[1])], None)
    assert "| end to end | ≤ 2.0 s | 1.900 | yes |" in text
    assert "| DiT MFU | ≥ 50% | 52.0% | yes |" in text
    assert "| SVD decode | ≤ 0.3 s | 0.350 | no |" in text
    assert "| peak memory | ≤ 16 GB | 15.0 | yes |" not in text  # 15 GiB is 16.1 GB: over
    assert "| peak memory | ≤ 16 GB | 15.000 | no |" in text
    assert "| `sampling.compile=default` | 8x1024 | 0.100 | 0.350 | 1.520 | -20.0% | 70.0% | 15.0 |" in text
    # Each lever against the baseline run of its own case: 8x2048's lever against 8x2048's defaults.
    both = benchmark_table.tables([str(paths[0]), str(paths[2])], [str(paths[1]), str(paths[3])], None)
    assert "| baseline (defaults) | 8x2048 | 0.100 | 1.000 | 9.000 | +0.0% | 50.0% | 20.0 |" in both
    assert "| `sampling.batch_size=9` | 8x2048 | 0.100 | 1.000 | 6.300 | -30.0% | 50.0% | 20.0 |" in both
    # One lever measured on two cases: a row for each.
    at_2k = tmp_path / "lever-2048.json"
    at_2k.write_text(json.dumps(dict(lever, runs=[_run("8x2048", "default", 7.2, 1.0, 0.5, 20.0)])))
    twice = benchmark_table.tables([str(paths[0]), str(paths[2])], [str(paths[1]), str(at_2k)], None)
    assert "| `sampling.compile=default` | 8x1024 | 0.100 | 0.350 | 1.520 | -20.0% | 70.0% | 15.0 |" in twice
    assert "| `sampling.compile=default` | 8x2048 | 0.100 | 1.000 | 7.200 | -20.0% | 50.0% | 20.0 |" in twice
    assert benchmark_table.main([str(paths[0]), "--levers", str(paths[3])]) == 2  # no 8x2048 baseline
    assert capsys.readouterr().err.strip() == (
        "benchmark_table: error: `sampling.batch_size=9` has no default-settings run of case 8x2048 in the "
        "baseline to compare with."
    )
    assert benchmark_table.main([str(tmp_path / "missing.json")]) == 2


def test_precision_table_against_float64_and_float32(tmp_path, capfd):
    sys.path.insert(0, str(ROOT / "tools"))
    import precision_table

    rows = {}
    for reference in ("fp64", "fp32"):
        out = tmp_path / f"{reference}.json"
        precision_table.main(["--reference", reference, "--steps", "2", "-o", str(out)])
        assert (
            "kept in float32" not in capfd.readouterr().err
        )  # diffusers' warning on any .to(dtype): not for these models
        report = json.loads(out.read_text())
        assert report["meta"] == dict(device="cpu", torch=torch.__version__, model="golden", reference=reference)
        rows[reference] = {r["candidate"].split(" (")[0]: r for r in report["rows"]}
    # fp32 against fp64: rounding only; against itself (no TF32 on any device): the same computation.
    assert 0 < rows["fp64"]["fp32"]["forward_rel_err"] < 1e-5
    assert rows["fp32"]["fp32"]["forward_rel_err"] < 1e-6
    for reference in ("fp64", "fp32"):  # the half precisions: errors of their own size against either
        assert 1e-4 < rows[reference]["fp16 autocast"]["forward_rel_err"] < 3e-3
        assert 1e-3 < rows[reference]["bf16 weights"]["forward_rel_err"] < 2e-2
        assert all(r["forward_s"] > 0 and r["first_forward_s"] > 0 for r in rows[reference].values())


def test_svd_probe_times_each_way_of_running_the_decoder_against_float32(tmp_path):
    out = tmp_path / "probe.json"
    cmd = [sys.executable, str(ROOT / "tools" / "svd_probe.py"), "--config", str(ROOT / "configs" / "tiny.py")]
    cmd += ["--device", "cpu", "--frames", "2", "--size", "64x64", "--repeats", "1"]
    result = subprocess.run(
        [*cmd, "--variants", "eager", "channels_last", "-o", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["chunk"] == "2x64x64" and list(report["variants"]) == ["eager", "channels_last"]
    eager, nhwc = report["variants"]["eager"], report["variants"]["channels_last"]
    assert eager["rel_err_vs_fp32"] == 0  # float32 on the CPU: the reference itself
    assert 0 < nhwc["rel_err_vs_fp32"] < 1e-5 and nhwc["seconds"] > 0  # another layout, the same sums
    assert result.stdout.startswith("eager: seconds ")
    bad = subprocess.run([*cmd[:-4], "--size", "64x60"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr == "svd_probe: error: --size 64x60: both sides must be multiples of 8\n"


def test_gpu_session_script_runs_at_toy_size_and_packs_its_results(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    env = dict(
        os.environ, SMOKE="1", PYTHON=sys.executable, RESULTS=str(results), OUT=str(out), CASCADEV_COMMIT="abc1234"
    )
    script = str(ROOT / "tools" / "gpu_session.sh")
    run = subprocess.run(["bash", script, "bench8"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads((results / "bench_8x1024.json").read_text())
    assert report["commit"] == "abc1234"  # told, as a copy without .git is on a lent machine
    assert [r["settings"] for r in report["runs"]] == ["release", "default"]
    assert all(r["seconds"]["warmup"] > 0 for r in report["runs"])  # the untimed one-step pass ran first
    assert "done bench_8x1024: exit 0" in run.stdout and "| custom | default |" in run.stdout  # the tables
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        assert {"results/bench_8x1024.json", "results/session.log"} <= set(tar.getnames())
    assert (out / "session.log").read_text() == (results / "session.log").read_text()

    again = subprocess.run(["bash", script, "bench8"], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "kept bench_8x1024" in again.stdout  # a measured JSON is not redone
    assert (
        "start bench_8x1024" not in again.stdout and json.loads((results / "bench_8x1024.json").read_text()) == report
    )

    bad = subprocess.run(["bash", script, "bench8", "speed"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("gpu_session: error: unknown part 'speed'")


def test_benchmark_names_a_lever_the_device_cannot_run_in_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--config", str(ROOT / "configs" / "tiny.py")]
    cmd += ["--device", "cpu", "--case", "custom", "--frames", "4", "--size", "64x64", "--steps", "1"]
    cmd += ["--settings", "default", "--cfg-options", "sampling.attention_backend=cudnn"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "benchmark: error: sampling.attention_backend=cudnn has no kernel for these inputs on cpu "
        "(torch.float32); use auto"
    )


# Runs each (script, argv) as __main__ in one interpreter, so that torch is imported once; prints
# [[exit status, stderr], ...] as JSON. For the refusals that must come before any model is built.
_TOOLS_RUNNER = """
import contextlib, io, json, runpy, sys
results = []
for script, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = [script, *argv]
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def _run_tools(runs, cwd):
    """[(exit status, stderr)] of each (tool name, argv) of ``runs``, on the CPU with the tiny config."""
    calls = [
        [str(ROOT / "tools" / f"{tool}.py"), ["--config", str(ROOT / "configs" / "tiny.py"), "--device", "cpu", *argv]]
        for tool, argv in runs
    ]
    env = {k: v for k, v in os.environ.items() if k != "CASCADEV_MAX_SIZE"}
    result = subprocess.run(
        [sys.executable, "-c", _TOOLS_RUNNER, json.dumps(calls)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(env, OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return [tuple(r) for r in json.loads(result.stdout.splitlines()[-1])]


def test_measurement_tools_refuse_a_clip_past_the_size_limit_before_building_anything(tmp_path):
    # cascadev recon --size's limit (cascadev.rules.size_limit_problem) on the short side, then the whole clip
    # against one frame at the limit: not a MemoryError traceback once the models are built.
    size = (
        "--size 100000x100000: 100000 pixels is above the maximum short side of 8192 (one such frame alone is "
        "111.8 GiB as float32; set CASCADEV_MAX_SIZE to allow more).\n"
    )
    frames = (
        "--frames {}: {} frames of {} are {} GiB as float32, more than 16 frames of 8192x8192 (the most "
        "these tools hold at once; set CASCADEV_MAX_SIZE to allow more).\n"
    )
    runs = {
        ("benchmark", ("--case", "custom", "--size", "100000x100000")): "benchmark: error: " + size,
        ("benchmark", ("--case", "custom", "--frames", "100000")): "benchmark: error: "
        + frames.format(100000, 100000, "1024x1024", "1171.9"),
        ("profile_cascade", ("--size", "100000x100000")): "profile_cascade: error: " + size,
        ("profile_cascade", ("--frames", "100000")): "profile_cascade: error: "
        + frames.format(100000, 100000, "1024x1024", "1171.9"),
        ("svd_probe", ("--size", "100000x100000")): "svd_probe: error: " + size,
        ("svd_probe", ("--frames", "1000000", "--size", "64x64")): "svd_probe: error: "
        + frames.format(1000000, 1000000, "64x64", "45.8"),
    }
    assert _run_tools(runs, tmp_path) == [(2, err) for err in runs.values()]


def test_measurement_tools_check_the_report_folder_before_measuring(tmp_path):
    err = "error: Cannot write missing/report.json: the folder missing does not exist.\n"
    toy = ["--frames", "4", "--size", "64x64", "-o", "missing/report.json"]
    runs = [("benchmark", ["--case", "custom", *toy]), ("profile_cascade", toy), ("svd_probe", toy)]
    assert _run_tools(runs, tmp_path) == [(2, f"{tool}: {err}") for tool, _ in runs]
    assert not (tmp_path / "missing").exists()


def test_benchmark_refuses_the_custom_options_without_case_custom(tmp_path):
    refused = "benchmark: error: {} --case custom ({} the custom case; the named cases are fixed).\n"
    runs = [
        ("benchmark", ["--frames", "4", "--size", "64x64"]),  # the default case, 8x1024
        ("benchmark", ["--case", "custom", "--upscale", "2", "--case", "8x1024"]),  # the last --case wins
        ("benchmark", ["--case", "8x2048", "--size", "64x64"]),
        # gpu_session.sh's SMOKE: --case custom and its options after the named case; refused only for
        # the missing folder, after the options passed.
        ("benchmark", ["--case", "8x1024", "--case", "custom", "--frames", "4", "--size", "64x64", "-o", "no/x.json"]),
    ]
    assert _run_tools(runs, tmp_path) == [
        (2, refused.format("--frames and --size need", "they define")),
        (2, refused.format("--upscale needs", "it defines")),
        (2, refused.format("--size needs", "it defines")),
        (2, "benchmark: error: Cannot write no/x.json: the folder no does not exist.\n"),
    ]
