"""Tests for cascadev.latent_io: the streaming safetensors latent file."""

from __future__ import annotations

import gc
import json
import re
import struct
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cascadev.errors import CascadeVError
from cascadev.latent_io import (
    LatentMeta,
    LatentReader,
    LatentWriter,
    load_latent,
    save_latent,
)

META = LatentMeta(fps=29.97, height=100, width=150, source_height=480, source_width=720, start=7)


def _latent(channels: int = 16, frames: int = 11, h: int = 4, w: int = 5) -> torch.Tensor:
    return torch.randn(channels, frames, h, w, generator=torch.Generator().manual_seed(0))


def _write_in_pieces(path, latent, order):
    """Write ``latent`` as the chunks ``order`` lists, as (t0, t1) pairs, in that order."""
    with LatentWriter(path, tuple(latent.shape), META) as writer:
        for t0, t1 in order:
            writer.write(t0, latent[:, t0:t1])


def test_out_of_order_chunks_roundtrip(tmp_path):
    latent = _latent()
    path = tmp_path / "clip.latent.safetensors"
    _write_in_pieces(path, latent, [(8, 11), (0, 3), (3, 8)])
    with LatentReader(path) as reader:
        assert reader.shape == (16, 11, 4, 5)
        assert torch.equal(reader.read(0, 11), latent)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_file_is_standard_safetensors(tmp_path):
    latent = _latent()
    path = tmp_path / "clip.safetensors"
    _write_in_pieces(path, latent, [(5, 11), (0, 5)])
    loaded = load_file(path)
    assert list(loaded) == ["latent"] and torch.equal(loaded["latent"], latent)
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("latent"), latent)
        meta = f.metadata()
    assert meta["fps"] == "29.97" and meta["height"] == "100" and meta["num_frames"] == "11"
    assert all(isinstance(v, str) for v in meta.values())
    # Layout: 8-byte header length, a JSON header padded to 8 bytes, then exactly the tensor's bytes.
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0
    header = json.loads(data[8 : 8 + n])
    assert header["latent"] == {
        "dtype": "F32",
        "shape": [16, 11, 4, 5],
        "data_offsets": [0, latent.numel() * 4],
    }
    assert len(data) == 8 + n + latent.numel() * 4


def test_metadata_roundtrip(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_latent(path, _latent(frames=3), {**META.to_dict(), "note": "hello", "model": "effnet"})
    with LatentReader(path) as reader:
        meta = reader.metadata
        assert reader.meta == META
    assert meta["fps"] == pytest.approx(29.97) and isinstance(meta["fps"], float)
    for key, value in [
        ("height", 100),
        ("width", 150),
        ("source_height", 480),
        ("source_width", 720),
        ("start", 7),
        ("num_frames", 3),
    ]:
        assert meta[key] == value and isinstance(meta[key], int)
    assert meta["note"] == "hello" and meta["model"] == "effnet"
    assert LatentMeta.from_dict(META.to_dict()) == META
    assert LatentMeta.from_dict({k: str(v) for k, v in META.to_dict().items()}) == META


def test_latent_meta_validation():
    with pytest.raises(CascadeVError, match="lacks fps"):
        LatentMeta.from_dict({"height": 1, "width": 1, "source_height": 1, "source_width": 1})
    with pytest.raises(CascadeVError, match="not a number"):
        LatentMeta.from_dict({**META.to_dict(), "height": "tall"})
    with pytest.raises(CascadeVError, match="frame rate"):
        LatentMeta(fps=0.0, height=1, width=1, source_height=1, source_width=1)


def test_read_subrange_equals_slice(tmp_path):
    latent = _latent(frames=20)
    path = tmp_path / "clip.safetensors"
    save_latent(path, latent, META)
    with LatentReader(path) as reader:
        assert torch.equal(reader.read(4, 9), latent[:, 4:9])
        assert torch.equal(reader.read(19, 20), latent[:, 19:20])
        with pytest.raises(CascadeVError, match="frames 15..24"):
            reader.read(15, 25)


def test_half_precision_is_stored_as_half(tmp_path):
    latent = _latent().half()
    path = tmp_path / "half.safetensors"
    save_latent(path, latent, META)
    assert load_file(path)["latent"].dtype == torch.float16
    loaded, meta = load_latent(path)
    assert loaded.dtype == torch.float32 and torch.equal(loaded, latent.float())
    assert meta["start"] == 7


def test_missing_frames_at_close_is_an_error_and_leaves_nothing(tmp_path):
    latent = _latent()
    path = tmp_path / "clip.safetensors"
    with pytest.raises(CascadeVError, match="never written") as info:
        _write_in_pieces(path, latent, [(0, 4), (6, 11)])
    assert "first: frame 4" in str(info.value) and str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "clip.safetensors"
    path.write_bytes(b"old")
    latent = _latent()
    with pytest.raises(RuntimeError, match="boom"):
        with LatentWriter(path, tuple(latent.shape), META) as writer:
            writer.write(0, latent)
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_writer_argument_errors(tmp_path):
    with pytest.raises(CascadeVError, match="does not exist"):
        LatentWriter(tmp_path / "no" / "x.safetensors", (16, 2, 2, 2), META)
    with LatentWriter(tmp_path / "x.safetensors", (16, 4, 2, 3), META) as writer:
        with pytest.raises(ValueError, match="chunk must be"):
            writer.write(0, torch.zeros(16, 2, 3, 2))
        with pytest.raises(ValueError, match="outside"):
            writer.write(3, torch.zeros(16, 2, 2, 3))
        writer.write(0, torch.zeros(16, 4, 2, 3))


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "random", "truncated"])
def test_unreadable_latent_files(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not a latent\n")
    elif kind == "random":
        path.write_bytes(
            torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
            .numpy()
            .tobytes()
        )
    elif kind == "truncated":
        save_latent(tmp_path / "good.safetensors", _latent(), META)
        data = (tmp_path / "good.safetensors").read_bytes()
        path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CascadeVError) as info:
        load_latent(path)
    assert str(path) in str(info.value)


def test_wrong_tensor_contents(tmp_path):
    eight = tmp_path / "eight.safetensors"
    save_latent(eight, _latent(channels=8), META)
    with pytest.raises(CascadeVError, match="has 8 channels; expected 16"):
        LatentReader(eight)
    assert LatentReader(eight, channels=None).shape[0] == 8
    assert load_latent(eight, channels=8)[0].shape == (8, 11, 4, 5)

    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(16, 2, 2, 2)}, str(other))
    with pytest.raises(CascadeVError, match="no 'latent' tensor"):
        LatentReader(other)

    flat = tmp_path / "flat.safetensors"
    save_file({"latent": torch.zeros(16, 2, 2)}, str(flat))
    with pytest.raises(CascadeVError, match="expected \\(C, T, h, w\\)"):
        LatentReader(flat)

    bad_meta = tmp_path / "meta.safetensors"
    save_file({"latent": torch.zeros(16, 2, 2, 2)}, str(bad_meta), metadata={"fps": "fast"})
    with pytest.raises(CascadeVError, match="fps"):
        LatentReader(bad_meta)


def test_metadata_that_does_not_fit_the_latent_is_refused_naming_the_file(tmp_path):
    base = {k: str(v) for k, v in META.to_dict().items()}  # 150x100 pixels, for 4 x 5 positions (160x128)
    for name, change, needle in (
        ("tall", {"height": "640"}, "says 150x640 pixels, more than its 5x4 latent decodes to (160x128)"),
        ("fast", {"fps": "1e300"}, "frame rate must be positive and at most 100000, got 1e+300"),
        ("newer", {"cascadev_latent_version": "99"}, "is a latent file of format '99'; this cascadev reads format 1"),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_file({"latent": _latent()}, str(path), metadata={**base, **change})
        with pytest.raises(CascadeVError, match=re.escape(needle)) as info:
            LatentReader(path).meta
        assert str(path) in str(info.value)


def test_abandoned_writer_leaves_no_temporary_file(tmp_path):
    writer = LatentWriter(tmp_path / "x.safetensors", (16, 2, 2, 2), META)
    writer.write(0, torch.zeros(16, 2, 2, 2))
    assert len(list(tmp_path.iterdir())) == 1
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_a_writer_refuses_what_a_reader_would(tmp_path):
    path = tmp_path / "x.safetensors"
    for bad, error, needle in (
        (
            torch.full((16, 2, 2, 2), float("nan")),
            CascadeVError,
            "the latent has a non-finite value (NaN or Inf) in frame 0",
        ),
        (torch.full((16, 2, 2, 2), 1e6), CascadeVError, "a value beyond +-10000 in frame 0"),
        (torch.zeros(16, 2, 2, 2, dtype=torch.int32), ValueError, "floating-point values, got torch.int32"),
    ):
        with pytest.raises(error, match=re.escape(needle)), LatentWriter(path, (16, 2, 2, 2), META) as writer:
            writer.write(0, bad)
        assert not path.exists()
    with pytest.raises(TypeError, match="a LatentMeta or a dict, got list"):
        LatentWriter(path, (16, 2, 2, 2), [1, 2])


def test_the_latent_format_does_not_load_the_models():
    """Reading a latent (decode's checks, the latent store's data loaders) imports neither diffusers nor
    the model code: that alone took seconds before the first line of work."""
    code = (
        "import sys, cascadev.latent_io; print(sorted(m for m in ('diffusers', 'cascadev.models') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
