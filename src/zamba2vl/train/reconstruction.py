"""An auxiliary training objective: every merged image token reconstructs the pixels it was made from.

The language model's loss alone tells the merger to keep only what the answers need early in training, and a
model trained from scratch settles on whole-image summaries: session 9 measured the merger's output of the
nano model losing each token's own colour and shape (probes on it: colour set 42% against 75-81% at the vision
tower's blocks; effective rank 5.6 against ~18 at its input), so the language model could not tell which
token is "the red circle". This head is a linear map from each merged token to the pixels of its
``spatial_merge_size**2`` patches, average-pooled by ``pool`` (2: 7x7 per 14-pixel patch), trained with the
mean squared error against the normalised pixel values the tower saw. It keeps per-token content linearly
readable at the merger's output from the first steps.

The head exists only during training: it is not part of the Zamba2-VL checkpoint (the Hub layout is
unchanged); the trainer keeps its weights in ``trainer_state.pt`` so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.config import VisionConfig


def seeded_head(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """A training-only head's linear map: weights uniform in +-1/sqrt(in_features) drawn from `seed` (the same head
    on every process and every run of a seed), bias zero."""
    proj = nn.Linear(in_features, out_features)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bound = in_features**-0.5
        proj.weight.copy_(torch.empty_like(proj.weight).uniform_(-bound, bound, generator=g))
        proj.bias.zero_()
    return proj


class PixelReconstruction(nn.Module):
    def __init__(self, vision: VisionConfig, hidden_size: int, pool: int = 2, seed: int = 0):
        super().__init__()
        if pool < 1 or vision.patch_size % pool:
            raise ValueError(f"reconstruction.pool={pool} must divide the patch size {vision.patch_size}")
        self.pool = pool
        self.patch = vision.patch_size
        self.planes = vision.in_channels * vision.temporal_patch_size  # a patch is [planes, patch, patch]
        self.unit = vision.spatial_merge_size**2
        side = vision.patch_size // pool
        self.proj = seeded_head(hidden_size, self.unit * self.planes * side * side, seed)

    def targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[patches, planes * patch * patch] (the processor's layout, a merged token's patches consecutive) ->
        [patches / unit, unit * planes * (patch / pool)**2]: each token's patches, average-pooled."""
        n = pixel_values.shape[0]
        p = pixel_values.float().view(n, self.planes, self.patch, self.patch)
        return F.avg_pool2d(p, self.pool).reshape(n // self.unit, -1)

    def forward(self, features: torch.Tensor, pixel_values: torch.Tensor,
                image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Merged tokens [tokens, hidden] of a batch's images -> (the sum over images of each image's mean
        squared error per token and pixel value, the number of images). Per image, so a large image weighs as
        much as a small one and the sum does not depend on how a batch is split."""
        err = (self.proj(features).float() - self.targets(pixel_values)).pow(2).mean(-1)  # [tokens]
        sums, per_image = image_sums(err, image_grid_thw, self.unit)
        return (sums / per_image.clamp(min=1).to(err.dtype)).sum(), len(per_image)


def image_sums(values: torch.Tensor, image_grid_thw: torch.Tensor, unit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token values [tokens] of a batch's images (merged tokens, image after image) -> (their sum per image
    [images], each image's token count [images]); ``unit`` is the patches per merged token."""
    per_image = (image_grid_thw.prod(-1) // unit).to(values.device)
    image = torch.repeat_interleave(torch.arange(len(per_image), device=values.device), per_image)
    sums = torch.zeros(len(per_image), dtype=values.dtype, device=values.device).index_add_(0, image, values)
    return sums, per_image
