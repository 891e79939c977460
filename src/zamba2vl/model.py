"""Zamba2-VL: Qwen2.5-VL vision tower + patch merger -> image features scattered into the prompt -> Zamba2 LM.

Image features replace the embeddings of the image placeholder token, in order (spec section 5): the first
image's merged tokens fill the first placeholders of row 0, and so on, batch-major. The language model then
treats them like any other embedding (and its shared blocks see them through the "original embeddings").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from zamba2vl.cache import HybridCache
from zamba2vl.checkpoint import open_weights, resolve_model_dir, save_safetensors
from zamba2vl.config import Zamba2VLConfig, load_config_json
from zamba2vl.errors import InputError
from zamba2vl.text.model import LMOutput, Zamba2LM
from zamba2vl.text.weights import _parse_dtype, load_text_state, text_hub_state
from zamba2vl.vision.tower import VisionTower
from zamba2vl.vision.weights import load_vision_weights


class Zamba2VL(nn.Module):
    def __init__(self, config: Zamba2VLConfig):
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config.vision_config)
        self.language_model = Zamba2LM(config.text_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.device

    @property
    def image_token_index(self) -> int:
        return self.config.image_token_index

    def new_cache(self, batch_size: int, capacity: int = 256) -> HybridCache:
        return self.language_model.new_cache(batch_size, capacity)

    # ------------------------------------------------------------------------------------------ images
    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """[patches, 588] + [images, 3] -> [patches / 4, hidden] merged image tokens, images in order."""
        return self.vision_tower(pixel_values.to(self.vision_tower.dtype), image_grid_thw)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features written over the image-token positions."""
        is_image = input_ids == self.image_token_index
        n_tokens = int(is_image.sum())
        if image_features is None and pixel_values is not None:
            if image_grid_thw is None:
                raise InputError("pixel_values were given without image_grid_thw; pass both (the processor returns both).")
            image_features = self.get_image_features(pixel_values, image_grid_thw)
        n_features = 0 if image_features is None else image_features.shape[0]
        if n_tokens != n_features:
            per_image = []
            if image_grid_thw is not None:
                m2 = self.config.vision_config.spatial_merge_size ** 2
                per_image = [int(t * h * w) // m2 for t, h, w in image_grid_thw.tolist()]
            raise InputError(
                f"the prompt has {n_tokens} image tokens (id {self.image_token_index}) but the images give {n_features} "
                f"features{f' (per image: {per_image})' if per_image else ''}. Likely cause: the prompt's image "
                "placeholders were not expanded by the processor, the number of images differs from the number of "
                "placeholders, or the prompt was truncated through an image. Build inputs with zamba2vl.Processor."
            )
        # The image token id may lie beyond the tokenizer but never beyond the embedding table (32000 < 32064).
        embeds = self.language_model.embed(input_ids)
        if n_tokens:
            embeds = embeds.masked_scatter(is_image[..., None], image_features.to(embeds.dtype))
        return embeds

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
    ) -> LMOutput:
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids (or inputs_embeds)")
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            vocab = self.config.text_config.vocab_size
            if input_ids.numel() and (int(input_ids.max()) >= vocab or int(input_ids.min()) < 0):
                raise InputError(f"token ids must lie in [0, {vocab}); got up to {int(input_ids.max())}.")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grid_thw)
        elif pixel_values is not None:
            raise InputError("pixel_values cannot be combined with inputs_embeds; embed the images yourself or pass input_ids.")
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache, position_ids=position_ids,
            use_cache=use_cache, logits_to_keep=logits_to_keep, return_hidden=return_hidden,
        )

    # ------------------------------------------------------------------------------------ load and save
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str = "cpu",
        revision: str | None = None,
        progress: bool = False,
        **text_overrides,
    ) -> "Zamba2VL":
        """Load a Zamba2-VL checkpoint folder (or Hub id): config.json + (sharded) safetensors."""
        folder = resolve_model_dir(path, revision=revision)
        config = Zamba2VLConfig.from_dict(load_config_json(folder))
        for k, v in text_overrides.items():
            if not hasattr(config.text_config, k):
                raise TypeError(f"unknown config override {k!r}")
            setattr(config.text_config, k, v)
        dtype = _parse_dtype(dtype)
        reader = open_weights(folder)
        if dtype is None:
            sample = reader[next(iter(reader))]
            dtype = sample.dtype if sample.is_floating_point() else torch.float32
        with torch.device("meta"):
            model = cls(config)
        source = str(folder)
        load_vision_weights(model.vision_tower, reader, source=source, dtype=dtype)
        load_text_state(model.language_model, reader, config.text_config, source=source, dtype=dtype)
        return model.to(device).eval()

    def hub_state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"vision_tower.{k}": v for k, v in self.vision_tower.state_dict().items()}
        out.update({f"language_model.{k}": v for k, v in text_hub_state(self.language_model).items()})
        return out

    def save_pretrained(self, out_dir: str | os.PathLike, *, max_shard_bytes: int = 4 * 1024**3) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["architectures"] = ["Zamba2_VLForConditionalGeneration"]
        cfg["torch_dtype"] = str(self.dtype).replace("torch.", "")
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        save_safetensors(self.hub_state_dict(), out, max_shard_bytes=max_shard_bytes)
