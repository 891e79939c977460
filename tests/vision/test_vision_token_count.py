"""The tower emits exactly as many rows as the processor promised LM tokens for (acceptance check B)."""

from __future__ import annotations

import numpy as np
import torch

from zamba2vl.config import VisionConfig
from zamba2vl.processing.image import ImageProcessor, num_image_tokens
from zamba2vl.vision import VisionTower


def test_processed_images_give_num_image_tokens_rows():
    cfg = VisionConfig(depth=2, hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=8,
                       fullatt_block_indexes=[1], temporal_patch_size=1)
    tower = VisionTower(cfg).eval()
    processor = ImageProcessor()
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(8, 700, size=2))
        max_pixels = int(rng.choice([28 * 28 * 4, 28 * 28 * 37, 28 * 28 * 100, 28 * 28 * 256]))
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        inputs = processor(image, max_pixels=max_pixels)
        with torch.no_grad():
            out = tower(inputs["pixel_values"], inputs["image_grid_thw"])
        expected = num_image_tokens((height, width), max_pixels=max_pixels, processor=processor)
        assert out.shape == (expected, 8), (height, width, max_pixels)
        checked += 1
    assert checked == 20
