"""Many inputs per command: expansion, naming, resume, the manifest, bad inputs; the latent store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error
from videos import write_test_video

from cascadev import batch, inputs
from cascadev.cli import main
from cascadev.errors import CascadeVError
from cascadev.latent_io import load_latent
from cascadev.latent_store import LatentStore, clip_starts
from cascadev.video_io import VideoReader

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
MODEL = ["--config", TINY, "--random-init", "--quiet"]


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    folder = root / "vids"
    folder.mkdir()
    for name, frames in (("a", 8), ("b", 12), ("c10", 4)):
        write_test_video(folder / f"{name}.mp4", frames, 64, 64)
    (folder / "notes.txt").write_text("not a video\n")
    return folder


def manifest(out: Path) -> dict[str, dict]:
    return {Path(r["input"]).stem: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_expand_inputs_paths_folders_lists_and_globs(tmp_path, vids):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# videos\n{vids / 'b.mp4'}\n\n{vids / 'a.mp4'}\n")
    got = inputs.expand_inputs([str(listing), str(vids / "c*.mp4"), str(vids)])
    assert [p.name for p in got] == ["b.mp4", "a.mp4", "c10.mp4"]  # list order, then each file once
    assert inputs.is_batch([str(vids)]) and inputs.is_batch([str(listing)]) and inputs.is_batch([str(vids / "*.mp4")])
    assert not inputs.is_batch([str(vids / "a.mp4")])
    with pytest.raises(Exception, match="matches no files"):
        inputs.expand_inputs([str(vids / "zz*.mp4")])
    with pytest.raises(Exception, match="two|Two"):
        batch.make_jobs("encode", [vids / "a.mp4", tmp_path / "a.mkv"], tmp_path)


def test_an_input_in_a_folder_we_may_not_enter_is_one_line(tmp_path, monkeypatch):
    """stat() raises PermissionError (EACCES) under a folder without x permission, which pathlib's is_dir()
    passes on (root does not see it: simulated): one line naming the input, not an internal error."""
    locked = tmp_path / "locked" / "c.mp4"
    real = Path.stat

    def stat(self, **kwargs):
        if "locked" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    for check in (lambda: inputs.is_batch([str(locked)]), lambda: inputs.expand_inputs([str(locked)])):
        with pytest.raises(CascadeVError, match=f"The input {locked} cannot be looked at \\(Permission denied\\)"):
            check()


def test_balance_by_frame_count():
    parts = batch.balance([100, 10, 10, 60, 40], 2)
    loads = [sum([100, 10, 10, 60, 40][i] for i in p) for p in parts]
    assert sorted(i for p in parts for i in p) == [0, 1, 2, 3, 4]  # every item exactly once
    assert max(loads) - min(loads) <= 10 and all(p == sorted(p) for p in parts)


def test_batch_encode_resumes_records_and_reports_a_bad_input(tmp_path, vids, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "out"
    code = main(["encode", str(vids / "a.mp4"), str(vids / "b.mp4"), str(bad), "-o", str(out), *MODEL])
    assert_one_line_error(code, capsys.readouterr().err, "1 of 3 inputs failed", "broken.mp4")
    rec = manifest(out)
    assert rec["a"]["status"] == rec["b"]["status"] == "done" and rec["broken"]["status"] == "failed"
    assert rec["b"]["frames"] == 12 and rec["a"]["seconds"] > 0 and "broken.mp4" in rec["broken"]["error"]
    assert load_latent(out / "b.safetensors")[0].shape == (16, 12, 2, 2)
    assert not (out / "broken.safetensors").exists()
    mtime = (out / "a.safetensors").stat().st_mtime_ns
    # A rerun over the folder skips the finished ones, does the new one, and succeeds.
    assert main(["encode", str(vids), "-o", str(out), *MODEL]) == 0
    rec = manifest(out)
    assert [rec[n]["status"] for n in ("a", "b", "c10")] == ["skipped", "skipped", "done"]
    assert rec["a"]["frames"] == 8  # carried over from the run that made it
    assert (out / "a.safetensors").stat().st_mtime_ns == mtime
    assert rec["a"]["settings"] == rec["c10"]["settings"] and rec["a"]["settings"]["command"] == "encode"
    # Other options: the complete outputs are not this run's, and are refused rather than kept silently.
    capsys.readouterr()
    code = main(["encode", str(vids), "-o", str(out), "--num-frames", "3", *MODEL])
    assert_one_line_error(code, capsys.readouterr().err, "made with other options", "num_frames=None (now 3)")
    assert (out / "a.safetensors").stat().st_mtime_ns == mtime
    assert main(["encode", str(vids), "-o", str(out), "--device", "cpu", *MODEL]) == 0  # where it runs: the same


def test_single_input_keeps_todays_behaviour(tmp_path, vids):
    out = tmp_path / "one.safetensors"
    assert main(["encode", str(vids / "a.mp4"), "-o", str(out), *MODEL]) == 0
    assert out.is_file() and not (tmp_path / "manifest.jsonl").exists()


def test_batch_decode_names_outputs_after_inputs(tmp_path, vids):
    latents = tmp_path / "lat"
    assert main(["encode", str(vids / "a.mp4"), str(vids / "c10.mp4"), "-o", str(latents), *MODEL]) == 0
    out = tmp_path / "videos"
    assert main(["decode", str(latents / "*.safetensors"), "-o", str(out), *MODEL]) == 0
    assert sorted(p.name for p in out.glob("*.mp4")) == ["a.mp4", "c10.mp4"]
    assert {r["status"] for r in manifest(out).values()} == {"done"}


def test_clip_starts():
    assert clip_starts(0, 10, 4) == [(0, 4), (4, 4)]
    assert clip_starts(3, 2, 4) == [(3, 2)] and clip_starts(0, 9, None) == [(0, 9)]


def test_latent_store_round_trip_shards_captions_and_resume(tmp_path, vids):
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"path": str(vids / "a.mp4"), "caption": "a square"}, str(vids / "b.mp4")]))
    store = tmp_path / "store"
    # Each clip latent is 16 x 4 x 2 x 2 float32 = 1 KiB: 1.5 KiB shards hold one clip each.
    args = [
        "encode",
        str(listing),
        "-o",
        str(store),
        "--shards",
        "--clip-frames",
        "4",
        "--shard-size",
        "0.0015",
        *MODEL,
    ]
    assert main(args) == 0
    shards = sorted(store.glob("shard-*.safetensors"))
    assert len(shards) == 5 and all(p.stat().st_size < 0.0015 * 2**20 + 1024 for p in shards)
    data = LatentStore(store)
    assert len(data) == 5  # a: 2 clips of 4 frames, b: 3
    whole = {
        n: load_latent(p)[0]
        for n, p in (("a", tmp_path / "a.safetensors"), ("b", tmp_path / "b.safetensors"))
        if main(["encode", str(vids / f"{n}.mp4"), "-o", str(p), *MODEL]) == 0
    }
    for item in data:
        name = Path(item["video"]).stem
        assert item["latent"].shape == (16, 4, 2, 2) and item["fps"] == pytest.approx(24.0)
        assert item["caption"] == ("a square" if name == "a" else "") and (item["height"], item["width"]) == (64, 64)
        expected = whole[name][:, item["start"] : item["start"] + 4]
        torch.testing.assert_close(item["latent"], expected, rtol=1e-4, atol=1e-5)
    batch_ = next(iter(torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)))
    assert batch_["latent"].shape == (4, 16, 4, 2, 2) and len(batch_["caption"]) == 4
    # Resume: a rerun adds nothing; a lost shard's video is encoded again, and the index has each clip once.
    assert main(args) == 0 and len(list(store.glob("shard-*"))) == 5
    lost = next(p for p in shards if "b.mp4" in json.dumps([c for c in data.clips if c["shard"] == p.name]))
    lost.unlink()
    assert main(args) == 0
    again = LatentStore(store)
    assert len(again) == 5 and sorted((c["video"], c["clip"]) for c in again.clips) == sorted(
        (c["video"], c["clip"]) for c in data.clips
    )
    assert manifest(store)["b"]["status"] == "done" and manifest(store)["a"]["status"] == "skipped"
    # One video, into its own store, twice: the second run resumes (it finds the video complete).
    one = [a if a != str(listing) else str(vids / "a.mp4") for a in args]
    one[one.index(str(store))] = str(tmp_path / "one")
    assert main(one) == 0 and main(one) == 0
    assert len(LatentStore(tmp_path / "one")) == 2 and manifest(tmp_path / "one")["a"]["status"] == "skipped"


def test_batch_interpolate_and_upscale_and_a_file_as_output_folder(tmp_path, capsys):
    for name in ("x", "y"):
        write_test_video(tmp_path / f"{name}.mp4", 3, 17, 23, fps=10.0)
    fast = [*MODEL, "--steps", "1"]
    out = tmp_path / "smooth"
    assert main(["interpolate", str(tmp_path / "x.mp4"), str(tmp_path / "y.mp4"), "-o", str(out), *fast]) == 0
    for name in ("x", "y"):
        video = VideoReader(out / f"{name}.mp4")
        assert video.num_frames == 9 and abs(video.fps - 40.0) < 1e-3  # 4x frame rate, named after its input
    out = tmp_path / "big"
    assert main(["upscale", str(tmp_path / "*.mp4"), "-o", str(out), *fast]) == 0
    assert (VideoReader(out / "y.mp4").height, VideoReader(out / "y.mp4").width) == (68, 92)
    capsys.readouterr()
    code = main(["encode", str(tmp_path / "*.mp4"), "-o", str(tmp_path / "x.mp4"), *MODEL])
    assert_one_line_error(code, capsys.readouterr().err, "must be a folder", "x.mp4")


def test_decode_from_segments_sampled_elsewhere_equals_decode():
    """The segment API that processes share: ``sample_segment`` per segment, merged by ``decode(sampled=)``."""
    from cascadev.loading import build_pipeline, load_config

    pipe = build_pipeline(load_config(TINY), ["dit", "vae"], random_init=True, segment_frames=6)
    latent = torch.randn(16, 10, 2, 2)
    read = lambda t0, t1: latent[:, t0:t1]  # noqa: E731
    ranges = pipe.segments(10)
    assert ranges == [(0, 6), (4, 10)]  # two segments sharing two frames
    segments = [pipe.sample_segment(read, s0, s1, steps=1, seed=2) for s0, s1 in ranges]
    direct = torch.cat(list(pipe.decode(read, 10, steps=1, seed=2, progress=False)))
    merged = torch.cat(list(pipe.decode(read, 10, steps=1, seed=2, progress=False, sampled=segments.__getitem__)))
    torch.testing.assert_close(merged, direct, rtol=1e-5, atol=1e-5)


def test_an_output_folder_that_is_the_inputs_folder_is_refused(tmp_path, capsys):
    vids = tmp_path / "vids"
    vids.mkdir()
    for name in ("a", "b"):
        write_test_video(vids / f"{name}.mp4", 3, 16, 16, fps=10.0)
    before = {p.name: p.read_bytes() for p in vids.iterdir()}
    for command, option in (("upscale", "--scale"), ("interpolate", "--factor")):
        code = main([command, str(vids), "-o", str(vids), option, "1", *MODEL])
        assert_one_line_error(code, capsys.readouterr().err, "is the input", "choose another output folder")
    assert {p.name: p.read_bytes() for p in vids.iterdir()} == before  # nothing taken for done, nothing written


def test_a_missing_list_entry_is_one_failed_job_not_an_input_the_outputs_would_overwrite(tmp_path):
    write_test_video(tmp_path / "a.mp4", 3, 16, 16, fps=10.0)
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4\nmissing.mp4\n")
    jobs = batch.make_jobs("upscale", inputs.expand_inputs([str(listing)]), tmp_path / "out")  # outputs yet to exist
    assert [job.name for job in jobs] == ["a", "missing"]


def test_a_damaged_latent_store_is_named_in_one_line_and_never_read_outside_itself(tmp_path, vids):
    store = tmp_path / "store"
    assert main(["encode", str(vids / "a.mp4"), "-o", str(store), "--shards", "--clip-frames", "4", *MODEL]) == 0
    index = store / "index.jsonl"
    lines = index.read_text().splitlines()
    good = json.loads(lines[0])
    for bad, needle in (
        ({**good, "shard": "../../../etc/passwd"}, "Line 1 of the latent store index"),  # outside the store
        ({k: v for k, v in good.items() if k != "shard"}, "Line 1 of the latent store index"),
    ):
        index.write_text(json.dumps(bad) + "\n")
        with pytest.raises(CascadeVError, match=needle):
            LatentStore(store)
    index.write_text("{broken\n")
    with pytest.raises(CascadeVError, match="Line 1 of the latent store index"):
        LatentStore(store)
    index.write_text("\n".join(lines) + "\n")
    (store / good["shard"]).write_bytes(b"garbage")
    with pytest.raises(CascadeVError, match=f"Clip 0 of the latent store {store} cannot be read from"):
        LatentStore(store)[0]


def test_the_manifest_accounts_for_every_complete_output(tmp_path, vids, capsys):
    """Settings checks that hold across runs: records of other inputs are kept, a stopped run's finished
    jobs are recorded as they finish, files no record accounts for are refused, a damaged manifest is not
    an internal error, and one config file is one setting however it is spelled."""
    out = tmp_path / "out"
    a, b = str(vids / "a.mp4"), str(vids / "b.mp4")
    only_a, only_b = str(vids / "a.mp*"), str(vids / "b.mp*")  # a pattern: a batch of one
    assert main(["encode", a, b, "-o", str(out), *MODEL]) == 0
    assert main(["encode", only_a, "-o", str(out), *MODEL]) == 0  # a run over a alone keeps b's record
    capsys.readouterr()
    code = main(["encode", only_b, "-o", str(out), "--num-frames", "3", *MODEL])
    assert_one_line_error(code, capsys.readouterr().err, "made with other options", "num_frames=None (now 3)")
    # Another spelling of the same config file is the same setting.
    relative = os.path.relpath(TINY)
    assert main(["encode", a, b, "-o", str(out), "--config", relative, "--random-init", "--quiet"]) == 0
    # A stopped run: its part holds the jobs it finished; the next run merges them (here: b's, other options).
    records = (out / "manifest.jsonl").read_text().splitlines()
    part = json.loads(records[1])
    part["settings"]["num_frames"] = 3
    (out / "manifest.jsonl").write_text(records[0] + "\n")
    (out / ".manifest.part0.jsonl").write_text(json.dumps(part) + "\n")
    code = main(["encode", a, b, "-o", str(out), *MODEL])
    assert_one_line_error(code, capsys.readouterr().err, "made with other options", "num_frames=3 (now None)")
    # Damaged records: skipped lines, wrong types: one line each, no internal error.
    (out / "manifest.jsonl").write_bytes(b'\xff\xfe not utf-8\n[1, 2]\n{"input": 3}\n' + records[0].encode() + b"\n")
    assert main(["encode", only_a, "-o", str(out), *MODEL]) == 0
    broken = json.loads(records[0])
    broken["settings"] = ["not", "a", "dict"]
    (out / "manifest.jsonl").write_text(json.dumps(broken) + "\n")
    assert_one_line_error(main(["encode", only_a, "-o", str(out), *MODEL]), capsys.readouterr().err, "other options")
    # Files no record accounts for (decode into the folder of the videos it came from): refused.
    (out / "manifest.jsonl").write_text(records[0] + "\n")
    decoded, latents = tmp_path / "decoded", str(out / "a.safe*")
    assert main(["decode", latents, "-o", str(decoded), *MODEL, "--steps", "1"]) == 0
    (decoded / "manifest.jsonl").write_text(records[0] + "\n")  # an encode record of another input
    code = main(["decode", latents, "-o", str(decoded), *MODEL, "--steps", "1"])
    assert_one_line_error(code, capsys.readouterr().err, "that its manifest does not account for")
    # A manifest that is a folder: refused before any work.
    (tmp_path / "m" / "manifest.jsonl").mkdir(parents=True)
    assert_one_line_error(
        main(["encode", a, b, "-o", str(tmp_path / "m"), *MODEL]), capsys.readouterr().err, "manifest"
    )
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["manifest.jsonl"]
