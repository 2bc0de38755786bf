"""`cascadev eval` end to end: values equal the reference definitions, reports, bad inputs."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import assert_one_line_error, exit_status
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from videos import make_frames

from cascadev.cli import main
from cascadev.evaluation import metrics as M
from cascadev.evaluation import report
from cascadev.frames import resize_uint8
from cascadev.video_io import VideoReader, write_video

REPO = Path(__file__).resolve().parents[1]
VBENCH = ["subject_consistency", "background_consistency", "motion_smoothness", "imaging_quality", "aesthetic_quality"]


def run_cli(capsys, *argv):
    code = exit_status(main, ["eval", *[str(a) for a in argv], "--quiet"])  # the parser checks --device (SystemExit)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def lossless(path, frames, fps=30.0):
    write_video(path, frames, fps, codec="libx264rgb", crf=0)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No LPIPS backbone and no vbench, whatever the machine has; LPIPS tests patch the loader."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setitem(sys.modules, "vbench", None)


@pytest.fixture
def random_lpips(monkeypatch):
    real = M.load_lpips
    torch.manual_seed(0)
    model = real("alex", "cpu", random_backbone=True)
    monkeypatch.setattr(M, "load_lpips", lambda net, device: model)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """REF (two videos, .mkv and .mp4) and a lossy REC of each, written losslessly in RGB."""
    root = tmp_path_factory.mktemp("eval")
    ref, rec = root / "ref", root / "CascadeV"
    ref.mkdir()
    rec.mkdir()
    rng = np.random.default_rng(0)
    for name, suffix, (t, h, w) in (("clip10", ".mp4", (7, 48, 64)), ("clip2", ".mkv", (5, 40, 40))):
        frames = make_frames(t, h, w)
        lossless(ref / f"{name}{suffix}", frames)
        noise = rng.integers(-20, 21, size=frames.shape)
        lossless(rec / f"{name}.mp4", np.clip(frames + noise, 0, 255).astype(np.uint8))
    return ref, rec


def decoded(path):
    reader = VideoReader(path)
    return reader.read(range(reader.num_frames))


def parse_tables(markdown: str) -> dict[str, dict[str, str]]:
    """{row label: {metric: cell}} from the README-style tables."""
    titles = {title: key for key, title in report.RECON_COLUMNS + report.VBENCH_COLUMNS}
    rows: dict[str, dict[str, str]] = {}
    header = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == report.LABEL_HEADER:
            header = [titles[c] for c in cells[1:]]
        elif header and not set(cells) <= {"--"}:
            rows.setdefault(cells[0], {}).update(zip(header, (c.strip("*") for c in cells[1:])))
    return rows


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def test_values_equal_the_reference_definitions(tmp_path, capsys, folders, random_lpips):
    ref, rec = folders
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out, "--chunk-frames", 3)
    assert code == 0, err
    results = json.loads(out.read_text())
    assert list(results["videos"]) == ["clip2", "clip10"]  # natural name order
    expected = {}
    for name, suffix in (("clip10", ".mp4"), ("clip2", ".mkv")):
        a, b = decoded(ref / f"{name}{suffix}"), decoded(rec / f"{name}.mp4")
        psnr = np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)])
        ssim = np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)])
        with torch.no_grad():
            unit = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2).float() / 255  # noqa: E731
            lp = random_lpips(unit(a), unit(b), normalize=True).mean().item()
        pairs = [np.abs(b[i + 1].astype(float) - b[i]).mean() for i in range(len(b) - 1)]
        expected[name] = {"psnr": psnr, "ssim": ssim, "lpips": lp, "temporal_flickering": (255 - np.mean(pairs)) / 255}
        got = results["videos"][name]
        assert got["psnr"] == pytest.approx(psnr, rel=1e-12)
        assert got["ssim"] == pytest.approx(ssim, rel=1e-12)
        assert got["lpips"] == pytest.approx(lp, rel=1e-4)
        assert got["temporal_flickering"] == pytest.approx(expected[name]["temporal_flickering"], rel=1e-12)
        assert len(results["per_frame"][name]["psnr"]) == len(a)
    for metric in ("psnr", "ssim", "lpips", "temporal_flickering"):  # mean over videos
        assert results["mean"][metric] == pytest.approx(np.mean([v[metric] for v in expected.values()]), rel=1e-4)
    assert set(results["unavailable"]) == set(VBENCH)
    assert all("vbench package is not installed" in r for r in results["unavailable"].values())
    on = results["measured_on"]
    assert on["videos"] == 2 and on["frames"] == 12 and on["resized"] is False
    assert on["frames_per_video"] == {"clip2": 5, "clip10": 7}
    assert on["sizes"] == {"clip2": [40, 40], "clip10": [48, 64]}
    assert on["psnr_cap_db"] == 100.0 and on["versions"]["torch"] == torch.__version__
    assert on["versions"]["lpips"] and on["versions"]["skimage"] and on["versions"]["cascadev"]
    assert results["label"] == "CascadeV" and "| CascadeV |" in stdout
    assert "not measured: subject_consistency" in err


def test_temporal_flickering_of_a_video_stepping_k_levels(tmp_path, capsys):
    ref, rec = tmp_path / "ref", tmp_path / "rec"
    ref.mkdir()
    rec.mkdir()
    for name, k in (("k3", 3), ("k10", 10)):
        frames = np.stack([np.full((16, 24, 3), 5 + k * t, np.uint8) for t in range(9)])
        lossless(ref / f"{name}.mp4", frames)
        lossless(rec / f"{name}.mp4", frames)
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out, "--metrics", "temporal_flickering,psnr")
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["videos"]["k3"]["temporal_flickering"] == pytest.approx(252 / 255, abs=1e-12)
    assert results["videos"]["k10"]["temporal_flickering"] == pytest.approx(245 / 255, abs=1e-12)
    assert results["mean"]["temporal_flickering"] == pytest.approx((252 + 245) / 2 / 255, abs=1e-12)
    assert results["unavailable"] == {}


def test_identical_videos(tmp_path, capsys, folders, random_lpips):
    ref, _ = folders
    out = tmp_path / "same.json"
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", ref, "-o", out, "--metrics", "psnr,ssim,lpips")
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["mean"]["psnr"] == 100.0  # the documented cap, never inf
    assert results["mean"]["ssim"] == pytest.approx(1.0)
    assert results["mean"]["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert all(v == 100.0 for frames in results["per_frame"].values() for v in frames["psnr"])
    assert "Infinity" not in out.read_text() and "NaN" not in out.read_text()


def test_two_single_videos_and_list_files(tmp_path, capsys, folders):
    ref, rec = folders
    out = tmp_path / "one.json"
    code, _, err = run_cli(
        capsys, "--ref", ref / "clip10.mp4", "--rec", rec / "clip10.mp4", "-o", out, "--max-frames", 4
    )
    assert code == 0, err
    one = json.loads(out.read_text())
    assert list(one["videos"]) == ["clip10"] and len(one["per_frame"]["clip10"]["psnr"]) == 4
    assert one["measured_on"]["per_video"]["clip10"]["truncated"] is True

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ref.txt").write_text(f"# originals\n{ref / 'clip2.mkv'}\n\n{ref / 'clip10.mp4'}\n")
    # A JSON list as training and the batch commands take it (objects with a caption, or plain paths).
    (lists / "rec.json").write_text(
        json.dumps([{"path": str(rec / "clip10.mp4"), "caption": "x"}, str(rec / "clip2.mp4")])
    )
    code, _, err = run_cli(capsys, "--ref", lists / "ref.txt", "--rec", lists / "rec.json", "-o", tmp_path / "l.json")
    assert code == 0, err
    listed = json.loads((tmp_path / "l.json").read_text())
    assert list(listed["videos"]) == ["clip2", "clip10"]
    assert listed["videos"]["clip10"]["psnr"] < one["videos"]["clip10"]["psnr"] + 5


# --------------------------------------------------------------------------------------------
# Mismatched inputs
# --------------------------------------------------------------------------------------------


@pytest.fixture
def mismatch(tmp_path):
    ref, rec = tmp_path / "ref", tmp_path / "rec"
    ref.mkdir()
    rec.mkdir()
    frames = make_frames(6, 48, 64)
    lossless(ref / "a.mp4", frames)
    return ref, rec, frames


def test_missing_and_extra_names(tmp_path, capsys, mismatch):
    ref, rec, frames = mismatch
    lossless(rec / "b.mp4", frames)
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out)
    assert_one_line_error(code, err, "Video a", "not in --rec")
    lossless(rec / "a.mp4", frames)
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out)
    assert_one_line_error(code, err, "Video b", "not in --ref")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec", "ref"]  # nothing written


def test_other_frame_size_is_an_error_or_resized(tmp_path, capsys, mismatch):
    ref, rec, frames = mismatch
    small = frames[:, ::2, ::2].copy()
    lossless(rec / "a.mp4", small)
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out)
    assert_one_line_error(code, err, "Video a", "32x24", "64x48", "--resize")  # WxH, as video tools write sizes
    assert not out.exists()
    code, _, err = run_cli(
        capsys, "--ref", ref, "--rec", rec, "-o", out, "--resize", "--metrics", "psnr,ssim,temporal_flickering"
    )
    assert code == 0, err
    results = json.loads(out.read_text())
    want = resize_uint8(decoded(rec / "a.mp4"), 48, 64)
    got_ref = decoded(ref / "a.mp4")
    psnr = np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(got_ref, want)])
    assert results["videos"]["a"]["psnr"] == pytest.approx(psnr, rel=1e-12)
    # Flickering is measured on REC as it is, not on the resized frames.
    assert results["videos"]["a"]["temporal_flickering"] == pytest.approx(M.temporal_flickering(decoded(rec / "a.mp4")))
    on = results["measured_on"]
    assert on["resized"] is True and on["resized_videos"] == ["a"]
    assert on["per_video"]["a"]["rec_size"] == [24, 32] and on["per_video"]["a"]["ref_size"] == [48, 64]


def test_other_frame_count_is_an_error_or_the_shorter_length(tmp_path, capsys, mismatch):
    ref, rec, frames = mismatch
    lossless(rec / "a.mp4", frames[:4])
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out)
    assert_one_line_error(code, err, "Video a", "6 frames", "has 4", "--resize")
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out, "--resize", "--metrics", "psnr")
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["videos"]["a"]["psnr"] == 100.0
    on = results["measured_on"]
    assert on["frames_per_video"] == {"a": 4} and on["truncated_videos"] == ["a"]
    assert on["per_video"]["a"]["ref_frames"] == 6 and on["per_video"]["a"]["rec_frames"] == 4
    assert on["resized"] is False and "min(REF, REC)" in on["frame_count_policy"]
    # With --max-frames the counts only need to agree up to N.
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out, "--max-frames", 4, "--metrics", "psnr")
    assert code == 0, err
    assert json.loads(out.read_text())["measured_on"]["frames_per_video"] == {"a": 4}
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out, "--max-frames", 5)
    assert_one_line_error(code, err, "Video a", "has 4")


# --------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def test_bad_inputs(tmp_path, capsys, folders):
    ref, rec = folders
    out = tmp_path / "out" / "r.json"
    out.parent.mkdir()
    cases = [
        (["--ref", tmp_path / "nope", "--rec", rec, "-o", out], ["nope", "does not exist"]),
        (["--ref", ref, "--rec", rec, "-o", out, "--metrics", "psnr,contrast"], ["contrast", "--metrics"]),
        (["--ref", ref, "--rec", rec, "-o", tmp_path / "missing" / "r.json"], ["missing", "does not exist"]),
        (["--ref", ref, "--rec", rec, "-o", tmp_path / "out" / "r.txt"], ["r.txt", ".json"]),
        (["--ref", ref, "--rec", rec, "-o", out, "--device", "tpu"], ["tpu"]),
        (["--ref", ref, "--rec", rec, "-o", out, "--metrics", "lpips"], ["lpips", "alexnet-owt-7be5be79.pth"]),
        (["--ref", ref, "--rec", rec, "-o", out, "--metrics", "imaging_quality"], ["imaging_quality", "vbench"]),
    ]
    if Path("/proc/self").is_dir():  # a folder that exists and takes no files
        cases.append(
            (["--ref", ref, "--rec", rec, "-o", "/proc/r.json", "--metrics", "psnr"], ["Writing /proc/r.json failed"])
        )
    for argv, needles in cases:
        code, stdout, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, *needles)
        assert stdout == ""
    assert list(out.parent.iterdir()) == []


def test_unreadable_video_and_duplicate_names(tmp_path, capsys, folders):
    ref, _ = folders
    rec = tmp_path / "rec"
    rec.mkdir()
    (rec / "clip10.mp4").write_bytes(b"not a video at all" * 10)
    lossless(rec / "clip2.mp4", make_frames(5, 40, 40))
    out = tmp_path / "r.json"
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out)
    assert_one_line_error(code, err, "clip10.mp4", "not a readable video")
    (rec / "clip10.mp4").unlink()
    lossless(rec / "clip10.mkv", make_frames(7, 48, 64))
    lossless(rec / "clip10.mov", make_frames(7, 48, 64))
    code, _, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out)
    assert_one_line_error(code, err, "Two inputs of --rec", "are named clip10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


def test_a_failure_while_writing_leaves_no_partial_outputs(tmp_path, capsys, folders, monkeypatch):
    ref, rec = folders

    def broken(results, path):
        Path(path).write_bytes(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_figure", broken)
    code = main(
        ["eval", "--ref", str(ref), "--rec", str(rec), "-o", str(tmp_path / "r.json"), "--quiet", "--metrics", "psnr"]
    )
    capsys.readouterr()
    assert code == 1
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Report files
# --------------------------------------------------------------------------------------------


def test_report_files_hold_what_the_table_says(tmp_path, capsys, folders, random_lpips):
    ref, rec = folders
    out = tmp_path / "results.json"
    code, stdout, err = run_cli(capsys, "--ref", ref, "--rec", rec, "-o", out, "--label", "Ours/1x32x32=1024")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md", "results.png"]
    results = json.loads(out.read_text())
    markdown = (tmp_path / "results.md").read_text()
    rows = parse_tables(markdown)
    assert list(rows) == ["Ours/1x32x32=1024"]
    row = rows["Ours/1x32x32=1024"]
    assert list(row) == [
        "psnr",
        "ssim",
        "lpips",
        "sharpness",
        "subject_consistency",
        "background_consistency",
        "temporal_flickering",
        "motion_smoothness",
        "imaging_quality",
        "aesthetic_quality",
    ]
    for metric, cell in row.items():
        if metric in results["mean"]:
            assert re.fullmatch(r"\d+\.\d{4}", cell) and float(cell) == round(results["mean"][metric], 4)
        else:
            assert cell == "n/a" and metric in results["unavailable"]
    assert "| Model/Compression Factor | PSNR↑ | SSIM↑ | LPIPS↓ |" in markdown
    assert "vbench package is not installed" in markdown
    assert parse_tables(stdout) == rows  # the table printed is the one saved
    image = Image.open(tmp_path / "results.png")
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300


def test_report_combines_rows_and_bolds_the_best(tmp_path, capsys, folders):
    ref, rec = folders
    for name, target in (("model", rec), ("same", ref)):
        code, _, err = run_cli(
            capsys, "--ref", ref, "--rec", target, "-o", tmp_path / f"{name}.json", "--metrics", "psnr,ssim"
        )
        assert code == 0, err
    table = tmp_path / "table.md"
    assert (
        report.main([str(tmp_path / "model.json"), str(tmp_path / "same.json"), "-o", str(table), "--labels", "A,B"])
        == 0
    )
    text = table.read_text()
    rows = parse_tables(text)
    assert list(rows) == ["A", "B"] and rows["B"]["psnr"] == "100.0000"
    assert "| B | **100.0000** | **1.0000** |" in text
    assert "LPIPS" not in text and "VBench" not in text  # only the columns asked for
    assert report.main([str(tmp_path / "nothing.json")]) == 2
    assert capsys.readouterr().err.strip().startswith("cascadev-report: error:")


def test_entry_script_runs_eval(tmp_path, capsys, folders, monkeypatch):
    ref, rec = folders
    out = tmp_path / "s.json"
    monkeypatch.setattr(
        sys,
        "argv",
        ["evaluate.py", "--ref", str(ref), "--rec", str(rec), "-o", str(out), "--metrics", "ssim", "--quiet"],
    )
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "scripts" / "evaluate.py"), run_name="__main__")
    assert info.value.code == 0
    assert set(json.loads(out.read_text())["mean"]) == {"ssim"}


def test_vbench_scores_join_the_results_when_installed(tmp_path, capsys, folders, monkeypatch):
    import types

    from cascadev.evaluation.vbench import VBENCH_WEIGHT_FILES

    calls = []

    class FakeVBench:  # per-video score: the frame count / 100; VBench's own aggregate: 0.25
        def __init__(self, device, full_info_dir, output_path):
            self.out = Path(output_path)
            self.out.mkdir(parents=True, exist_ok=True)

        def evaluate(self, videos_path, name, dimension_list, local, mode):
            calls.append(dimension_list)
            entries = [
                {"video_path": str(p), "video_results": VideoReader(p).num_frames / 100}
                for p in Path(videos_path).iterdir()
            ]
            (self.out / f"{name}_eval_results.json").write_text(json.dumps({dimension_list[0]: [0.25, entries]}))

    monkeypatch.setitem(sys.modules, "vbench", types.SimpleNamespace(VBench=FakeVBench))
    cache = tmp_path / "vbench_cache"
    for rel in VBENCH_WEIGHT_FILES["subject_consistency"] + VBENCH_WEIGHT_FILES["imaging_quality"]:
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_bytes(b"")
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(cache))
    ref, rec = folders
    out = tmp_path / "v.json"
    code, stdout, err = run_cli(
        capsys,
        "--ref",
        ref,
        "--rec",
        rec,
        "-o",
        out,
        "--device",
        "cpu",
        "--metrics",
        "psnr,subject_consistency,imaging_quality,aesthetic_quality",
    )
    assert code == 0, err
    results = json.loads(out.read_text())
    assert calls == [["subject_consistency"], ["imaging_quality"]]  # one batch per dimension
    assert results["videos"]["clip10"]["subject_consistency"] == 0.07
    assert results["videos"]["clip2"]["imaging_quality"] == 0.05
    assert results["mean"]["subject_consistency"] == 0.25 and results["mean"]["imaging_quality"] == 0.25
    assert "ViT-L-14.pt" in results["unavailable"]["aesthetic_quality"]
    assert parse_tables(stdout)["CascadeV"]["subject_consistency"] == "0.2500"
    assert results["measured_on"]["vbench_cache_dir"] == str(cache)


def test_flickering_is_explained_not_bolded_and_the_figure_is_readable():
    """A frozen previewer 'wins' flickering: the tables say what it means instead of bolding it; the
    figure's flicker axis has no offset notation and an unmeasured metric gets a 'not measured' panel."""
    frozen = {
        "label": "previewer",
        "mean": {"psnr": 20.0, "temporal_flickering": 0.9999999},
        "videos": {
            "a": {"psnr": 20.0, "temporal_flickering": 0.9999999},
            "b": {"psnr": 20.0, "temporal_flickering": 0.9999998},
        },
    }
    model = {"label": "model", "mean": {"psnr": 25.0, "temporal_flickering": 0.95}, "videos": {}}
    text = report.markdown_tables([("previewer", frozen), ("model", model)])
    assert "**1.0000**" not in text and "**25.0000**" in text
    assert report.FLICKER_NOTE in text and "higher means less change between frames" in text
    fig = report.build_figure(dict(frozen, unavailable={"lpips": "no AlexNet weights"}))
    fig.canvas.draw()
    flicker = next(ax for ax in fig.axes if ax.get_title().startswith("Temporal Flickering"))
    assert flicker.yaxis.get_major_formatter().get_offset() == ""
    lpips = next(ax for ax in fig.axes if ax.get_title() == "LPIPS")
    assert [t.get_text() for t in lpips.texts] == ["not measured"]
