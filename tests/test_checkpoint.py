"""Safe checkpoint reading, fit checking, loading and atomic safetensors writing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cascadev.checkpoint import check_fit, load_weights, read_state_dict, save_safetensors
from cascadev.errors import CascadeVError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
CONVERT = REPO / "tools" / "convert_checkpoint.py"
TINY_CONFIG = str(REPO / "configs" / "tiny.py")


def _small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = _small_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_equal_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


class _RunsCodeWhenUnpickled:
    """Pickles as a call to ``open(marker, 'w')``: loading it unsafely creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ---------------------------------------------------------------- reading


def test_safetensors_roundtrip(tmp_path):
    sd = _random_state_dict()
    sd["half"] = torch.randn(3, 2).to(torch.bfloat16)
    path = save_safetensors(sd, tmp_path / "w.safetensors", metadata={"what": "test"})
    assert path == tmp_path / "w.safetensors"
    _assert_equal_dicts(read_state_dict(path), sd)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_pth_flat_roundtrip(tmp_path, suffix):
    sd = _random_state_dict()
    path = tmp_path / f"w{suffix}"
    torch.save(sd, path)
    _assert_equal_dicts(read_state_dict(path), sd)


def test_pth_state_dict_wrapper_and_key(tmp_path):
    sd, ema = _random_state_dict(0), _random_state_dict(1)
    path = tmp_path / "release.pth"
    torch.save({"state_dict": sd, "state_dict_ema": ema, "step": 1000, "optimizer": {"lr": 2e-5}}, path)
    _assert_equal_dicts(read_state_dict(path), sd)
    _assert_equal_dicts(read_state_dict(path, key="state_dict_ema"), ema)
    with pytest.raises(CascadeVError, match="no entry 'ema'.*state_dict_ema"):
        read_state_dict(path, key="ema")
    with pytest.raises(CascadeVError, match="'step'.*not a dict of tensors"):
        read_state_dict(path, key="step")


def test_pth_without_state_dict_is_refused(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": _random_state_dict(), "step": 3}, path)
    with pytest.raises(CascadeVError, match=r"odd\.pth.*entries: model, step"):
        read_state_dict(path)
    _assert_equal_dicts(read_state_dict(path, key="model"), _random_state_dict())


def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "code_was_run"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _random_state_dict(), "payload": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CascadeVError, match=r"evil\.pth cannot be loaded safely") as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # Control: the payload is real, an unsafe load would have run it.
    control = torch.load(path, weights_only=False)
    control["payload"].close()
    assert marker.exists()


@pytest.mark.parametrize(
    "name, data",
    [
        ("garbage.pth", b"this is not a checkpoint at all" * 4),
        ("empty.pth", b""),
        ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"),
        ("empty.safetensors", b""),
    ],
)
def test_corrupt_files_are_refused(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CascadeVError, match=name.replace(".", r"\.")) as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


def test_truncated_pth_is_refused(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(_random_state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CascadeVError, match=r"cut\.pth is corrupt"):
        read_state_dict(path)


def test_missing_directory_and_unknown_extension(tmp_path):
    with pytest.raises(CascadeVError, match=r"nope\.pth does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CascadeVError, match="is not a file"):
        read_state_dict(tmp_path)
    weird = tmp_path / "w.npz"
    weird.write_bytes(b"x")
    with pytest.raises(CascadeVError, match=r"w\.npz has an unknown extension '\.npz'"):
        read_state_dict(weird)


# ---------------------------------------------------------------- writing


def test_save_safetensors_handles_shared_and_strided_tensors(tmp_path):
    base = torch.arange(12.0)
    sd = {
        "whole": base,
        "first_half": base[:6],
        "tied": base,
        "transposed": torch.arange(6.0).view(2, 3).t(),
    }
    path = save_safetensors(sd, tmp_path / "shared.safetensors")
    back = load_file(str(path))
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    base[0] = 100.0  # the saved copies are independent of the caller's tensors
    assert back["whole"][0] == 0


def test_save_safetensors_failure_leaves_nothing(tmp_path):
    with pytest.raises(CascadeVError, match="does not exist"):
        save_safetensors({"a": torch.ones(1)}, tmp_path / "missing_dir" / "w.safetensors")
    with pytest.raises(CascadeVError, match="meta device"):
        save_safetensors({"a": torch.empty(2, device="meta")}, tmp_path / "w.safetensors")
    with pytest.raises(CascadeVError, match="metadata"):
        save_safetensors({"a": torch.ones(1)}, tmp_path / "w.safetensors", metadata={"n": 1})
    assert list(tmp_path.iterdir()) == []


def test_save_safetensors_replaces_existing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors({"a": torch.ones(2)}, path)
    save_safetensors({"b": torch.zeros(3)}, path)
    assert set(load_file(str(path))) == {"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_a_saved_file_has_an_outputs_mode_not_a_temporary_files(tmp_path):
    """safetensors' save_file makes a new private (0600) file in place of the temporary one; an output is
    shared like any other file: 0666 & ~umask."""
    umask = os.umask(0o022)
    try:
        assert save_safetensors({"a": torch.ones(2)}, tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


# ---------------------------------------------------------------- fitting


def test_check_fit_accepts_exact_match():
    check_fit(_small_model(), _random_state_dict(), "the small model")


def test_check_fit_names_every_kind_of_difference():
    sd = _random_state_dict()
    del sd["0.bias"]
    del sd["1.running_var"]
    sd["extra.weight"] = torch.zeros(1)
    sd["2.weight"] = torch.zeros(2, 5)
    sd["0.weight"] = sd["0.weight"].to(torch.int32)  # integer values for a float weight: not a precision
    with pytest.raises(CascadeVError) as info:
        check_fit(_small_model(), sd, "the small model", source="w.pth")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("checkpoint w.pth does not fit the small model: ")
    assert "2 missing keys (0.bias, 1.running_var)" in msg
    assert "1 unexpected (extra.weight)" in msg
    assert "1 shape mismatch (2.weight: checkpoint (2, 5) vs model (2, 4))" in msg
    assert "1 with integer values for floating-point weights (0.weight: checkpoint int32 vs model float32)" in msg
    halved = {k: v.half() for k, v in _random_state_dict().items()}  # a blanket .half(): float counts too
    check_fit(_small_model(), halved, "the small model")


class _ManifestModel(nn.Module):
    """Meta-device parameters with the names and shapes of a manifest (no real memory)."""

    def __init__(self, shapes: dict[str, list[int]]) -> None:
        super().__init__()
        for name, shape in shapes.items():
            *parents, leaf = name.split(".")
            module = self
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, nn.Parameter(torch.empty(shape, device="meta")))


def test_check_fit_message_for_released_dit_layout():
    manifest = json.loads((FIXTURES / "manifest_dit_s1024_effn_f32.json").read_text())
    model = _ManifestModel(manifest["keys"])
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    sd = {k: torch.empty(v, device="meta") for k, v in manifest["keys"].items()}
    check_fit(model, sd, "the DiT of config s1024.py")  # the released layout fits itself

    for k in [k for k in sd if k.startswith("blocks.27.")]:
        del sd[k]
    sd["x_embedder.proj.weight"] = torch.empty(1152, 8, 2, 2, device="meta")
    sd["y_embedder.y_proj.fc1.weight"] = torch.empty(1152, 4096, device="meta")
    with pytest.raises(CascadeVError) as info:
        check_fit(model, sd, "the DiT of config s1024.py", source="s1024.effn-f32.pth")
    msg = str(info.value)
    n_block = sum(1 for k in manifest["keys"] if k.startswith("blocks.27."))
    assert "\n" not in msg
    assert msg.startswith("checkpoint s1024.effn-f32.pth does not fit the DiT of config s1024.py: ")
    assert f"{n_block} missing keys (blocks.27." in msg
    assert "1 unexpected (y_embedder.y_proj.fc1.weight)" in msg
    assert "x_embedder.proj.weight: checkpoint (1152, 8, 2, 2) vs model (1152, 20, 2, 2)" in msg
    if n_block > 5:
        assert ", ...)" in msg and msg.count("blocks.27.") == 5


# ---------------------------------------------------------------- loading


def test_load_weights_into_meta_model(tmp_path):
    sd = _random_state_dict()
    path = save_safetensors(sd, tmp_path / "w.safetensors")
    with torch.device("meta"):
        model = _small_model()
    assert load_weights(model, path, "the small model") is model
    loaded = model.state_dict()
    _assert_equal_dicts(loaded, sd)
    assert all(not v.is_meta for v in loaded.values())
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.requires_grad
    assert model[1].num_batches_tracked.dtype == torch.int64
    model.eval()
    out = model[:2](torch.randn(1, 3, 5, 5))
    assert out.shape == (1, 4, 3, 3)


def test_load_weights_keeps_meta_checkpoint_dtype_and_casts_real_model(tmp_path):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in _random_state_dict().items()}
    path = tmp_path / "w.pth"
    torch.save({"state_dict": sd}, path)

    with torch.device("meta"):
        meta_model = _small_model()
    load_weights(meta_model, path, "the small model")
    assert meta_model[0].weight.dtype == torch.float16

    real_model = _small_model().double()
    load_weights(real_model, path, "the small model")
    assert real_model[0].weight.dtype == torch.float64
    assert real_model[1].num_batches_tracked.dtype == torch.int64
    torch.testing.assert_close(real_model[0].weight, sd["0.weight"].double())
    assert real_model[1].num_batches_tracked.item() == 7


def test_load_weights_refuses_misfit_and_leaves_model_untouched(tmp_path):
    sd = _random_state_dict()
    sd["2.weight"] = torch.zeros(2, 3)
    path = save_safetensors(sd, tmp_path / "bad.safetensors")
    model = _small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CascadeVError, match=r"bad\.safetensors does not fit the small model: .*2\.weight"):
        load_weights(model, path, "the small model")
    _assert_equal_dicts(model.state_dict(), before)


# ---------------------------------------------------------------- converter


def _convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CONVERT), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_convert_checkpoint_cli(tmp_path):
    sd = _random_state_dict()
    src = tmp_path / "model.pth"
    torch.save({"state_dict": sd, "step": 5}, src)

    done = _convert(str(src))
    assert done.returncode == 0, done.stderr
    dst = tmp_path / "model.safetensors"
    _assert_equal_dicts(load_file(str(dst)), sd)
    n_params = sum(v.numel() for v in sd.values())
    assert f"{len(sd)} tensors" in done.stdout and f"{n_params:,} parameters" in done.stdout

    out = tmp_path / "half.safetensors"
    done = _convert(str(src), "-o", str(out), "--key", "state_dict", "--dtype", "bf16")
    assert done.returncode == 0, done.stderr
    half = load_file(str(out))
    assert half["0.weight"].dtype == torch.bfloat16
    assert half["1.num_batches_tracked"].dtype == torch.int64
    torch.testing.assert_close(half["0.weight"], sd["0.weight"].bfloat16())


@pytest.mark.parametrize(
    "make_bad, extra, expect",
    [
        ("corrupt", [], "corrupt"),
        ("evil", [], "cannot be loaded safely"),
        ("missing", [], "does not exist"),
        ("good", ["--key", "nothere"], "no entry 'nothere'"),
        ("good", ["--dtype", "fp8"], "--dtype: unknown dtype 'fp8'; choose bf16, fp16 or fp32"),
    ],
)
def test_convert_checkpoint_cli_errors(tmp_path, make_bad, extra, expect):
    src = tmp_path / "in.pth"
    marker = tmp_path / "code_was_run"
    if make_bad == "corrupt":
        src.write_bytes(b"\x80\x02garbage")
    elif make_bad == "evil":
        torch.save({"state_dict": _random_state_dict(), "x": _RunsCodeWhenUnpickled(marker)}, src)
    elif make_bad == "good":
        torch.save(_random_state_dict(), src)
    before = sorted(p.name for p in tmp_path.iterdir())

    done = _convert(str(src), *extra)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("convert_checkpoint: error: ")
    assert expect in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert not marker.exists()


def test_dit_is_a_diffusers_model_and_loads_from_a_pretrained_folder(tmp_path, capsys):
    """save_pretrained / from_pretrained, the .pth -> folder conversion, and --ckpt FOLDER in a command."""
    from cascadev.loading import build_pipeline, load_config, load_dit_folder
    from cascadev.models import build_model
    from cascadev.models.dit import CascadeDiT

    cfg = load_config(TINY_CONFIG)
    torch.manual_seed(3)
    dit = build_model(cfg.model)
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.02)
    dit.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["attn_strides"] == [
        [1, 2],
        [2, 1],
        None,
        [1, 2],
    ]
    again = CascadeDiT.from_pretrained(tmp_path / "saved")
    x, t = torch.randn(1, 20, 4, 8, 8), torch.tensor([10.0])
    with torch.no_grad():
        torch.testing.assert_close(again(x, t), dit(x, t))
        torch.testing.assert_close(load_dit_folder(tmp_path / "saved")(x, t), dit(x, t))
    pth = tmp_path / "release.pth"
    torch.save({"state_dict": dit.state_dict()}, pth)
    result = _convert(str(pth), "-o", str(tmp_path / "folder"), "--config", TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    umask = os.umask(0)
    os.umask(umask)
    for made in (tmp_path / "folder", tmp_path / "folder" / "config.json"):  # not mkdtemp's private 0700
        assert made.stat().st_mode & 0o777 == (0o777 if made.is_dir() else 0o666) & ~umask, made
    pipe = build_pipeline(cfg, ["dit"], ckpt=tmp_path / "folder")
    with torch.no_grad():
        torch.testing.assert_close(pipe.dit(x, t), dit(x, t))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(CascadeVError, match="needs config.json and diffusion_pytorch_model.safetensors"):
        load_dit_folder(tmp_path / "broken")
    # A hand-edited config.json: the key and the file are named (was a TypeError from inside the model).
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    for key, value, said in (("hidden_size", "96", "hidden_size must be"), ("mlp_ratio", -1, "mlp_ratio must be")):
        (tmp_path / "edited").mkdir(exist_ok=True)
        (tmp_path / "edited" / "config.json").write_text(json.dumps({**config, key: value}))
        shutil.copy(tmp_path / "saved" / "diffusion_pytorch_model.safetensors", tmp_path / "edited")
        with pytest.raises(CascadeVError, match=f"config key {said} .* \\(in .*edited.config.json\\)"):
            load_dit_folder(tmp_path / "edited")
    (tmp_path / "edited" / "config.json").write_text("[1, 2]")
    with pytest.raises(CascadeVError, match="edited has a config.json that is not a JSON object"):
        load_dit_folder(tmp_path / "edited")


@pytest.mark.parametrize(
    "strides,said",
    [
        ([[1, 2, 3]], "[1, 2, 3]: it must be None or a pair [ts, xs] of whole numbers of at least 1"),
        ([[1.5, 2]], "[1.5, 2]: it must be None or a pair [ts, xs] of whole numbers of at least 1"),
        ([None, 5], "5: it must be None or a pair [ts, xs] of whole numbers of at least 1"),  # was a TypeError
        ([[3, 1]], "[3, 1]: ts 3 does not divide the 4 frames of a window (lats_per_vid)"),
        ([[1, 3]], "[1, 3]: xs 3 does not divide the 4 tokens per side (input_size / patch_size)"),
    ],
)
def test_a_dit_folders_attn_strides_items_are_checked(tmp_path, capsys, strides, said):
    """config.json's attn_strides: each item None or [ts, xs] dividing the window; key, item and file named."""
    from cli_checks import assert_one_line_error
    from videos import write_test_video

    from cascadev.cli import main
    from cascadev.loading import load_config, load_dit_folder
    from cascadev.models import build_model

    build_model(load_config(TINY_CONFIG).model).save_pretrained(tmp_path / "dit")
    config = json.loads((tmp_path / "dit" / "config.json").read_text())
    (tmp_path / "dit" / "config.json").write_text(json.dumps({**config, "attn_strides": strides}))
    message = f"config key attn_strides has the item {said} (in {tmp_path / 'dit' / 'config.json'})."
    with pytest.raises(CascadeVError) as refused:
        load_dit_folder(tmp_path / "dit")
    assert str(refused.value) == message
    write_test_video(tmp_path / "clip.mp4", 2, 32, 32)
    out = tmp_path / "r"
    code = main(["recon", str(tmp_path / "clip.mp4"), "-o", str(out), "--config", TINY_CONFIG, "--random-init",
                 "--ckpt", str(tmp_path / "dit")])  # fmt: skip
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not out.exists()
