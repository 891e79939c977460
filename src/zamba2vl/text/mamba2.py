"""Mamba2 mixer and the Mamba decoder layer of Zamba2 (spec 6.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.cache import HybridCache
from zamba2vl.config import Zamba2TextConfig
from zamba2vl.ops.conv import causal_conv1d, causal_conv1d_segments, causal_conv1d_step
from zamba2vl.ops.norms import RMSNorm, gated_rms_norm
from zamba2vl.ops.precision import linear_module as _linear
from zamba2vl.ops.ssd import segment_starts, ssd_chunked, ssd_step


class Mamba2Mixer(nn.Module):
    """in_proj -> z | xBC | dt; causal conv + SiLU on xBC; SSD scan; gated group RMSNorm with z; out_proj."""

    # Chunk size of our scan and tile length of long prefills. Results depend on neither beyond fp32 rounding
    # (unlike the reference fallback's chunk size), only speed does.
    scan_chunk_size = 64
    prefill_tile = 2048

    def __init__(self, config: Zamba2TextConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.d_inner, self.n_heads, self.head_dim = c.d_inner, c.n_mamba_heads, c.mamba_headdim
        self.n_groups, self.d_state, self.conv_dim = c.mamba_ngroups, c.mamba_d_state, c.conv_dim
        self.dt_min = c.time_step_min if c.dt_clamp_to_time_step_min else None
        self.dt_limit = tuple(c.time_step_limit) if c.time_step_limit else None
        self.in_proj = nn.Linear(c.hidden_size, c.in_proj_dim, bias=c.add_bias_linear)
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.mamba_d_conv, groups=c.conv_dim, bias=c.use_conv_bias,
                                padding=c.mamba_d_conv - 1)
        self.dt_bias = nn.Parameter(torch.ones(c.n_mamba_heads))
        self.A_log = nn.Parameter(torch.zeros(c.n_mamba_heads))
        self.D = nn.Parameter(torch.ones(c.n_mamba_heads))
        self.norm_weight_eps = 1e-5  # the reference fixes the gated norm's eps at 1e-5
        self.norm = _GatedNormWeight(c.d_inner)
        self.out_proj = nn.Linear(c.d_inner, c.hidden_size, bias=c.add_bias_linear)

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        dt = F.softplus(dt.float() + self.dt_bias.float())
        if self.dt_min is not None:
            dt = dt.clamp(min=self.dt_min)
        if self.dt_limit is not None and self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        return dt

    def forward(
        self, u: torch.Tensor, cache: HybridCache | None = None, mask: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """u [b, L, h] -> [b, L, h]. ``mask`` [b, L] (1 = real token) keeps padding out of the conv and the scan.
        ``segments`` [b, L] (integer ids, each sequence's tokens contiguous; training's packed rows, no cache) runs
        each sequence of a row as if it were alone: the conv does not read across them and the state restarts.

        Long inputs run in tiles of ``prefill_tile`` tokens that pass the conv and SSM states on, exactly as
        successive cached calls would: every temporary then stays a few MB (reused by the allocator instead of
        page-faulted afresh, and closer to the cache) whatever the prompt length.
        """
        b, L, _ = u.shape
        if segments is not None:
            if cache is not None:
                raise ValueError("packed sequences (segments) run without a cache")
            return self._forward_tile(u, mask, None, None, segments)[0]
        if cache is not None and L == 1 and cache.length > 0:
            return self._step(u, cache)
        cached = cache is not None and cache.length > 0
        conv_state = cache.conv_states[self.layer_idx] if cached else None
        ssm_state = cache.ssm_states[self.layer_idx] if cached else None
        out = None
        for t0 in range(0, L, self.prefill_tile):
            t1 = min(L, t0 + self.prefill_tile)
            y, conv_state, ssm_state = self._forward_tile(
                u[:, t0:t1], None if mask is None else mask[:, t0:t1], conv_state, ssm_state)
            if t1 - t0 == L:
                out = y
            else:
                out = u.new_empty(b, L, y.shape[-1], dtype=y.dtype) if out is None else out
                out[:, t0:t1] = y
        if cache is not None:
            cache.conv_states[self.layer_idx].copy_(conv_state)
            cache.ssm_states[self.layer_idx].copy_(ssm_state)
        return out

    def _forward_tile(self, u, mask, conv_state, ssm_state, segments=None):
        b, L, _ = u.shape
        if mask is not None:
            u = u * mask[..., None].to(u.dtype)
        proj = _linear(u, self.in_proj)
        z, xBC, dt = proj.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        resets = None
        if segments is None:
            xBC, conv_state = causal_conv1d(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, conv_state)
        else:
            xBC = causal_conv1d_segments(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, segments)
            resets = segment_starts(segments)
        xBC = F.silu(xBC, inplace=not xBC.requires_grad)  # xBC is the conv's own output
        dt = self._dt(dt)
        if mask is not None:
            maskf = mask.to(xBC.dtype)[..., None]
            xBC = xBC * maskf
            dt = dt * maskf  # dt = 0: padding neither decays nor feeds the state
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = ssd_chunked(
            x.reshape(b, L, self.n_heads, self.head_dim), dt, A,
            B.reshape(b, L, self.n_groups, self.d_state), C.reshape(b, L, self.n_groups, self.d_state),
            D=self.D, initial_state=ssm_state, chunk_size=self.scan_chunk_size, resets=resets,
        )
        y = gated_rms_norm(y.reshape(b, L, self.d_inner), z, self.norm.weight, self.n_groups, self.norm_weight_eps)
        return _linear(y.to(u.dtype), self.out_proj), conv_state, ssm_state

    def _step(self, u: torch.Tensor, cache: HybridCache) -> torch.Tensor:
        b = u.shape[0]
        proj = _linear(u[:, 0], self.in_proj)
        z, xBC, dt = proj.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC = F.silu(causal_conv1d_step(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, cache.conv_states[self.layer_idx]))
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        y = ssd_step(
            cache.ssm_states[self.layer_idx], x.reshape(b, self.n_heads, self.head_dim), self._dt(dt),
            -torch.exp(self.A_log.float()), B.reshape(b, self.n_groups, self.d_state),
            C.reshape(b, self.n_groups, self.d_state), D=self.D,
        )
        y = gated_rms_norm(y.reshape(b, 1, self.d_inner), z[:, None], self.norm.weight, self.n_groups, self.norm_weight_eps)
        return _linear(y.to(u.dtype), self.out_proj)


class _GatedNormWeight(nn.Module):
    """Holds ``norm.weight`` under the checkpoint's name; the math is ops.norms.gated_rms_norm."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class MambaLayer(nn.Module):
    """x + Mixer(RMSNorm(x + t)), where t is the shared block's output on hybrid layers (not added to x)."""

    def __init__(self, config: Zamba2TextConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mamba = Mamba2Mixer(config, layer_idx)

    def forward(self, x, cache=None, mask=None, injected=None, segments=None):
        u = x if injected is None else x + injected
        return x + self.mamba(self.input_layernorm(u), cache, mask, segments)
