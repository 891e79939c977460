"""The Qwen2.5-VL vision transformer and patch merger used by Zamba2-VL (spec section 4).

pixel_values [Np, C*T*P*P] (patches of all images, concatenated, in the processor's block-major order)
  -> patch embedding                                   [Np, Dv]
  -> window order (merged-token groups permuted)       [Np, Dv]
  -> depth x block (window or full attention, SwiGLU)  [Np, Dv]
  -> merger (RMSNorm, 2x2 concat, Linear, GELU, Linear) [Np/4, out]
  -> raster order again                                [Np/4, out]: per image, merged tokens row by row.

Parameter names match the checkpoints after their ``vision_tower.`` / ``visual.`` prefix (see weights.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.config import VisionConfig
from zamba2vl.errors import ConfigError, InputError
from zamba2vl.vision.attention import Segments, make_segments, segment_attention
from zamba2vl.ops.precision import compute_dtype, linear
from zamba2vl.vision.rotary import apply_rotary, patch_positions, rotary_cos_sin, vision_inv_freq
from zamba2vl.vision.windows import GridTHW, image_seqlens, inverse_permutation, validate_grid, window_index

_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back to the input dtype, then scale (the reference's order of operations)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (T, P, P) and no bias, computed as one matmul.

    Each row of pixel_values is exactly one kernel footprint flattened in (C, T, P, P) order, so the
    convolution is ``x @ W.reshape(Dv, C*T*P*P).T``. The weight keeps the Conv3d shape [Dv, C, T, P, P] so
    checkpoints load as they are.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        c = config
        size = (c.temporal_patch_size, c.patch_size, c.patch_size)
        self.proj = nn.Conv3d(c.in_channels, c.hidden_size, kernel_size=size, stride=size, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        x = pixel_values.to(w.dtype).to(compute_dtype(w))  # pixels rounded to the model dtype, as the reference
        return linear(x, w.reshape(w.shape[0], -1)).to(w.dtype)  # [Np, Dv]


# Sublayers convert their input once to compute_dtype (the model dtype, or fp32 on CPUs without native
# bf16 GEMMs, see ops/precision.py), run in it, and return the model dtype.


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Segments) -> torch.Tensor:
        N = x.shape[0]
        h = x.to(compute_dtype(self.qkv.weight))
        qkv = linear(h, self.qkv.weight, self.qkv.bias)  # [N, 3*Dv]
        qkv = qkv.view(N, 3, self.num_heads, -1)
        q, k = apply_rotary(qkv[:, :2], cos, sin).unbind(1)  # each [N, H, hd]; rotated in fp32
        v = qkv[:, 2]
        out = segment_attention(q, k, v, segments).reshape(N, -1)  # [N, Dv]
        return linear(out, self.proj.weight, self.proj.bias).to(x.dtype)


class VisionMLP(nn.Module):
    """SwiGLU with biases: down(act(gate(x)) * up(x))."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"vision hidden_act {config.hidden_act!r} is not supported; use one of {sorted(_ACTIVATIONS)}.")
        self.act = _ACTIVATIONS[config.hidden_act]
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=True)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(compute_dtype(self.gate_proj.weight))
        gate = linear(h, self.gate_proj.weight, self.gate_proj.bias)  # [N, F]
        up = linear(h, self.up_proj.weight, self.up_proj.bias)  # [N, F]
        return linear(self.act(gate) * up, self.down_proj.weight, self.down_proj.bias).to(x.dtype)


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.norm2 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: Segments) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """RMSNorm per patch, concatenate each 2x2 group, Linear -> exact GELU -> Linear (the VL "adapter")."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.ln_q = RMSNorm(config.hidden_size, config.rms_norm_eps)
        d = config.merged_dim
        self.mlp = nn.Sequential(nn.Linear(d, d, bias=True), nn.GELU(), nn.Linear(d, config.out_hidden_size, bias=True))
        self.merged_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, act, fc2 = self.mlp
        h = self.ln_q(x).view(-1, self.merged_dim)  # [Np, Dv] -> [Np/4, 4*Dv]
        h = h.to(compute_dtype(fc1.weight))
        h = act(linear(h, fc1.weight, fc1.bias))
        return linear(h, fc2.weight, fc2.bias).to(x.dtype)  # [Np/4, out]


class VisionTower(nn.Module):
    """Qwen2.5-VL ViT + merger. ``forward(pixel_values, grid_thw) -> [sum(t*h*w)/4, out_hidden_size]``."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        if config.head_dim % 4:
            raise ConfigError(f"vision head dim {config.head_dim} must be divisible by 4 for the 2-D rotary.")
        for i in config.fullatt_block_indexes:
            if not 0 <= i < config.depth:
                raise ConfigError(f"fullatt_block_indexes has {i}, outside the {config.depth} vision blocks.")
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    def forward(self, pixel_values: torch.Tensor, grid_thw: GridTHW) -> torch.Tensor:
        c = self.config
        m, unit = c.spatial_merge_size, c.spatial_merge_size**2
        grid = validate_grid(grid_thw, m)
        num_patches = sum(t * h * w for t, h, w in grid)
        if pixel_values.dim() != 2 or pixel_values.shape != (num_patches, c.patch_dim):
            raise InputError(
                f"pixel_values has shape {tuple(pixel_values.shape)} but grid_thw {grid} needs "
                f"[{num_patches}, {c.patch_dim}] (patches x in_channels*temporal_patch_size*patch_size^2); "
                "pass the image processor's pixel_values and image_grid_thw together."
            )
        device = pixel_values.device

        index, cu_windows = window_index(grid, window_size=c.window_size, patch_size=c.patch_size, spatial_merge_size=m)
        windows = make_segments(cu_windows, pad=True, device=device)
        frames = make_segments(image_seqlens(grid), pad=False, device=device)

        # Window order: permute whole merged-token groups, so the m*m patches of a group stay adjacent.
        positions = patch_positions(grid, m).view(-1, unit, 2)[index].view(-1, 2)  # [Np, 2]
        cos, sin = rotary_cos_sin(positions.to(device), vision_inv_freq(c.head_dim).to(device))  # [Np, hd] fp32
        index = index.to(device)

        x = self.patch_embed(pixel_values)  # [Np, Dv]
        x = x.view(-1, unit, c.hidden_size)[index].view(num_patches, c.hidden_size)
        full = set(c.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in full else windows)
        merged = self.merger(x)  # [Np/4, out], window order
        return merged[inverse_permutation(index)]
