"""The pipeline with configs/tiny.py at random weights: shapes, any length and size, determinism."""

from pathlib import Path

import pytest
import torch

from cascadev.loading import build_pipeline, load_config

CONFIG = Path(__file__).parents[1] / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(load_config(CONFIG), random_init=True)


def decode_all(pipe, latent, **kw):
    chunks = list(pipe.decode(lambda a, b: latent[:, a:b], latent.shape[1], steps=2, progress=False, **kw))
    return torch.cat(chunks)


@pytest.mark.parametrize("frames,height,width", [(1, 32, 32), (3, 64, 96), (5, 32, 160), (9, 96, 64)])
def test_encode_decode_shapes_for_any_length_and_size(pipe, frames, height, width):
    video = torch.rand(frames, 3, height, width) * 2 - 1
    latent = pipe.encode(video)
    assert latent.shape == (16, frames, height // 32, width // 32)
    out = decode_all(pipe, latent)
    assert out.shape == (frames, 3, height, width)
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    assert pipe.preview(latent).shape == (frames, 3, height // 4, width // 4)


def test_condition_is_bilinear_x4_times_scale_factor(pipe):
    latent = torch.zeros(16, 1, 1, 2)
    latent[..., 1] = 4.0  # a ramp 0 -> 4 across two latent columns
    cond = pipe.condition(latent)
    assert cond.shape == (1, 16, 4, 8)
    # align_corners=False: output column i samples source coordinate (i + 0.5) / 4 - 0.5, clamped.
    expected = torch.tensor([0, 0, 0.5, 1.5, 2.5, 3.5, 4, 4]) * 0.13025
    assert torch.allclose(cond[0, 3, 2], expected, atol=1e-6)


def test_same_seed_same_video_other_seed_other_video(pipe):
    latent = torch.randn(16, 6, 2, 3)
    a = decode_all(pipe, latent, seed=7)
    b = decode_all(pipe, latent, seed=7)
    c = decode_all(pipe, latent, seed=8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_segments_share_noise_so_frames_before_the_seam_are_unchanged(pipe):
    """Frames whose windows are the same in both plans come out identical (per-frame noise)."""
    latent = torch.randn(16, 13, 2, 2)
    pipe.segment_frames = 0
    whole = decode_all(pipe, latent)
    pipe.segment_frames = 8
    try:
        segmented = decode_all(pipe, latent)
    finally:
        pipe.segment_frames = 16
    assert segmented.shape == whole.shape == (13, 3, 64, 64)
    # Segment 0 covers frames 0..7 (windows 0, 2, 4); the seam blends frames 5..7. Frames 0..3 are
    # one SVD decoder chunk whose latents are identical in both plans.
    assert torch.allclose(segmented[:4], whole[:4], atol=1e-5)
    assert (segmented[8:] - whole[8:]).abs().max() > 1e-4


def test_missing_weights_are_named_with_where_they_come_from(tmp_path):
    from cascadev.errors import CascadeVError

    with pytest.raises(CascadeVError) as err:
        build_pipeline(load_config(CONFIG), weights_dir=tmp_path)
    message = str(err.value)
    for name in (
        "tiny.safetensors",
        "effnet_encoder.safetensors",
        "previewer.safetensors",
        "svd_vae",
        "pretrained/download.sh",
    ):
        assert name in message
    assert "\n" not in message


def test_a_config_with_a_weights_note_says_it_instead_of_the_released_sources(tmp_path):
    from cascadev.errors import CascadeVError

    with pytest.raises(CascadeVError) as err:  # nano from another folder than the repository's root
        build_pipeline(load_config(CONFIG.with_name("nano.py")), weights_dir=tmp_path / "nano")
    message = str(err.value)
    assert message.startswith(f"missing weights: {tmp_path / 'nano' / 'dit.safetensors'}; ")
    assert message.endswith(
        "nano's weights ship with the repository in pretrained/nano: run from its root, or give --weights-dir"
    )
    assert "StableWurst" not in message and "download.sh" not in message


def test_attention_backend_pins_the_kernel_and_names_one_that_cannot_run(pipe):
    from cascadev.errors import CascadeVError

    cfg = load_config(CONFIG)
    cond = pipe.condition(torch.randn(16, 4, 2, 2))
    auto = pipe.sample(cond, steps=2, seed=3)
    math_pipe = build_pipeline(cfg, random_init=True, attention_backend="math")
    pinned = math_pipe.sample(cond, steps=2, seed=3)
    assert ((pinned - auto).norm() / auto.norm()).item() < 1e-6  # the same attention, another kernel
    with pytest.raises(CascadeVError, match="unknown attention_backend 'xformers'; choose auto, flash"):
        build_pipeline(cfg, ["vae"], random_init=True, attention_backend="xformers")
    cudnn_pipe = build_pipeline(cfg, random_init=True, attention_backend="cudnn")  # a GPU-only kernel
    with pytest.raises(CascadeVError, match="sampling.attention_backend=cudnn has no kernel"):
        cudnn_pipe.sample(cond, steps=2, seed=3)


def test_sampling_compile_compiles_the_dit_blocks_from_the_config():
    cfg = load_config(CONFIG, ["sampling.compile=reduce-overhead"])
    assert build_pipeline(cfg, ["dit"], random_init=True).dit._compiled_blocks is not None
    assert build_pipeline(load_config(CONFIG), ["dit"], random_init=True).dit._compiled_blocks is None


def test_vae_compile_decodes_the_same_frames_through_torch_compile_and_keeps_the_weights():
    from cascadev.models.svd_vae import CompiledTemporalDecoder, compile_decoder

    cfg = load_config(CONFIG, ["sampling.vae_compile=True"])
    latent = torch.randn(4, 4, 8, 8)
    plain = build_pipeline(load_config(CONFIG), ["vae"], random_init=True)
    fast = build_pipeline(cfg, ["vae"], random_init=True)
    assert type(fast.vae.decoder) is CompiledTemporalDecoder and type(plain.vae.decoder) is not CompiledTemporalDecoder
    assert fast.vae.state_dict().keys() == plain.vae.state_dict().keys()
    graphs = []

    def backend(gm, example_inputs):  # a torch.compile backend that counts the graphs it is given
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compile_decoder(fast.vae, backend=backend)  # (inductor takes half a minute on the CPU)
    a, b = plain.vae_decode(latent), fast.vae_decode(latent)
    assert graphs  # the decoder went through the compiler
    assert ((a - b).norm() / a.norm()).item() < 1e-6
    fast.vae_decode(torch.randn_like(latent))
    assert len(graphs) == 1  # the same chunk shape: no recompile


def test_an_svd_decoder_compiler_that_fails_falls_back_to_eager_with_a_warning():
    from cascadev.models.svd_vae import compile_decoder

    pipe, latent = build_pipeline(load_config(CONFIG), ["vae"], random_init=True), torch.randn(4, 4, 8, 8)
    eager = pipe.vae_decode(latent)

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    compile_decoder(pipe.vae, backend=broken)
    with pytest.warns(UserWarning, match="compiling the SVD decoder failed, running it eagerly"):
        out = pipe.vae_decode(latent)
    assert torch.equal(out, eager)
    assert pipe.vae.decoder._compiled is None  # warned once, then eager for good


def test_a_tile_stride_past_the_tile_and_segments_shorter_than_a_window_are_refused():
    from cascadev.errors import CascadeVError

    cfg = load_config(CONFIG)  # tiny: 8x8 tiles, 4-frame windows
    with pytest.raises(CascadeVError, match="tile_stride must be between 1 and the DiT's tile, 8; got 9"):
        build_pipeline(cfg, ["dit"], random_init=True, tile_stride=9)  # latent pixels no tile would cover
    with pytest.raises(CascadeVError, match="segment_frames must be 0 .* window of 4 frames; got 3"):
        build_pipeline(cfg, ["dit"], random_init=True, segment_frames=3)
    pipe = build_pipeline(cfg, ["dit"], random_init=True, tile_stride=8, segment_frames=4)  # the bounds: fine
    assert (pipe.tile_stride, pipe.segment_frames) == (8, 4)


def test_a_latent_of_the_other_condition_kind_is_refused_in_one_line():
    from cascadev.errors import CascadeVError

    pipe = build_pipeline(load_config(CONFIG, ["condition=resize"]), ["dit", "vae"], random_init=True)
    assert pipe.condition(torch.randn(4, 4, 2, 2)).shape == (4, 4, 8, 8)  # its own: 4 channels, upsampled x4
    with pytest.raises(CascadeVError, match="this DiT takes a resize condition of 4 channels; the latent has 16"):
        pipe.condition(torch.randn(16, 4, 2, 2))  # a semantic latent (cascadev encode's)


def test_the_pipelines_entry_points_name_a_wrong_input_in_one_line():
    from cascadev.errors import CascadeVError
    from cascadev.reconstruct import SamplingArgs

    pipe = build_pipeline(load_config(CONFIG), random_init=True)
    cond = torch.randn(4, 16, 8, 8)  # (T, C, H, W)
    for call, needle in (
        (
            lambda: pipe.sample(cond.transpose(0, 1)),
            r"cond must be \(T, C, H, W\) with C = 16, got shape \(16, 4, 8, 8\)",
        ),
        (lambda: pipe.sample(cond[:0]), r"cond must be .*got shape \(0, 16, 8, 8\)"),
        (lambda: pipe.sample(cond.numpy()), r"cond must be a floating-point torch tensor \(T, C, H, W\), got ndarray"),
        (lambda: pipe.sample(cond, steps=0), "number of sampling steps must be"),
        (lambda: pipe.sample(cond, seed=2**64), "seed must be"),
        (lambda: pipe.vae_decode(torch.randn(8, 16, 8, 8)), r"latent must be \(T, 4, h, w\) with C = 4"),
        (
            lambda: pipe.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
            "frames must be a floating-point torch tensor",
        ),
        (lambda: pipe.condition(torch.randn(16, 8, 8)), r"latent must be \(C, T, h, w\)"),
        (
            lambda: list(pipe.decode(lambda a, b: torch.randn(16, 1, 2, 2), 8, progress=False)),
            r"read_latent\(0, 8\) gave 1",
        ),
    ):
        with pytest.raises(CascadeVError, match=needle):
            call()
    assert SamplingArgs(preset="release").preset.name == "release"
    with pytest.raises(CascadeVError, match="unknown preset 'fast'"):
        SamplingArgs(preset="fast")
