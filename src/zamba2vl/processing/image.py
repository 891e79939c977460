"""Image preprocessing for the Qwen2.5-VL vision tower: ``smart_resize``, ``ImageProcessor``, ``num_image_tokens``.

Matches transformers' slow, PIL-based ``Qwen2VLImageProcessor`` (v4.52.4) bit for bit wherever the reference
returns a result (spec section 3.1): RGB ``convert``; ``smart_resize`` to multiples of 28 with Python's
``round`` (ties to even); PIL bicubic resize on uint8 (skipped when the size does not change: PIL would
return an exact copy); rescale ``float32(float64(u8) * rescale_factor)``; normalize per channel in float32
with the OpenAI CLIP mean/std; patchify with 2x2-merge-block-major patch order and (channel, time, row,
column) feature order. Pixels are put in patch order while still uint8 and converted to float a chunk at a
time, so the only full-size float array is the output itself (an image is first resized on uint8 by PIL).

Where the reference raises, we decided instead (documented and tested):
    * A side shorter than ``factor`` (the reference refuses anything under 28 px): the side is rounded up to
      ``factor`` before the budget checks, as ``qwen_vl_utils`` does. A 1x1 image becomes 56x56 under the
      default ``min_pixels`` (4 tokens).
    * If the ``max_pixels`` branch floors a side to 0 (extreme aspect ratio against a small budget; the
      reference then fails inside PIL), that side becomes ``factor`` and the other side is cut so that the
      area stays within ``max_pixels``.
    * Aspect ratio above ``max_ratio`` (200, as in the reference): ``ImageError`` that says how to proceed.
      ``max_ratio=None`` on the processor (or on ``smart_resize``) lifts the limit; the rules above then give
      e.g. a 10x3000 image 28x2996 pixels.
    * Budgets: ``min_pixels > max_pixels`` or ``max_pixels < factor**2`` raise ``InputError`` (the reference
      silently returns sizes outside one of the bounds or of zero size).
The model needs ``temporal_patch_size = 1`` (588 features a patch); ``from_dict`` forces it with a warning.
Other values are still computed like the reference (a single image repeated T times) for comparison.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from zamba2vl.errors import ConfigError, ImageError, InputError
from zamba2vl.processing.image_io import ImageSource, load_image, read_image_size

__all__ = ["ImageProcessor", "load_image", "num_image_tokens", "read_image_size", "smart_resize"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE_FILTERS = {int(f) for f in Image.Resampling}
_CHUNK_PATCHES = 4096  # patches converted to float at a time: caps the float64 scratch at ~19 MB


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    max_ratio: float | None = 200,
) -> tuple[int, int]:
    """Target ``(height, width)``: multiples of ``factor``, area within the budget, aspect ratio kept.

    Identical to the reference wherever it returns; see the module docstring for the cases where it raises.
    """
    if height < 1 or width < 1:
        raise ImageError(f"an image of {height}x{width} pixels has nothing to resize.")
    check_budget(factor, min_pixels, max_pixels)
    ratio = max(height, width) / min(height, width)
    if max_ratio is not None and ratio > max_ratio:
        raise ImageError(
            f"image of {height}x{width} pixels has aspect ratio {ratio:.1f}, above the limit of {max_ratio} "
            "that the reference enforces. Crop or pad it to a less extreme shape, or lift the limit with "
            "max_ratio=None (the model was not trained on such shapes)."
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
        # Not both can be 0: (height/beta) * (width/beta) = max_pixels >= factor**2.
        longest = max_pixels // (factor * factor) * factor  # longest side that fits next to a `factor` side
        if h_bar == 0:
            h_bar, w_bar = factor, min(w_bar, longest)
        elif w_bar == 0:
            h_bar, w_bar = min(h_bar, longest), factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_budget(factor: int, min_pixels: int, max_pixels: int) -> None:
    if factor < 1:
        raise InputError(f"factor must be a positive number of pixels, got {factor}")
    if max_pixels < factor * factor:
        raise InputError(f"max_pixels={max_pixels} is below one {factor}x{factor} block ({factor * factor}); raise it.")
    if not 0 <= min_pixels <= max_pixels:
        raise InputError(f"need 0 <= min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")


@dataclass
class ImageProcessor:
    """Turns images into ``pixel_values`` ``[patches, 3*T*14*14]`` and ``image_grid_thw`` ``[images, 3]``.

    ``min_pixels`` / ``max_pixels`` bound the resized area; they can be overridden per call and per image.
    ``max_image_pixels`` is the decompression-bomb limit handed to ``load_image`` (None: PIL's default).
    """

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 1
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    max_ratio: float | None = 200
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    resample: int = int(Image.Resampling.BICUBIC)
    max_image_pixels: int | None = None

    def __post_init__(self) -> None:
        for name in ("patch_size", "merge_size", "temporal_patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.image_mean = _per_channel("image_mean", self.image_mean)
        self.image_std = _per_channel("image_std", self.image_std)
        if 0.0 in self.image_std:
            raise ConfigError(f"image_std must not contain 0, got {self.image_std}")
        if int(self.resample) not in _RESAMPLE_FILTERS:
            raise ConfigError(f"resample must be a PIL filter number {sorted(_RESAMPLE_FILTERS)}, got {self.resample}")
        self.resample = int(self.resample)
        try:
            check_budget(self.factor, self.min_pixels, self.max_pixels)
        except InputError as e:
            raise ConfigError(f"bad image processor budget: {e}") from None

    @property
    def factor(self) -> int:
        """Side of one merged token in pixels (28)."""
        return self.patch_size * self.merge_size

    # ---- sizes and token counts (no pixels needed) ----

    def resized_size(
        self, height: int, width: int, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int]:
        """``(height, width)`` an image of this size is resized to."""
        if not self.do_resize:
            if height % self.factor or width % self.factor:
                raise ImageError(
                    f"with do_resize=False the image sides must be multiples of {self.factor}, got {height}x{width}"
                )
            return height, width
        return smart_resize(
            height,
            width,
            factor=self.factor,
            min_pixels=self.min_pixels if min_pixels is None else min_pixels,
            max_pixels=self.max_pixels if max_pixels is None else max_pixels,
            max_ratio=self.max_ratio,
        )

    def grid_thw(
        self, height: int, width: int, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[int, int, int]:
        """``(grid_t, grid_h, grid_w)`` in patches for one image of this size (grid_t is 1 for an image)."""
        h, w = self.resized_size(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return 1, h // self.patch_size, w // self.patch_size

    def num_image_tokens(
        self,
        image_or_size: ImageSource | tuple[int, int],
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> int:
        """LM tokens one image takes: ``grid_t * grid_h * grid_w / merge_size**2``, from the header size only."""
        if _is_size(image_or_size):
            height, width = image_or_size
        else:
            height, width = read_image_size(image_or_size, max_image_pixels=self.max_image_pixels)
        t, h, w = self.grid_thw(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return t * h * w // self.merge_size**2

    # ---- pixels ----

    def __call__(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        min_pixels: int | Sequence[int | None] | None = None,
        max_pixels: int | Sequence[int | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Preprocess one image or a list of them (anything ``load_image`` accepts).

        ``min_pixels`` / ``max_pixels``: None (the processor's), one number for every image, or a list with one
        entry (number or None) per image. Patches of all images are concatenated in order.
        """
        if isinstance(images, (list, tuple)):
            images = list(images)
        else:
            images = [images]
        mins = _per_image("min_pixels", min_pixels, len(images))
        maxs = _per_image("max_pixels", max_pixels, len(images))
        patches, grids = [], []
        for image, lo, hi in zip(images, mins, maxs):
            p, grid = self.preprocess_one(image, min_pixels=lo, max_pixels=hi)
            patches.append(p)
            grids.append(grid)
        features = 3 * self.temporal_patch_size * self.patch_size**2
        return {
            "pixel_values": torch.cat(patches) if patches else torch.zeros(0, features),
            "image_grid_thw": torch.tensor(grids, dtype=torch.int64).reshape(-1, 3),
        }

    def preprocess_one(
        self, image: ImageSource, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """One image -> (float32 patches ``[grid_h*grid_w, 3*T*p*p]``, ``(1, grid_h, grid_w)``)."""
        img = load_image(image, max_image_pixels=self.max_image_pixels)
        h, w = self.resized_size(img.height, img.width, min_pixels=min_pixels, max_pixels=max_pixels)
        if (w, h) != img.size:
            img = img.resize((w, h), resample=self.resample)  # on uint8, like the reference; reducing_gap=None
        pixels = np.asarray(img)  # (h, w, 3) uint8
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        n = gh * gw
        # Reorder the uint8 pixels into patches first (1 byte a value), then convert a chunk at a time.
        blocks = pixels.reshape(gh // m, m, p, gw // m, m, p, 3)  # (bh, row-in-block, y, bw, col-in-block, x, c)
        blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5).reshape(n, 3, p * p)  # (patch, c, y*x)
        # The reference stacks T copies of a lone image (it repeats the last frame): features are (c, t, y, x).
        out = np.empty((n, 3, t, p * p), dtype=np.float32)
        for start in range(0, n, _CHUNK_PATCHES):
            out[start : start + _CHUNK_PATCHES] = self._to_float(blocks[start : start + _CHUNK_PATCHES])[:, :, None]
        return torch.from_numpy(out.reshape(n, 3 * t * p * p)), (1, gh, gw)

    def _to_float(self, values: np.ndarray) -> np.ndarray:
        """uint8 ``[..., 3, k]`` -> float32: the reference's rescale (via float64) then per-channel normalize."""
        if self.do_rescale:
            x = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = values.astype(np.float32)
        if self.do_normalize:
            x -= np.asarray(self.image_mean, dtype=np.float32)[:, None]
            x /= np.asarray(self.image_std, dtype=np.float32)[:, None]
        return x

    # ---- preprocessor_config.json ----

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImageProcessor:
        """Build from a Hub ``preprocessor_config.json`` dict, with the reference's (4.52.4) reading of it.

        * ``size`` is ignored when valid (the reference replaces it by its defaults); ``min_pixels`` /
          ``max_pixels`` keys win. A ``size`` without both ``shortest_edge`` and ``longest_edge`` is an error,
          as in the reference. We warn when an ignored ``size`` disagrees with the budget actually used.
        * ``temporal_patch_size`` other than 1 is forced to 1 with a warning (this model's patch embedding has
          temporal extent 1; spec 3.1).
        * ``do_convert_rgb``, ``image_processor_type``, ``processor_class`` and unknown keys are ignored: images
          are always converted to RGB, and only the slow PIL path is implemented.
        """
        nullable = ("max_ratio", "max_image_pixels")  # our own keys, where None means "no limit"
        kwargs: dict[str, Any] = {
            f.name: config[f.name]
            for f in dataclasses.fields(cls)
            if f.name in config and (config[f.name] is not None or f.name in nullable)  # null: the default
        }
        size = config.get("size")
        if size is not None and not (isinstance(size, dict) and "shortest_edge" in size and "longest_edge" in size):
            raise ConfigError(f"preprocessor config 'size' must hold shortest_edge and longest_edge, got {size!r}")
        kwargs.setdefault("min_pixels", 56 * 56)
        kwargs.setdefault("max_pixels", 28 * 28 * 1280)
        used = (kwargs["min_pixels"], kwargs["max_pixels"])
        if size is not None and (size["shortest_edge"], size["longest_edge"]) != used:
            warnings.warn(
                f"preprocessor config 'size' {size} is ignored, as by the reference; using min_pixels={used[0]}, "
                f"max_pixels={used[1]}. Set those keys to change the budget.",
                stacklevel=2,
            )
        if kwargs.get("temporal_patch_size", 1) != 1:
            warnings.warn(
                f"preprocessor config has temporal_patch_size={kwargs['temporal_patch_size']}; Zamba2-VL's vision "
                "tower takes single-frame patches, so temporal_patch_size=1 is used (as the model card does).",
                stacklevel=2,
            )
            kwargs["temporal_patch_size"] = 1
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A ``preprocessor_config.json`` dict that both ``from_dict`` and the reference read back the same."""
        out = dataclasses.asdict(self)
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        out["size"] = {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}
        out["do_convert_rgb"] = True
        out["image_processor_type"] = "Qwen2VLImageProcessor"
        return out


def num_image_tokens(
    image_or_size: ImageSource | tuple[int, int],
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    processor: ImageProcessor | None = None,
) -> int:
    """LM tokens an image takes, from ``(height, width)`` or the image header (pixels are not decoded)."""
    processor = processor if processor is not None else ImageProcessor()
    return processor.num_image_tokens(image_or_size, min_pixels=min_pixels, max_pixels=max_pixels)


def _is_size(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    )


def _per_channel(name: str, value: Any) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ConfigError(f"{name} needs one value per RGB channel, got {value!r}")
    return tuple(values)


def _per_image(name: str, value: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    if value is None or isinstance(value, (int, np.integer)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise InputError(f"{name} has {len(values)} entries for {n} images; give one per image, or one number.")
    return values
