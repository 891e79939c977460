"""The training objective: summed next-token cross-entropy over the labelled (assistant) tokens.

``CausalLMLoss`` wraps a Zamba2VL so that DistributedDataParallel can wrap the whole computation. It runs the
backbone once and projects only the positions that carry a label onto the vocabulary: a sample has a few
answer tokens against dozens of image and prompt tokens, and the vocabulary (32k) is the widest matrix.
The sum (not the mean) is returned with the token count, so the trainer can normalise by the number of
labelled tokens of the whole global batch, which makes the loss independent of how the batch is split into
micro-batches and processes.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.model import Zamba2VL
from zamba2vl.ops.ssd import segment_starts
from zamba2vl.train.encode import IGNORE


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, token count) of full logits [b, L, V] against labels [b, L] (position i predicts label
    i+1; IGNORE labels count for nothing). The plain form of what ``CausalLMLoss`` computes."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    loss = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
    return loss, keep.sum()


class CausalLMLoss(nn.Module):
    """With ``reconstruction`` (a ``PixelReconstruction`` head) and a ``reconstruction_weight`` > 0, the returned
    loss adds weight x (the sum over the batch's images of each image's reconstruction error); the language
    model's part and the reconstruction error of the last call are kept in ``last_parts`` (detached tensors).
    Likewise ``objects`` (an ``ObjectMap``) adds ``objects_weight`` x the sum over annotated images of each one's
    objects loss, when the call passes ``object_targets``; and ``match`` (a ``QueryMatch``) ``match_weight`` x its
    loss on the language model's hidden states after ``match_layer`` layers at the image tokens, and ``spell`` (a
    ``Spelling``) ``spell_weight`` x its loss on those after ``spell_layer`` layers. With
    ``language_model=False`` (``stage: vision``) only the auxiliary losses are computed: the language model does not
    run and the LM part is 0."""

    def __init__(self, model: Zamba2VL, autocast_dtype: torch.dtype | None = None,
                 reconstruction: nn.Module | None = None, reconstruction_weight: float = 0.0,
                 objects: nn.Module | None = None, objects_weight: float = 0.0, language_model: bool = True,
                 match: nn.Module | None = None, match_weight: float = 0.0, match_layer: int = 2,
                 spell: nn.Module | None = None, spell_weight: float = 0.0, spell_layer: int = 2):
        super().__init__()
        self.match = match
        self.match_weight = match_weight
        self.match_layer = match_layer
        self.spell = spell
        self.spell_weight = spell_weight
        self.spell_layer = spell_layer
        self.language_model = language_model
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.reconstruction = reconstruction
        self.reconstruction_weight = reconstruction_weight
        self.objects = objects
        self.objects_weight = objects_weight
        self.last_parts: dict[str, torch.Tensor | int] = {}

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast_dtype)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None,
                row_weights: torch.Tensor | None = None,
                object_targets: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded input_ids and labels [b, L] (+ the batch's images) -> (summed loss, token count).

        ``row_weights`` [b] multiplies each sample's token losses (``optim.loss_per: sample`` passes 1 / the
        sample's labelled tokens, so every sample weighs the same whatever its answer's length; ``sqrt`` passes
        1 / sqrt of them); [b, L] gives each label its own weight (packed rows). ``segments`` [b, L] (train.encode
        ``pack``: several samples per row) runs each sample as if it were alone, positions counting from its start."""
        vl = self.model
        lm = vl.language_model
        b, L = input_ids.shape
        recon = self.reconstruction is not None and pixel_values is not None
        objects = self.objects is not None and pixel_values is not None and object_targets is not None
        targets = labels[:, 1:]
        keep = targets != IGNORE
        with self.autocast():
            features = vl.get_image_features(pixel_values, image_grid_thw) if recon or objects else None
        if not self.language_model:
            loss = self._add_auxiliary(torch.zeros((), device=input_ids.device), features, pixel_values,
                                       image_grid_thw, object_targets, recon, objects)
            if not loss.requires_grad:  # a micro-batch without images: a zero gradient, so every process steps alike
                loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
            return loss, keep.sum()
        # The language-model-side heads this call trains, as (name, name of its image count in last_parts, head,
        # weight, layer): they read the hidden state after their layer, taken with a forward hook (removed after the
        # forward).
        lm_heads = [entry for entry in (("match", "asked", self.match, self.match_weight, self.match_layer),
                                        ("spell", "spelt", self.spell, self.spell_weight, self.spell_layer))
                    if entry[2] is not None and pixel_values is not None and object_targets is not None]
        seen: dict[int, torch.Tensor] = {}

        def keeper(layer: int):
            return lambda module, args, out: seen.__setitem__(layer, out)

        hooks = [lm.model.layers[layer - 1].register_forward_hook(keeper(layer))
                 for layer in sorted({layer for *_, layer in lm_heads})]
        try:
            with self.autocast():
                embeds = vl.embed_inputs(input_ids, pixel_values, image_grid_thw, features)  # [b, L, h]
                idx = torch.arange(L, device=input_ids.device)[None].expand(b, L)
                if segments is None:
                    positions = idx
                else:  # each token's distance from its sample's first token
                    starts = torch.where(segment_starts(segments), idx, torch.zeros_like(idx))
                    positions = idx - starts.cummax(1).values
                hidden = lm.model(embeds, None, None, positions, segments=segments)  # [b, L, h]; padding at the end
                logits = F.linear(hidden[:, :-1][keep], lm.output_weight)  # [n, V]
        finally:
            for hook in hooks:
                hook.remove()
        if row_weights is None:
            loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        else:
            per_token = F.cross_entropy(logits.float(), targets[keep], reduction="none")
            w = row_weights.to(per_token.dtype)
            weights = (w[:, 1:] if w.dim() == 2 else w[:, None].expand_as(keep))[keep]
            loss = (per_token * weights).sum()
        loss = self._add_auxiliary(loss, features, pixel_values, image_grid_thw, object_targets, recon, objects)
        for name, count, head, weight, layer in lm_heads:
            # The layer's output at the image tokens, image after image: the merged features' order.
            at_images = seen[layer][input_ids == vl.config.image_token_index]
            error, n = head(at_images, object_targets, image_grid_thw, vl.config.vision_config.spatial_merge_size**2)
            self.last_parts.update({name: error.detach(), count: n})
            loss = loss + weight * error
        return loss, keep.sum()

    def _add_auxiliary(self, loss, features, pixel_values, image_grid_thw, object_targets, recon: bool,
                       objects: bool) -> torch.Tensor:
        """The LM's summed loss plus the weighted auxiliary losses; records the parts in ``last_parts``."""
        vl = self.model
        zero = torch.zeros((), device=loss.device)
        self.last_parts = {"lm": loss.detach(), "reconstruction": zero, "images": 0, "objects": zero,
                           "annotated": 0, "match": zero, "asked": 0,
                           "spell": zero, "spelt": 0}
        if recon:
            error, images = self.reconstruction(features, pixel_values, image_grid_thw)
            self.last_parts.update(reconstruction=error.detach(), images=images)
            loss = loss + self.reconstruction_weight * error
        if objects:
            error, annotated = self.objects(features, object_targets, image_grid_thw,
                                            vl.config.vision_config.spatial_merge_size**2)
            self.last_parts.update(objects=error.detach(), annotated=annotated)
            loss = loss + self.objects_weight * error
        return loss
