"""Vision-tower weights from a Zamba2-VL or a Qwen2.5-VL checkpoint (spec section 10.1, 10.3 step 3).

Accepted layouts (the tower's own names follow the prefix unchanged):
  ``vision_tower.*`` / ``model.vision_tower.*``  Zamba2-VL
  ``visual.*`` / ``model.visual.*``              Qwen2.5-VL (older and newer transformers layouts)
  no prefix                                       a tower saved on its own
Other keys of the checkpoint (the language model, ...) are left alone. Tensors are read only when selected,
so ``tensors`` may be a lazy reader over safetensors shards.

A Qwen2.5-VL tower differs from Zamba2-VL's in two places: its patch embedding spans two frames
(temporal_patch_size=2, Zamba2-VL's processor uses 1) and its merger output width is its own LM's. The
first is refused unless ``fold_temporal=True`` sums the kernel over time (exact for still images, which
Qwen's processor feeds as two identical frames); the second is skipped with ``skip_merger_output=True``
so a builder can put a fresh ``merger.mlp.2`` of the new LM's width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from zamba2vl.config import VisionConfig
from zamba2vl.errors import CheckpointError

PREFIXES = ("model.vision_tower.", "vision_tower.", "model.visual.", "visual.")
PATCH_KEY = "patch_embed.proj.weight"
MERGER_OUTPUT_KEYS = ("merger.mlp.2.weight", "merger.mlp.2.bias")


def _find_prefix(keys: list[str], source: str) -> str:
    found = [p for p in PREFIXES if any(k.startswith(p) for k in keys)]
    # "model.vision_tower.x" does not start with "vision_tower.", so the four prefixes never shadow each other.
    if len(found) > 1:
        raise CheckpointError(
            f"{source} holds vision weights under several prefixes {found}; a checkpoint must hold one vision "
            "tower. Pass only the tensors of the tower you want."
        )
    if found:
        return found[0]
    if PATCH_KEY in keys:
        return ""
    sample = ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")
    raise CheckpointError(
        f"{source} has no vision-tower weights: no key starts with any of {list(PREFIXES)} and there is no "
        f"bare {PATCH_KEY!r} (keys found: {sample or 'none'}). Is this a text-only checkpoint?"
    )


def vision_state_dict_from_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    config: VisionConfig,
    *,
    source: str = "the checkpoint",
    skip_merger_output: bool = False,
    fold_temporal: bool = False,
) -> dict[str, torch.Tensor]:
    """The tower's tensors under the tower's own names (prefix stripped), patch embedding checked.

    Raises CheckpointError when there are no vision keys, when they sit under two prefixes, or when the
    patch embedding is not 5-D or its temporal extent differs from ``config.temporal_patch_size``.
    Names and shapes of everything else are checked by ``load_vision_weights``.
    """
    keys = list(tensors.keys())
    prefix = _find_prefix(keys, source)
    state = {k[len(prefix):]: tensors[k] for k in keys if k.startswith(prefix)}
    if prefix == "":  # a bare tower: keep only names a tower can have, leave the rest to the name check
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in ("patch_embed", "blocks", "merger")}
    if skip_merger_output:
        for k in MERGER_OUTPUT_KEYS:
            state.pop(k, None)

    key = prefix + PATCH_KEY
    if PATCH_KEY not in state:
        raise CheckpointError(f"{source} has vision weights under {prefix!r} but no {key}.")
    w = state[PATCH_KEY]
    if w.dim() != 5:
        raise CheckpointError(
            f"{source}: {key} has shape {tuple(w.shape)}; a patch embedding is a Conv3d weight "
            "[hidden, in_channels, temporal_patch_size, patch, patch]."
        )
    found, expected = w.shape[2], config.temporal_patch_size
    if found != expected:
        if fold_temporal and expected == 1:
            # Still images reach a T-frame patch embedding as T copies of the same frame, so summing the
            # kernel over time gives the same features from a single frame.
            state[PATCH_KEY] = w.sum(dim=2, keepdim=True, dtype=torch.float32).to(w.dtype)
        else:
            raise CheckpointError(
                f"{source}: {key} has temporal extent {found} (shape {tuple(w.shape)}), but the config and the "
                f"image processor use temporal_patch_size={expected}. Zamba2-VL needs temporal_patch_size=1 "
                "(588-value patches). To start a new model from a Qwen2.5-VL tower (temporal extent 2) pass "
                "fold_temporal=True, which sums the kernel over time (exact for still images)."
            )
    return state


def load_vision_weights(
    tower: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    source: str,
    dtype: torch.dtype | None = None,
    skip_merger_output: bool = False,
    fold_temporal: bool = False,
) -> None:
    """Fill ``tower`` (a VisionTower, possibly on the meta device) from a checkpoint's tensors.

    Every missing, unexpected or mis-shaped tensor is reported by name (``assign_weights``). With
    ``skip_merger_output=True`` the merger's last Linear is neither read nor required: it keeps whatever the
    tower holds (the builder initialises it).
    """
    from zamba2vl.checkpoint import assign_weights

    state = vision_state_dict_from_checkpoint(
        tensors, tower.config, source=source, skip_merger_output=skip_merger_output, fold_temporal=fold_temporal
    )
    allow_missing = MERGER_OUTPUT_KEYS if skip_merger_output else ()
    assign_weights(tower, state, source=source, dtype=dtype, allow_missing=allow_missing)
