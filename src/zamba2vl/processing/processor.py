"""The Zamba2-VL processor: chat messages and images -> input ids, attention mask, pixel values and grid.

Each image placeholder token in the rendered prompt is expanded to as many copies as the image has merged
tokens (grid_t * grid_h * grid_w / merge_size^2), images consumed left to right across the batch, as the
reference processor does. Expansion happens on token ids, which gives the same ids as the reference's
string-level expansion because the placeholder is a special token that the tokenizer splits out first.

Per-image budgets given in a message part (``{"type": "image", "image": ..., "max_pixels": ...}``) are applied
the way the model card's ``qwen_vl_utils`` step applies them: a first resize to that budget, then the image
processor's own resize (a no-op when the first result is already within the processor's budget).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zamba2vl.errors import InputError
from zamba2vl.processing.chat import find_chat_template, normalize_messages
from zamba2vl.processing.image import ImageProcessor, load_image, smart_resize
from zamba2vl.processing.tokenizer import Tokenizer


@dataclass
class ProcessedInputs:
    input_ids: torch.Tensor  # [b, L] int64, left-padded
    attention_mask: torch.Tensor  # [b, L] int64
    pixel_values: torch.Tensor | None = None  # [patches, 3*T*14*14] float32
    image_grid_thw: torch.Tensor | None = None  # [images, 3] int64
    image_sizes: list[tuple[int, int]] | None = None  # (height, width) of each original image
    resized_sizes: list[tuple[int, int]] | None = None  # (height, width) the model saw

    def model_inputs(self) -> dict[str, Any]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            out.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return out


def _part_budgets(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, int]]:
    """min/max pixel budgets of each image part, in order (empty dict when the part sets none)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, (list, tuple)):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in ("image", "image_url"):
                    out.append({k: int(part[k]) for k in ("min_pixels", "max_pixels") if part.get(k) is not None})
    return out


class Processor:
    def __init__(
        self,
        tokenizer: Tokenizer,
        image_processor: ImageProcessor | None = None,
        *,
        image_token: str | None = None,
        max_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_processor = image_processor or ImageProcessor()
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or "<image>"
        tid = tokenizer.convert_tokens_to_ids(self.image_token)
        if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
            raise InputError(
                f"the tokenizer has no token {self.image_token!r} for images; the checkpoint's tokenizer files must "
                "define the image placeholder token (tokenizer_config.json / added_tokens)."
            )
        self.image_token_id = int(tid)
        self.max_length = max_length

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> "Processor":
        from zamba2vl.checkpoint import resolve_model_dir

        folder = resolve_model_dir(path)
        tokenizer = Tokenizer.from_pretrained(folder)
        found = find_chat_template(folder)
        if found is not None:
            tokenizer.chat_template = found[0]
        pre = Path(folder) / "preprocessor_config.json"
        image_processor = ImageProcessor.from_dict(json.loads(pre.read_text())) if pre.is_file() else ImageProcessor()
        image_token = kwargs.pop("image_token", None)
        pc = Path(folder) / "processor_config.json"
        if image_token is None and pc.is_file():
            image_token = json.loads(pc.read_text()).get("image_token")
        return cls(tokenizer, image_processor, image_token=image_token, **kwargs)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        d = self.image_processor.to_dict()
        d["image_processor_type"] = "Qwen2VLImageProcessor"
        (out / "preprocessor_config.json").write_text(json.dumps(d, indent=2))
        (out / "processor_config.json").write_text(json.dumps({"processor_class": "Zamba2_VLProcessor", "image_token": self.image_token}, indent=2))
        if self.tokenizer.chat_template is not None:
            (out / "chat_template.jinja").write_text(self.tokenizer.chat_template)

    # ------------------------------------------------------------------------------------------ text
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        normalized, _ = normalize_messages(messages)
        return self.tokenizer.apply_chat_template(normalized, add_generation_prompt=add_generation_prompt,
                                                  image_token=self.image_token)

    def tokens_per_image(self, grid: torch.Tensor) -> list[int]:
        m2 = self.image_processor.merge_size ** 2
        return [int(t * h * w) // m2 for t, h, w in grid.tolist()]

    # ------------------------------------------------------------------------------------------ images
    def prepare_images(
        self, images: Sequence[Any], budgets: Sequence[Mapping[str, int]] | None = None
    ) -> tuple[list[Image.Image], list[tuple[int, int]]]:
        """Load each image; apply a part's own budget as a first resize. Returns (images, original sizes)."""
        out, sizes = [], []
        for i, src in enumerate(images):
            img = load_image(src)
            sizes.append((img.height, img.width))
            b = budgets[i] if budgets and i < len(budgets) else {}
            if b:
                ip = self.image_processor
                h, w = smart_resize(img.height, img.width, factor=ip.factor,
                                    min_pixels=b.get("min_pixels", 4 * 28 * 28), max_pixels=b.get("max_pixels", 16384 * 28 * 28))
                if (h, w) != (img.height, img.width):
                    img = img.resize((w, h), Image.Resampling.BICUBIC)
            out.append(img)
        return out, sizes

    def encode_images(
        self,
        images: Sequence[Any] | None,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        image_budgets: Sequence[Mapping[str, int]] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[int, int]]]:
        """The images alone, as ``__call__`` prepares them: (pixel_values, image_grid_thw, original (h, w) sizes);
        (None, None, []) for no images."""
        pil, sizes = self.prepare_images(list(images or []), image_budgets)
        if not pil:
            return None, None, sizes
        batch = self.image_processor(pil, min_pixels=min_pixels, max_pixels=max_pixels)
        return batch["pixel_values"], batch["image_grid_thw"], sizes

    def check_placeholders(self, placeholders: int, images: int) -> None:
        """Raise InputError unless the prompt's image placeholders and the images given pair up one to one."""
        if placeholders > images:
            raise InputError(
                f"the prompt has more image placeholders ({self.image_token!r}) than images "
                f"({images} given); pass one image per placeholder."
            )
        if placeholders < images:
            raise InputError(
                f"{images} images were given but the prompt has only {placeholders} image placeholders "
                f"({self.image_token!r}); each image needs a placeholder in the text (the chat template adds one per image part)."
            )

    def check_length(self, tokens: int, index: int = 0) -> None:
        """Raise InputError when prompt ``index``, ``tokens`` long with its images expanded, exceeds max_length."""
        if self.max_length is not None and tokens > self.max_length:
            raise InputError(
                f"prompt {index} is {tokens} tokens long (images included), over the maximum of {self.max_length}. "
                "Shorten the text, use fewer images, or lower max_pixels to give each image fewer tokens."
            )

    # ------------------------------------------------------------------------------------------ main entry
    def __call__(
        self,
        text: str | Sequence[str],
        images: Sequence[Any] | None = None,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        add_special_tokens: bool = True,
        image_budgets: Sequence[Mapping[str, int]] | None = None,
    ) -> ProcessedInputs:
        texts = [text] if isinstance(text, str) else list(text)
        pixel_values, grid, sizes = self.encode_images(images, min_pixels=min_pixels, max_pixels=max_pixels,
                                                       image_budgets=image_budgets)
        counts: list[int] = []
        resized: list[tuple[int, int]] = []
        if grid is not None:
            counts = self.tokens_per_image(grid)
            p = self.image_processor.patch_size
            resized = [(int(h) * p, int(w) * p) for _, h, w in grid.tolist()]

        encoded = [self.tokenizer.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        self.check_placeholders(sum(ids.count(self.image_token_id) for ids in encoded), len(counts))
        rows: list[list[int]] = []
        next_image = 0
        for ids in encoded:
            row: list[int] = []
            for tok in ids:
                if tok == self.image_token_id:
                    row.extend([tok] * counts[next_image])
                    next_image += 1
                else:
                    row.append(tok)
            rows.append(row)
        for i, r in enumerate(rows):
            self.check_length(len(r), i)
        return self._pad(rows, pixel_values, grid, sizes, resized)

    def _pad(self, rows, pixel_values, grid, sizes, resized) -> ProcessedInputs:
        T = max((len(r) for r in rows), default=0)
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, T - len(r):] = 1
        return ProcessedInputs(ids, mask, pixel_values, grid, sizes or None, resized or None)

    def process_messages(
        self,
        conversations: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        *,
        add_generation_prompt: bool = True,
        images: Sequence[Any] | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> ProcessedInputs:
        """One conversation (a list of messages) or a batch of them -> model inputs.

        Images come from the messages' image parts; ``images`` supplies them when the parts carry none.
        """
        if conversations and isinstance(conversations[0], Mapping):
            conversations = [conversations]  # type: ignore[list-item]
        texts, all_images, budgets = [], [], []
        extra = list(images or [])
        for conv in conversations:
            normalized, srcs = normalize_messages(conv)  # type: ignore[arg-type]
            conv_budgets = _part_budgets(conv)  # type: ignore[arg-type]
            for j, s in enumerate(srcs):
                if s is None:
                    if not extra:
                        raise InputError("an image part carries no image and no images were passed separately")
                    s = extra.pop(0)
                all_images.append(s)
                budgets.append(conv_budgets[j] if j < len(conv_budgets) else {})
            texts.append(self.tokenizer.apply_chat_template(normalized, add_generation_prompt=add_generation_prompt,
                                                            image_token=self.image_token))
        if extra:
            raise InputError(f"{len(extra)} images were passed but no image part in the messages takes them")
        # The model card tokenizes the rendered prompt with add_special_tokens=True, so whether a BOS is prepended
        # (possibly after the template's own "<s>") is decided by the checkpoint's tokenizer_config.json.
        return self(texts, all_images, min_pixels=min_pixels, max_pixels=max_pixels,
                    add_special_tokens=True, image_budgets=budgets)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
