"""CascadeDiT: fidelity to the reference (golden fixture), the released layout, grid attention."""

import json
import re
from pathlib import Path

import pytest
import torch
from einops import rearrange

from cascadev.loading import load_config
from cascadev.models import build_model
from cascadev.models.dit import CascadeDiT, GridAttention
from cascadev.reference import load_golden

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def golden():
    return load_golden("dit_golden_a")


def rel_err(y, ref):
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


def test_golden_video_mode(golden):
    spec, d, model = golden
    videos, frames = spec["videos"], spec["lats_per_vid"]
    # The fixture flattens frames into the batch in video order: row b*T + t.
    x = rearrange(d["io.video.x"], "(b t) c h w -> b c t h w", b=videos, t=frames)
    with torch.no_grad():
        y = model(x, d["io.video.t"])
    y = rearrange(y, "b c t h w -> (b t) c h w")
    assert y.shape == d["io.video.y"].shape
    assert rel_err(y, d["io.video.y"]) < 1e-5


def test_golden_image_mode(golden):
    _, d, model = golden
    x = rearrange(d["io.image.x"], "(b t) c h w -> b c t h w", b=1)
    with torch.no_grad():
        y = model(x, d["io.image.t"][None], as_images=True)
    y = rearrange(y, "b c t h w -> (b t) c h w")
    assert rel_err(y, d["io.image.y"]) < 1e-5


def test_golden_detects_wrong_positions(golden):
    """The golden comparison is sharp: a wrong pe_interpolation is far outside the tolerance."""
    spec, d, model = golden
    model.pe_interpolation = 1.0
    try:
        x = rearrange(d["io.video.x"], "(b t) c h w -> b c t h w", b=spec["videos"])
        with torch.no_grad():
            y = rearrange(model(x, d["io.video.t"]), "b c t h w -> (b t) c h w")
        assert rel_err(y, d["io.video.y"]) > 1e-3
    finally:
        model.pe_interpolation = spec["pe_interpolation"]


def test_released_config_matches_checkpoint_manifest():
    manifest = json.loads((FIXTURES / "manifest_dit_s1024_effn_f32.json").read_text())
    cfg = load_config(ROOT / "configs" / "s1024_effn_f32.py")
    with torch.device("meta"):
        model = build_model(cfg.model)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["keys"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"] == 456_117_152


def test_tiny_config_is_the_same_architecture():
    cfg = load_config(ROOT / "configs" / "tiny.py")
    model = build_model(cfg.model)
    manifest = json.loads((FIXTURES / "manifest_dit_s1024_effn_f32.json").read_text())
    depth = cfg.model.depth
    released = {k for k in manifest["keys"] if not k.startswith("blocks.") or int(k.split(".")[1]) < depth}
    assert set(model.state_dict()) == released


def _attention(num_heads=2, dim=16):
    torch.manual_seed(0)
    return GridAttention(dim, num_heads).double()


def test_grid_of_one_cell_is_full_attention():
    attn = _attention()
    x = torch.randn(2, 4 * 6 * 6, 16, dtype=torch.float64)
    assert torch.allclose(attn(x, (4, 6, 6, 1, 1)), attn(x, None), atol=1e-12)


@pytest.mark.parametrize("ts,xs", [(1, 2), (2, 1), (2, 3), (4, 3)])
def test_no_information_crosses_a_grid_cell(ts, xs):
    """Perturbing one token changes exactly the tokens of its cell (frames x rows x cols partition)."""
    frames, rows, cols = 4, 6, 6
    attn = _attention()
    x = torch.randn(1, frames * rows * cols, 16, dtype=torch.float64)
    base = attn(x, (frames, rows, cols, ts, xs))
    gt, gh, gw = frames // ts, rows // xs, cols // xs
    for f, r, c in [(0, 0, 0), (frames - 1, rows - 1, cols - 1), (1, 4, 2)]:
        y = x.clone()
        y[0, (f * rows + r) * cols + c] += 1.0
        changed = (attn(y, (frames, rows, cols, ts, xs)) - base).abs().amax(-1)[0].reshape(frames, rows, cols) > 1e-12
        expect = torch.zeros(frames, rows, cols, dtype=torch.bool)
        expect[
            f // gt * gt : (f // gt + 1) * gt, r // gh * gh : (r // gh + 1) * gh, c // gw * gw : (c // gw + 1) * gw
        ] = True
        assert torch.equal(changed, expect)


def _tiny(**kw):
    torch.manual_seed(0)
    spec = dict(
        input_size=8,
        patch_size=2,
        in_channels=20,
        hidden_size=48,
        depth=2,
        num_heads=2,
        pe_interpolation=2.0,
        attn_strides=[[1, 2], [4, 1]],
        lats_per_vid=4,
    )
    spec.update(kw)
    model = CascadeDiT(**spec).eval()
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    return model


def test_video_windows_are_independent_samples():
    model = _tiny()
    x = torch.randn(2, 20, 4, 8, 8)
    t = torch.tensor([10.0, 500.0])
    with torch.no_grad():
        both = model(x, t)
        first = model(x[:1], t[:1])
    assert both.shape == (2, 8, 4, 8, 8)
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_image_mode_treats_frames_independently():
    model = _tiny()
    x = torch.randn(1, 20, 4, 8, 8)
    t = torch.tensor([[1.0, 200.0, 400.0, 999.0]])
    with torch.no_grad():
        y = model(x, t, as_images=True)
        z = x.clone()
        z[:, :, 0] += 1.0
        y2 = model(z, t, as_images=True)
    assert not torch.allclose(y[:, :, 0], y2[:, :, 0])
    assert torch.allclose(y[:, :, 1:], y2[:, :, 1:], atol=1e-6)


def test_2x_mode_runs_on_twice_the_size_with_a_quarter_of_the_frames():
    model = _tiny(attn_strides=[[1, 2], [4, 1], None])
    with torch.no_grad():
        y = model(torch.randn(1, 20, 1, 16, 16), torch.tensor([300.0]))
    assert y.shape == (1, 8, 1, 16, 16) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "shape,t,as_images",
    [
        ((1, 20, 3, 8, 8), [1.0], False),  # wrong window length
        ((1, 20, 4, 8, 12), [1.0], False),  # not square
        ((1, 20, 4, 16, 16), [1.0], False),  # 2x mode takes a quarter of the frames
        ((1, 20, 4, 8, 8), [1.0], True),  # image mode needs one timestep per frame
    ],
)
def test_rejects_shapes_outside_its_modes(shape, t, as_images):
    with pytest.raises(ValueError):
        _tiny()(torch.randn(*shape), torch.tensor(t), as_images=as_images)


@pytest.mark.parametrize(
    "strides,said",
    [
        ([[1.5, 2]], "[1.5, 2]: it must be None or a pair"),  # was run as [1, 2]
        ([[1, 2, 3]], "[1, 2, 3]: it must be None or a pair"),  # was run as [1, 2]
        ([5], "5: it must be None or a pair"),  # was a TypeError
        ([[3, 1]], "[3, 1]: ts 3 does not divide the 4 frames of a window"),
        ([[1, 3]], "[1, 3]: xs 3 does not divide the 4 tokens per side"),
    ],
)
def test_refuses_attn_strides_it_cannot_run(strides, said):
    with pytest.raises(ValueError, match=re.escape(f"attn_strides item {said}")):
        _tiny(attn_strides=strides)


def test_meta_device_construction_allocates_nothing():
    cfg = load_config(ROOT / "configs" / "s1024_effn_f32.py")
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert all(p.is_meta for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _tiny().train()
    x = torch.randn(1, 20, 4, 8, 8)
    t = torch.tensor([100.0])
    model(x, t).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, t).square().mean().backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_compiled_blocks_give_the_same_output_and_compile_once_per_attention_pattern():
    model = _tiny(depth=6, attn_strides=[[1, 2], [2, 1], None])  # 6 blocks, 3 patterns
    x = torch.randn(1, 20, 4, 8, 8)
    with torch.no_grad():
        eager = model(x, torch.tensor([500.0]))
        graphs = []

        def backend(gm, example_inputs):  # a torch.compile backend that counts the graphs it is given
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        model.compile_blocks(backend=backend)
        compiled = model(x, torch.tensor([500.0]))
        first_step = len(graphs)
        model(torch.randn_like(x), torch.tensor([250.0]))  # the next sampling step: same shapes
    assert torch.allclose(compiled, eager, atol=1e-5)
    assert first_step == 3  # one graph per attention pattern ([1, 2], [2, 1], full), shared by the blocks
    assert len(graphs) == first_step  # and no recompiles across steps


def test_a_compiler_that_fails_falls_back_to_eager_with_a_warning():
    model = _tiny()
    x = torch.randn(1, 20, 4, 8, 8)
    with torch.no_grad():
        eager = model(x, torch.tensor([500.0]))

        def broken(gm, example_inputs):
            raise RuntimeError("no compiler here")

        torch._dynamo.reset()
        model.compile_blocks(backend=broken)
        with pytest.warns(UserWarning, match="running them eagerly"):
            out = model(x, torch.tensor([500.0]))
    assert torch.allclose(out, eager, atol=1e-6)
    assert model._compiled_blocks is None  # warned once, then eager for good


def test_the_position_embedding_is_made_once_per_device_and_dtype():
    from cascadev.models.dit import video_pos_embed_on

    model, x = _tiny(), torch.randn(2, 20, 4, 8, 8)
    video_pos_embed_on.cache_clear()
    with torch.no_grad():
        first, second = model(x, torch.tensor([10.0, 500.0])), model(x, torch.tensor([10.0, 500.0]))
    info = video_pos_embed_on.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # the second forward reuses the first one's tensor
    assert torch.equal(first, second)
