"""Processor: messages + images -> expanded input ids, mask, pixel values, grid; and its errors."""

from pathlib import Path

import mistral_common
import numpy as np
import pytest
import torch
from PIL import Image

from zamba2vl.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore:The checkpoint ships no chat template")
from zamba2vl.processing.image import ImageProcessor, num_image_tokens
from zamba2vl.processing.processor import Processor
from zamba2vl.processing.tokenizer import Tokenizer

SPM_PATH = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


@pytest.fixture(scope="module")
def processor():
    tok = Tokenizer.from_sentencepiece(SPM_PATH, added_tokens=["<image>"])
    return Processor(tok, ImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64), max_length=400)


def image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_placeholders_expand_to_each_images_token_count(processor):
    imgs = [image(100, 150), image(300, 90, 1), image(56, 56, 2)]
    conv = [{"role": "user", "content": [{"type": "image", "image": imgs[0]}, {"type": "text", "text": "Compare"},
                                         {"type": "image", "image": imgs[1]}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "image", "image": imgs[2]}, {"type": "text", "text": "and this?"}]}]
    out = processor.process_messages(conv)
    expected = [num_image_tokens((i.height, i.width), processor=processor.image_processor) for i in imgs]
    assert expected == [20, 33, 4]  # 100x150 -> 112x140; 300x90 -> 308x84 (rounded to 28s); 56x56 -> 56x56
    assert int((out.input_ids == processor.image_token_id).sum()) == sum(expected)
    assert out.pixel_values.shape == (4 * sum(expected), 588)
    assert out.image_grid_thw.tolist() == [[1, 8, 10], [1, 22, 6], [1, 4, 4]]
    # Runs of image tokens appear in order and are contiguous.
    ids = out.input_ids[0].tolist()
    runs, prev = [], None
    for t in ids:
        if t == processor.image_token_id:
            runs[-1:] = [runs[-1] + 1] if prev == t else runs[-1:]
            if prev != t:
                runs.append(1)
        prev = t
    assert runs == expected


def test_text_only_and_left_padded_batch(processor):
    a = [{"role": "user", "content": "Hi"}]
    b = [{"role": "user", "content": "A much longer question about the weather today"}]
    out = processor.process_messages([a, b])
    assert out.pixel_values is None
    assert out.attention_mask[0, 0] == 0 and out.attention_mask[1].all()
    alone = processor.process_messages(a)
    n = int(alone.attention_mask.sum())
    assert out.input_ids[0, -n:].tolist() == alone.input_ids[0].tolist()


def test_part_budget_is_applied_like_qwen_vl_utils(processor):
    big = image(600, 800, 3)
    conv = [{"role": "user", "content": [{"type": "image", "image": big, "max_pixels": 28 * 28 * 16}, {"type": "text", "text": "?"}]}]
    out = processor.process_messages(conv)
    # 16-token budget: beta = sqrt(600*800 / 12544); 600 -> floor(600/beta/28)*28 = 84, 800 -> 112: 12 tokens
    assert out.image_grid_thw.tolist() == [[1, 6, 8]]
    assert out.image_sizes == [(600, 800)] and out.resized_sizes == [(84, 112)]


def test_placeholder_and_image_count_mismatches_are_explained(processor):
    with pytest.raises(InputError, match="more image placeholders"):
        processor("<image> and <image>", [image(56, 56)])
    with pytest.raises(InputError, match="2 images were given but the prompt has only 1 image placeholders"):
        processor("<image> only", [image(56, 56), image(56, 56)])


def test_prompt_longer_than_the_maximum_is_explained(processor):
    with pytest.raises(InputError, match=r"prompt 0 is \d+ tokens long .* over the maximum of 400"):
        processor("word " * 500)
