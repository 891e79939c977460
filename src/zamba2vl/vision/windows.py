"""Which patches attend to which: window order, window boundaries and image boundaries (spec section 4).

All functions here are pure and run once per forward on the host; none of them is on the per-block path.

Terms (m = spatial_merge_size = 2):
- a *merged token* is an m x m group of patches (the unit the merger turns into one LM token); the processor
  already lists the m*m patches of a merged token next to each other;
- a *window* is a vw x vw square of merged tokens, vw = window_size / m / patch_size (112 / 2 / 14 = 4).
  Windows tile each frame from the top-left corner; those on the bottom and right edges may be partial.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GridTHW = torch.Tensor | Sequence[Sequence[int]]


def as_grid_list(grid_thw: GridTHW) -> list[tuple[int, int, int]]:
    """[(t, h, w), ...] as Python ints (the grid is tiny; doing the index arithmetic in ints is simplest)."""
    if isinstance(grid_thw, torch.Tensor):
        grid_thw = grid_thw.tolist()
    return [(int(t), int(h), int(w)) for t, h, w in grid_thw]


def window_side(window_size: int, spatial_merge_size: int, patch_size: int) -> int:
    """Window side vw in merged tokens."""
    return window_size // spatial_merge_size // patch_size


def window_index(
    grid_thw: GridTHW, *, window_size: int, patch_size: int, spatial_merge_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window order of the merged tokens and the patch-level window boundaries.

    Returns
      index [Nm] int64: ``index[j]`` is the merged token (global id, images concatenated) placed j-th when the
        tokens are listed window by window (windows in raster order per frame, raster order inside a window);
      cu_window_seqlens [num_windows + 1] int64: cumulative patch counts of the non-empty windows, from 0.

    Same result as the reference ``get_window_index`` followed by ``unique_consecutive`` of the boundaries
    (its padding adds empty windows, which only produce repeated boundaries).
    """
    vw = window_side(window_size, spatial_merge_size, patch_size)
    unit = spatial_merge_size**2
    indices, lengths = [], []
    offset = 0
    for t, h, w in as_grid_list(grid_thw):
        hm, wm = h // spatial_merge_size, w // spatial_merge_size
        nwh, nww = -(-hm // vw), -(-wm // vw)  # windows per column / per row (ceil)
        r = torch.arange(hm).view(1, hm, 1)
        c = torch.arange(wm).view(1, 1, wm)
        f = torch.arange(t).view(t, 1, 1)
        window_id = ((f * nwh + r // vw) * nww + c // vw).reshape(-1)  # [t*hm*wm], raster order of tokens
        # A stable sort by window keeps raster order inside each window.
        indices.append(torch.argsort(window_id, stable=True) + offset)
        counts = torch.bincount(window_id, minlength=t * nwh * nww)
        lengths.append(counts[counts > 0])
        offset += t * hm * wm
    index = torch.cat(indices)
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(lengths).cumsum(0) * unit])
    return index, cu


def inverse_permutation(index: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[index[j]] = j`` (equal to ``argsort(index)`` for a permutation, without the sort)."""
    inv = torch.empty_like(index)
    inv[index] = torch.arange(index.numel(), device=index.device)
    return inv


def image_seqlens(grid_thw: GridTHW) -> torch.Tensor:
    """cu_seqlens [num_frames + 1] int64 of the full-attention blocks: one segment per frame of every image."""
    lengths = [h * w for t, h, w in as_grid_list(grid_thw) for _ in range(t)]
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int64).cumsum(0)])


def validate_grid(grid_thw: GridTHW, spatial_merge_size: int) -> list[tuple[int, int, int]]:
    """The grid as ints, after checking every entry is positive and h, w are multiples of the merge size."""
    grid = as_grid_list(grid_thw)
    if not grid:
        raise ValueError("grid_thw is empty: the vision tower needs at least one image")
    for i, (t, h, w) in enumerate(grid):
        if t < 1 or h < 1 or w < 1 or h % spatial_merge_size or w % spatial_merge_size:
            raise ValueError(
                f"grid_thw[{i}] = {(t, h, w)}: t, h, w must be positive and h, w multiples of "
                f"spatial_merge_size={spatial_merge_size} (the image processor guarantees this)"
            )
    return grid
