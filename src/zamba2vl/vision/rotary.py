"""2-D rotary position embedding of the vision tower (spec section 4, steps 2 and 6).

Each patch has a (row, col) position inside its image, in patches. Half of the rotary frequencies turn with
the row, the other half with the column: for a head dim of 80 the rotary module is built for 40 dims, giving
20 frequencies, and the angles of a patch are ``[row * inv_freq, col * inv_freq]`` (40 values), duplicated to
80 as ``cat(angles, angles)``. The rotation itself is done in float32 whatever the model dtype, as the
reference does, and cast back.
"""

from __future__ import annotations

import torch

from zamba2vl.vision.windows import GridTHW, as_grid_list


def vision_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """[head_dim // 4] float32 inverse frequencies of a rotary module built for ``head_dim // 2`` dims."""
    if head_dim % 4:
        raise ValueError(f"the 2-D vision rotary needs a head dim divisible by 4, got {head_dim}")
    dim = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def patch_positions(grid_thw: GridTHW, spatial_merge_size: int) -> torch.Tensor:
    """[Np, 2] int64 (row, col) of every patch, in the processor's patch order.

    The processor lists the patches of an image block-major: the (h, w) grid is viewed as
    (h/m, m, w/m, m), permuted to (h/m, w/m, m, m) and flattened, so the m x m patches that the merger
    concatenates are adjacent. Frames of a video repeat the same positions.
    """
    m = spatial_merge_size
    out = []
    for t, h, w in as_grid_list(grid_thw):
        rows = torch.arange(h).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
        cols = torch.arange(w).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        rc = torch.stack([rows, cols], dim=-1).permute(0, 2, 1, 3, 4).reshape(h * w, 2)  # block-major
        out.append(rc.repeat(t, 1))
    return torch.cat(out, dim=0)


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [N, 2] -> (cos, sin), each [N, head_dim] float32."""
    pos = positions.to(torch.float32)
    angles = torch.cat([pos[:, :1] * inv_freq, pos[:, 1:] * inv_freq], dim=-1)  # [N, head_dim/2]
    emb = torch.cat([angles, angles], dim=-1)  # [N, head_dim]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, ..., D] rotated in float32 by cos/sin [N, D] (broadcast over the middle dims); returned in x's dtype.

    ``x * cos + rotate_half(x) * sin`` with rotate_half(x) = cat(-x2, x1) over the two halves of D, written
    as two in-place multiply-adds on the halves (the two halves of sin are equal), which saves the negated
    and concatenated copies.
    """
    xf = x.float()
    half = xf.shape[-1] // 2
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)
    cos, sin = cos.view(shape), sin.view(shape)
    out = xf * cos
    out[..., :half].addcmul_(xf[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(xf[..., :half], sin[..., half:])
    return out.to(x.dtype)
