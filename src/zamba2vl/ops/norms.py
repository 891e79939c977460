"""RMSNorm variants used by Zamba2, matching the reference's precision choices (spec 6.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Statistics in float32; the normalised value is cast back to x's dtype before the weight multiplies it."""
    if _needs_grad(x, weight):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * xf.to(x.dtype)
    # Same math with one temporary (sum of squares by a reduction, scaling in place).
    xf = x.float()
    out = xf * _rsqrt_mean_square(xf, eps)
    out = out.to(x.dtype) if out.dtype != x.dtype else out
    return out.mul_(weight) if weight.dtype == out.dtype else weight * out


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """Mamba2's gated norm: u = y * silu(z) (gate first), then RMS-normalise each of ``groups`` channel groups."""
    *lead, E = y.shape
    if _needs_grad(y, z, weight):
        u = y.float() * F.silu(z.float())
        ug = u.view(*lead, groups, E // groups)
        ug = ug * torch.rsqrt(ug.pow(2).mean(-1, keepdim=True) + eps)
        return weight * ug.view(*lead, E).to(y.dtype)
    # Same math in place on one float32 temporary: these [L, d_inner] passes are memory-bound.
    u = F.silu(z.float(), inplace=z.dtype != torch.float32).mul_(y)
    ug = u.view(*lead, groups, E // groups)
    ug.mul_(_rsqrt_mean_square(ug, eps))
    out = u.to(y.dtype) if y.dtype != torch.float32 else u
    return out.mul_(weight) if weight.dtype == out.dtype else weight * out


def _rsqrt_mean_square(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2, -1) + eps) [..., 1], without materialising x^2."""
    ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.rsqrt(ss.square_().div_(x.shape[-1]).add_(eps))


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
