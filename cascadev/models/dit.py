"""CascadeDiT: the LDM-VAE's diffusion transformer (PixArt-Σ blocks, grid 3D attention, no text).

The model predicts the noise (or v, with the schedule's ``prediction_type``; plus learned-variance values)
of a 4-channel SVD-VAE latent, conditioned by concatenation on the 4x-upsampled condition latent: the
16-channel semantic latent of the release, or the 4-channel resized one of paper Fig. 4b. Frames are
patchified one by one and a window of ``lats_per_vid`` frames becomes one token sequence ordered (frame,
row, column). Each block attends either over the whole window (``None``) or inside the cells of a grid
``[ts, xs]``: frames are split into ``ts`` runs of consecutive frames and rows/columns into ``xs``
contiguous bands, and every token attends only to tokens of its own cell. Parameter names are those of
the released checkpoint ``s1024.effn-f32.pth``, so it loads with ``strict=True``.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from cascadev.errors import first_line
from cascadev.rules import attn_strides_problem

Strides = Sequence[int] | None


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, hidden) scaled and shifted by (B, 1, hidden) -> (B, N, hidden)."""
    return x * (1 + scale) + shift


#################################################################################
#                         Embeddings of patches, time, positions                #
#################################################################################


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, H/p * W/p, hidden) tokens in row-major order."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Diffusion timesteps (N,) -> (N, hidden): 256-d sinusoids (cos first) through an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """Sinusoidal features of the timesteps: t (N,) -> float32 (N, dim), cosines then sines."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Positions (M,) -> (M, dim) float64 embedding, sines then cosines (MAE/DiT convention)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


@lru_cache(maxsize=16)
def video_pos_embed(hidden_size: int, frames: int, rows: int, cols: int, pe_interpolation: float) -> torch.Tensor:
    """Fixed position embedding of a window, (frames * rows * cols, hidden) in float64.

    The first ``hidden // 3`` channels encode the frame index, the rest the (column, row) position
    with PixArt's ``pe_interpolation`` (grid coordinates divided by it; frame indices are not).
    """
    t_dim = hidden_size // 3
    s_dim = hidden_size - t_dim
    # Coordinates are float32 before the division, as in the reference (numpy float32 grids).
    row = torch.arange(rows, dtype=torch.float32) / pe_interpolation
    col = torch.arange(cols, dtype=torch.float32) / pe_interpolation
    grid_row, grid_col = torch.meshgrid(row, col, indexing="ij")
    spatial = torch.cat([sincos_1d(s_dim // 2, grid_col), sincos_1d(s_dim // 2, grid_row)], dim=1)  # (rows*cols, s_dim)
    temporal = sincos_1d(t_dim, torch.arange(frames, dtype=torch.float32))  # (frames, t_dim)
    n = rows * cols
    return torch.cat(
        [temporal[:, None].expand(frames, n, t_dim), spatial[None].expand(frames, n, s_dim)], dim=2
    ).reshape(frames * n, hidden_size)


@lru_cache(maxsize=8)
def video_pos_embed_on(
    hidden_size: int,
    frames: int,
    rows: int,
    cols: int,
    pe_interpolation: float,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """:func:`video_pos_embed` in ``dtype`` on ``device``, made once: every forward adds it, and a copy
    from the host per call would be 300 MB at 1024² (32,768 tokens x 1152 in float64) and a wait."""
    return video_pos_embed(hidden_size, frames, rows, cols, pe_interpolation).to(device, dtype)


#################################################################################
#                          Grid 3D attention and blocks                         #
#################################################################################


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp32: bool = False) -> torch.Tensor:
    """Softmax attention (B, heads, N, head_dim) -> (B, heads, N, head_dim), in q's dtype.

    With ``fp32`` the product runs in float32 even under autocast, as the release's xformers call
    does (PixArt needs it against NaN losses in fp16 training). SDPA is on autocast's lower-precision
    list, so casting q, k, v to float32 alone is not enough: autocast would cast them back to half
    precision. Autocast is therefore switched off around the call.
    """
    if not fp32:
        return F.scaled_dot_product_attention(q, k, v)
    dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(dtype)


class GridAttention(nn.Module):
    """Multi-head self-attention over a window, optionally restricted to the cells of a grid.

    ``grid = (frames, rows, cols, ts, xs)`` describes the sequence layout (frame, row, column) and the
    partition: ``ts`` runs of ``frames // ts`` consecutive frames times ``xs x xs`` contiguous blocks of
    ``rows // xs`` by ``cols // xs`` tokens. Tokens attend only inside their cell. ``grid=None`` means
    full attention over the whole sequence.
    """

    def __init__(self, dim: int, num_heads: int, fp32_attention: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.fp32_attention = fp32_attention
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
        """x (B, N, hidden) -> (B, N, hidden); each cell attends as a batch item of its own."""
        b = x.shape[0]
        qkv = self.qkv(x)  # (B, N, 3 * hidden)
        if grid is None:
            q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        else:
            frames, rows, cols, ts, xs = grid
            cell = dict(ts=ts, xs=xs, ys=xs, gt=frames // ts, gh=rows // xs, gw=cols // xs)
            q, k, v = rearrange(
                qkv,
                "b (ts gt xs gh ys gw) (three h d) -> three (b ts xs ys) h (gt gh gw) d",
                three=3,
                h=self.num_heads,
                **cell,
            )
        out = attention(q, k, v, self.fp32_attention)  # (B * cells, heads, tokens per cell, head dim)
        if grid is None:
            out = rearrange(out, "b h n d -> b n (h d)")
        else:
            out = rearrange(out, "(b ts xs ys) h (gt gh gw) d -> b (ts gt xs gh ys gw) (h d)", b=b, **cell)
        return self.proj(out)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input's dtype.

    Under autocast its output stays float32, as CUDA autocast's fp32 list gives the release (so the
    modulation after it also runs in float32); CPU autocast lacks that rule, hence the explicit class.
    Without autocast the output is cast back to the input's dtype so the next linear layer gets the
    dtype of its weights.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, None, None, self.eps)
        return out if torch.is_autocast_enabled(x.device.type) else out.to(x.dtype)


class Mlp(nn.Module):
    """(..., dim) -> (..., dim) through a GELU (tanh) hidden layer of ``hidden`` features."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PixArtBlock(nn.Module):
    """adaLN-single transformer block: the shared ``t_block`` output plus this block's own table."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, fp32_attention: bool = False):
        super().__init__()
        self.norm1 = FP32LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = GridAttention(hidden_size, num_heads, fp32_attention)
        self.norm2 = FP32LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, grid: tuple[int, int, int, int, int] | None = None
    ) -> torch.Tensor:
        """x (B, N, hidden), t (B, 6 * hidden) -> (B, N, hidden)."""
        mod = self.scale_shift_table[None] + t.reshape(x.shape[0], 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class T2IFinalLayer(nn.Module):
    """Per-frame output head: modulated LayerNorm (own 2-row table, shifted by t) and a linear map."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = FP32LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B*T, N, hidden), t (B*T, hidden) -> (B*T, N, p * p * out_channels)."""
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # 2 x (B*T, 1, hidden)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                                  CascadeDiT                                   #
#################################################################################


class CascadeDiT(ModelMixin, ConfigMixin):
    """PixArt-Σ-derived DiT with grid 3D attention over windows of ``lats_per_vid`` frames.

    A diffusers model: ``save_pretrained(folder)`` writes ``config.json`` beside the weights and
    ``CascadeDiT.from_pretrained(folder)`` rebuilds it; the release's ``.pth`` and flat safetensors
    files load through :func:`cascadev.checkpoint.load_weights` into a model built from a config.

    Args:
        input_size: trained latent size (H = W, in SVD-latent pixels; 128 for 1024x1024 video).
        patch_size: tokens are ``patch_size x patch_size`` latent pixels of one frame.
        in_channels: 4 noisy-latent channels + condition channels (16 semantic or 4 resized).
        hidden_size, depth, num_heads, mlp_ratio: transformer sizes (PixArt-XL/2: 1152, 28, 16, 4).
        pred_sigma: also predict the learned-variance values (output 8 channels instead of 4).
        pe_interpolation: grid coordinates of the spatial position embedding are divided by it.
        attn_strides: per block (cycled), ``None`` for full 3D attention or ``[ts, xs]`` for grid cells.
        lats_per_vid: frames per window in video mode.
        fp32_attention: run the attention product in float32 under half-precision training.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        input_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 20,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        pred_sigma: bool = True,
        pe_interpolation: float = 2.0,
        attn_strides: Sequence[Strides] | None = None,
        lats_per_vid: int = 8,
        fp32_attention: bool = False,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if (hidden_size // 3) % 2 or (hidden_size - hidden_size // 3) % 4:
            raise ValueError(f"hidden_size {hidden_size} cannot be split into 1D + 2D sin-cos embeddings")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 8 if pred_sigma else 4
        self.pred_sigma = pred_sigma
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.pe_interpolation = float(pe_interpolation)
        self.lats_per_vid = lats_per_vid
        for strides in attn_strides or [None]:
            problem = attn_strides_problem(strides, lats_per_vid, input_size // patch_size)
            if problem:
                raise ValueError(f"attn_strides item {strides!r}: {problem}")
        self.attn_strides = [None if s is None else (int(s[0]), int(s[1])) for s in (attn_strides or [None])]
        self.gradient_checkpointing = False
        self._compiled_blocks: list[nn.Module] | None = None  # compile_blocks(); a plain list, not submodules
        self._cudagraphs = False  # compile_blocks() with a mode that records CUDA graphs

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.blocks = nn.ModuleList(
            [PixArtBlock(hidden_size, num_heads, mlp_ratio, fp32_attention) for _ in range(depth)]
        )
        self.final_layer = T2IFinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    @staticmethod
    def grid_cells(strides: Strides, frames: int) -> tuple[int, int] | None:
        """The (ts, xs) actually used for a window of ``frames`` frames.

        2x mode has a quarter of the frames, fewer than some ``ts`` (the released [4, 1] on 2 frames,
        which the reference cannot run): there each cell holds a single frame, ts = frames.
        """
        if strides is None:
            return None
        ts, xs = strides
        return min(ts, frames), xs

    def initialize_weights(self) -> None:
        """PixArt's initialisation (xavier linears, small time MLPs, zero output head)."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def set_fp32_attention(self, enabled: bool) -> None:
        """Run every block's attention product in float32 (the release's inference and training setting)."""
        for block in self.blocks:
            block.attn.fp32_attention = bool(enabled)

    def window_frames(self, height: int, width: int) -> int:
        """Frames per window for a latent of this size: lats_per_vid, or lats_per_vid // 4 in 2x mode."""
        if height == width == self.input_size:
            return self.lats_per_vid
        if height == width == 2 * self.input_size:
            return self.lats_per_vid // 4
        raise ValueError(
            f"CascadeDiT takes {self.input_size}x{self.input_size} latents (or {2 * self.input_size} in 2x mode), got {height}x{width}"
        )

    def compile_blocks(self, mode: str | None = None, backend: str | Callable = "inductor") -> None:
        """Compile each transformer block on its own (regional compilation, as diffusers'
        ``compile_repeated_blocks``).

        The blocks share their code, so one graph per attention pattern serves all of them: compiling
        takes seconds, not a trace of the whole model, and the sampling loop, whose shapes are the same
        at every step, compiles once. ``mode`` is torch.compile's ("reduce-overhead" adds CUDA graphs).
        Where compiling fails (no C++ or Triton compiler, say), the model warns once and runs eagerly.
        """
        self._compiled_blocks = [
            torch.compile(block, mode=mode, backend=backend, dynamic=False) for block in self.blocks
        ]
        self._cudagraphs = mode in ("reduce-overhead", "max-autotune")

    def _run_block(
        self, i: int, x: torch.Tensor, t: torch.Tensor, grid: tuple[int, int, int, int, int] | None
    ) -> torch.Tensor:
        block = self.blocks[i]
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, t, grid, use_reentrant=False)
        if self._compiled_blocks is not None:
            try:
                if not self._cudagraphs or torch.is_grad_enabled():
                    # (With gradients, CUDA graph trees keep the activations the backward needs themselves.)
                    return self._compiled_blocks[i](x, t, grid)
                # Sampling: a CUDA graph replays into the same output memory, so a later replay would
                # overwrite this block's output while the next blocks still read it. Each call is made a
                # step of its own, and its output is copied out of the graph's memory.
                torch.compiler.cudagraph_mark_step_begin()
                return self._compiled_blocks[i](x, t, grid).clone()
            except torch._dynamo.exc.TorchDynamoException as exc:  # the compiler, not the block, failed
                warnings.warn(f"compiling the DiT's blocks failed, running them eagerly: {first_line(exc)}")
                self._compiled_blocks, self._cudagraphs = None, False
        return block(x, t, grid)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, as_images: bool = False) -> torch.Tensor:
        """Predict the noise (or v: the schedule's prediction_type) and variance values.

        Args:
            x: (B, in_channels, T, H, W) noisy latents concatenated with the condition.
               Video mode: T == lats_per_vid and H == W == input_size; 2x mode: H == W == 2 * input_size
               and T == lats_per_vid // 4 (pe_interpolation doubled, the same token count).
            timestep: (B,) one timestep per video; with ``as_images`` (B, T), one per frame.
            as_images: joint-training image mode: every frame is an independent sample (H == W ==
               input_size); frame t keeps temporal position index t mod lats_per_vid.
        Returns:
            (B, out_channels, T, H, W): predicted noise, then (pred_sigma) the variance values.
        """
        b, _, frames, height, width = x.shape
        p = self.patch_size
        dtype = self.x_embedder.proj.weight.dtype
        if as_images:
            if height != self.input_size or width != self.input_size:
                raise ValueError(f"image mode takes {self.input_size}x{self.input_size} latents, got {height}x{width}")
            if timestep.shape != (b, frames):
                raise ValueError(
                    f"image mode takes one timestep per frame, shape {(b, frames)}, got {tuple(timestep.shape)}"
                )
            window, interp = self.lats_per_vid, self.pe_interpolation
        else:
            window = self.window_frames(height, width)
            interp = self.pe_interpolation * (height // self.input_size)
            if frames != window:
                raise ValueError(f"a {height}x{width} window holds {window} frames, got {frames}")
            if timestep.shape != (b,):
                raise ValueError(f"video mode takes one timestep per video, shape {(b,)}, got {tuple(timestep.shape)}")
        rows, cols = height // p, width // p
        n = rows * cols

        tokens = self.x_embedder(rearrange(x.to(dtype), "b c t h w -> (b t) c h w"))  # (b*t, n, d)
        pos = video_pos_embed_on(self.hidden_size, window, rows, cols, interp, x.device, dtype)  # (t*n, d)
        if as_images:
            index = torch.arange(frames, device=x.device) % window
            seq = tokens + pos.view(window, n, -1)[index].repeat(b, 1, 1)  # one sequence per frame
            t = self.t_embedder(timestep.reshape(-1))  # (b*t, d)
            t0 = self.t_block(t)
            grids = [None if s is None or s[1] == 1 else (1, rows, cols, 1, s[1]) for s in self.attn_strides]
        else:
            seq = tokens.reshape(b, frames * n, -1) + pos  # one sequence per window
            t_video = self.t_embedder(timestep)  # (b, d)
            t0 = self.t_block(t_video)
            t = t_video.repeat_interleave(frames, dim=0)  # the final layer works per frame
            cells = [self.grid_cells(s, frames) for s in self.attn_strides]
            grids = [None if c is None else (frames, rows, cols, *c) for c in cells]

        for i in range(len(self.blocks)):
            seq = self._run_block(i, seq, t0, grids[i % len(grids)])

        out = self.final_layer(seq.reshape(b * frames, n, -1), t)  # (b*t, n, p*p*c)
        return rearrange(
            out, "(b t) (h w) (p q c) -> b c t (h p) (w q)", b=b, h=rows, w=cols, p=p, q=p, c=self.out_channels
        )
