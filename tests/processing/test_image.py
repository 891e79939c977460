"""Image loading and preprocessing against transformers==4.52.4's slow Qwen2VLImageProcessor, plus edge cases."""

import base64
import io
import math
import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as ref_smart_resize

from zamba2vl.errors import ConfigError, ImageError, InputError
from zamba2vl.processing.image import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageProcessor,
    load_image,
    num_image_tokens,
    read_image_size,
    smart_resize,
)

TOL = 1e-6  # max abs difference allowed against the reference (observed: 0.0)
DEFAULT = (56 * 56, 28 * 28 * 1280)
BUDGETS = [
    DEFAULT, (4 * 784, 64 * 784), (10 * 784, 256 * 784), (3136, 12845056), (784, 16 * 784), (100 * 784, 1280 * 784)
]


def random_image(rng, height, width, mode):
    """A PIL image of the given mode with random content."""
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    if mode == "I;16":  # values around 255 so PIL's clipping shows
        return Image.fromarray(rng.integers(0, 512, (height, width)).astype("<u2"))
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).quantize(64)
    channels = {"RGBA": 4, "CMYK": 4, "LA": 2}[mode]
    data = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.frombytes(mode, (width, height), data.tobytes())


def card_load(path):
    """The model card's loader (qwen_vl_utils): Image.open(...).convert("RGB")."""
    with Image.open(path) as image:
        return image.convert("RGB")


def reference(image, min_pixels, max_pixels, temporal_patch_size=1):
    proc = Qwen2VLImageProcessor(temporal_patch_size=temporal_patch_size, min_pixels=min_pixels, max_pixels=max_pixels)
    out = proc(images=image, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def assert_matches_reference(image, ours_input, min_pixels, max_pixels):
    ref_values, ref_grid = reference(image, min_pixels, max_pixels)
    out = ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)(ours_input)
    assert out["pixel_values"].dtype == torch.float32 and out["image_grid_thw"].dtype == torch.int64
    assert out["image_grid_thw"].tolist() == ref_grid.tolist()
    assert out["pixel_values"].shape == ref_values.shape
    assert np.abs(out["pixel_values"].numpy() - ref_values).max() <= TOL


# ------------------------------------------------------------------ A. parity with the reference

PARITY_CASES = [  # (height, width, mode, budget index)
    (28, 28, "RGB", 0), (29, 31, "RGB", 0), (28, 200, "RGBA", 1), (200, 28, "L", 1), (57, 300, "P", 2),
    (300, 57, "CMYK", 2), (100, 150, "I;16", 1), (150, 100, "LA", 0), (224, 224, "1", 3), (333, 517, "RGB", 4),
    (517, 333, "RGBA", 5), (70, 70, "RGB", 4), (42, 98, "L", 0), (127, 255, "CMYK", 5), (255, 127, "P", 3),
    (31, 6000, "RGB", 0), (6000, 31, "L", 2), (481, 640, "RGB", 1), (640, 481, "I;16", 2), (999, 37, "RGB", 5),
    (64, 64, "RGBA", 5), (140, 112, "RGB", 0), (56, 56, "RGB", 4), (401, 403, "CMYK", 1), (90, 60, "P", 5),
    (768, 1024, "RGB", 2), (1024, 768, "L", 0), (2000, 3000, "RGB", 0), (3000, 2000, "RGB", 5),
    (1999, 1333, "RGBA", 1), (113, 1777, "I;16", 3), (512, 512, "RGB", 1),
]


@pytest.mark.parametrize("height,width,mode,budget", PARITY_CASES)
def test_matches_reference(height, width, mode, budget):
    rng = np.random.default_rng(height * 10007 + width)
    image = random_image(rng, height, width, mode)
    assert image.mode == mode
    assert_matches_reference(image, image, *BUDGETS[budget])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_encoded_files_match_reference(fmt):
    rng = np.random.default_rng(7)
    image = random_image(rng, 123, 245, "RGB")
    buf = io.BytesIO()
    image.save(buf, fmt)
    data = buf.getvalue()
    assert_matches_reference(card_load(io.BytesIO(data)), data, *BUDGETS[1])


def test_numpy_uint8_matches_reference():
    array = np.random.default_rng(3).integers(0, 256, (97, 211, 3), dtype=np.uint8)
    assert_matches_reference(array, array, *DEFAULT)


def test_batch_with_per_image_budgets_matches_reference():
    rng = np.random.default_rng(11)
    images = [random_image(rng, 90, 130, "RGB"), random_image(rng, 300, 40, "L"), random_image(rng, 64, 64, "RGBA")]
    budgets = [BUDGETS[1], BUDGETS[0], BUDGETS[5]]
    out = ImageProcessor()(images, min_pixels=[b[0] for b in budgets], max_pixels=[b[1] for b in budgets])
    refs = [reference(im, *b) for im, b in zip(images, budgets)]
    assert out["image_grid_thw"].tolist() == [r[1][0].tolist() for r in refs]
    ref_values = np.concatenate([r[0] for r in refs])
    assert out["pixel_values"].shape == ref_values.shape
    assert np.abs(out["pixel_values"].numpy() - ref_values).max() <= TOL
    # One number for all images; None entries fall back to the processor's budget.
    one = ImageProcessor()(images, max_pixels=64 * 784)
    mixed = ImageProcessor(max_pixels=64 * 784)(images, max_pixels=[None, None, None])
    assert torch.equal(one["pixel_values"], mixed["pixel_values"])
    with pytest.raises(InputError, match="2 entries for 3 images"):
        ImageProcessor()(images, min_pixels=[784, 784])


def test_temporal_patch_size_2_matches_reference():
    image = random_image(np.random.default_rng(5), 75, 90, "RGB")
    ref_values, ref_grid = reference(image, *DEFAULT, temporal_patch_size=2)
    out = ImageProcessor(temporal_patch_size=2)(image)
    assert out["pixel_values"].shape == (ref_values.shape[0], 1176)
    assert out["image_grid_thw"].tolist() == ref_grid.tolist()
    assert np.abs(out["pixel_values"].numpy() - ref_values).max() <= TOL


def test_patch_and_feature_order():
    # Red holds the row, green the column: every patch tells where it came from.
    y, x = np.mgrid[0:56, 0:84]
    image = np.stack([y, x, np.zeros_like(y)], axis=-1).astype(np.uint8)
    proc = ImageProcessor(do_rescale=False, do_normalize=False)
    out = proc(image)
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    values = out["pixel_values"].reshape(-1, 3, 14, 14)
    # 2x2 merge blocks in raster order, patches inside a block in raster order.
    tops = [0, 0, 14, 14, 0, 0, 14, 14, 0, 0, 14, 14, 28, 28, 42, 42]
    lefts = [0, 14, 0, 14, 28, 42, 28, 42, 56, 70, 56, 70, 0, 14, 0, 14]
    for k, (top, left) in enumerate(zip(tops, lefts)):
        assert values[k, 0, 0, 0].item() == top and values[k, 1, 0, 0].item() == left
    # Within a patch: channel, then pixel row, then pixel column.
    assert values[5, 0, :, 0].tolist() == list(range(0, 14))
    assert values[5, 1, 0, :].tolist() == list(range(42, 56))
    assert values[5, 2].abs().sum().item() == 0


def test_values_are_rescaled_and_normalized_in_float32():
    image = np.full((28, 28, 3), [0, 128, 255], dtype=np.uint8)
    values = ImageProcessor()(image)["pixel_values"].reshape(-1, 3, 196)
    expected = [
        (np.float32(np.float64(v) * (1 / 255)) - np.float32(m)) / np.float32(s)
        for v, m, s in zip([0, 128, 255], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    ]
    for c in range(3):
        assert torch.all(values[:, c] == float(expected[c]))
    assert math.isclose(float(expected[2]), (1 - 0.40821073) / 0.27577711, rel_tol=1e-6)


# ------------------------------------------------------------------ smart_resize and token counts (B)


def test_smart_resize_rounds_ties_to_even():
    assert smart_resize(70, 70, min_pixels=0) == (56, 56) == ref_smart_resize(70, 70, min_pixels=0)  # 2.5 -> 2
    assert smart_resize(42, 42, min_pixels=0) == (56, 56) == ref_smart_resize(42, 42, min_pixels=0)  # 1.5 -> 2
    assert smart_resize(126, 98, min_pixels=0) == (112, 112)  # 4.5 -> 4, 3.5 -> 4


def test_smart_resize_random_sizes_and_budgets():
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = (int(v) for v in np.exp(rng.uniform(0, np.log(5000), 2)))
        if max(height, width) / min(height, width) > 200:
            continue
        max_pixels = int(rng.integers(784, 4000 * 784))
        min_pixels = int(rng.integers(0, max_pixels + 1)) if rng.random() < 0.5 else int(rng.integers(0, 20 * 784))
        min_pixels = min(min_pixels, max_pixels)
        h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        if height >= 28 and width >= 28:
            try:
                assert (h, w) == ref_smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
            except ValueError:  # only when the reference floors a side to zero
                assert h == 28 or w == 28
        assert h % 28 == 0 and w % 28 == 0 and h >= 28 and w >= 28
        rounded = max(28, round(height / 28) * 28) * max(28, round(width / 28) * 28)
        if rounded >= min_pixels:  # not the grow-to-min branch: within max
            assert h * w <= max_pixels
        if rounded <= max_pixels:  # not the shrink-to-max branch: at least min
            assert h * w >= min_pixels
        proc = ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
        assert num_image_tokens((height, width), processor=proc) == h * w // 784


def test_token_count_equals_processed_patches():
    rng = np.random.default_rng(1)
    proc = ImageProcessor()
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(1, 160, 2))
        if max(height, width) / min(height, width) > 200:
            continue
        max_pixels = int(rng.integers(1, 40)) * 784
        min_pixels = int(rng.integers(0, max_pixels + 1))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        out = proc(image, min_pixels=min_pixels, max_pixels=max_pixels)
        tokens = num_image_tokens(image, min_pixels=min_pixels, max_pixels=max_pixels)
        assert tokens == out["pixel_values"].shape[0] // 4 == int(out["image_grid_thw"].prod()) // 4
        assert num_image_tokens((height, width), min_pixels=min_pixels, max_pixels=max_pixels) == tokens


def test_token_count_reads_only_the_header(tmp_path):
    image = random_image(np.random.default_rng(2), 100, 150, "RGB")
    path = tmp_path / "a.png"
    image.save(path)
    proc = ImageProcessor(max_pixels=28 * 28 * 64)
    assert num_image_tokens(path, processor=proc) == 20  # spec 3.1: 100x150 -> 112x140 -> 20 tokens
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(path.read_bytes()[:200])  # header only: its size is still readable
    assert read_image_size(truncated) == (100, 150)
    assert num_image_tokens(str(truncated), processor=proc) == 20


def test_budget_validation():
    with pytest.raises(InputError, match="min_pixels <= max_pixels"):
        smart_resize(100, 100, min_pixels=5000, max_pixels=4000)
    with pytest.raises(InputError, match="below one 28x28 block"):
        smart_resize(100, 100, max_pixels=700)
    with pytest.raises(ConfigError, match="budget"):
        ImageProcessor(min_pixels=10**7)


def test_max_branch_never_floors_a_side_to_zero():
    # The reference computes height 0 here and then fails inside PIL.
    with pytest.raises(ValueError):
        reference(Image.new("RGB", (5000, 28)), 784, 3136)
    assert smart_resize(28, 5000, min_pixels=784, max_pixels=3136) == (28, 112)
    assert smart_resize(5000, 28, min_pixels=784, max_pixels=3136) == (112, 28)
    out = ImageProcessor(min_pixels=784, max_pixels=3136)(np.zeros((28, 5000, 3), np.uint8))
    assert out["image_grid_thw"].tolist() == [[1, 2, 8]]


# ------------------------------------------------------------------ preprocessor_config.json


QWEN25_CONFIG = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3,
    "rescale_factor": 0.00392156862745098, "do_rescale": True, "do_normalize": True, "do_resize": True,
    "do_convert_rgb": True, "size": {"shortest_edge": 3136, "longest_edge": 12845056},
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
}


def test_from_dict_forces_single_frame_patches():
    with pytest.warns(UserWarning, match="temporal_patch_size=2"):
        proc = ImageProcessor.from_dict(QWEN25_CONFIG)
    ref = Qwen2VLImageProcessor.from_dict(QWEN25_CONFIG)
    assert (proc.min_pixels, proc.max_pixels) == (ref.min_pixels, ref.max_pixels) == (3136, 12845056)
    assert proc.temporal_patch_size == 1 and ref.temporal_patch_size == 2
    assert proc.rescale_factor == 1 / 255


def test_from_dict_ignores_size_like_the_reference():
    config = {"size": {"shortest_edge": 784, "longest_edge": 3400 * 784}, "temporal_patch_size": 1}
    with pytest.warns(UserWarning, match="is ignored"):
        proc = ImageProcessor.from_dict(config)
    ref = Qwen2VLImageProcessor.from_dict(config)
    assert (proc.min_pixels, proc.max_pixels) == (ref.min_pixels, ref.max_pixels) == DEFAULT
    with pytest.raises(ConfigError, match="shortest_edge and longest_edge"):
        ImageProcessor.from_dict({"size": {"height": 224, "width": 224}})
    with pytest.raises(ValueError):
        Qwen2VLImageProcessor.from_dict({"size": {"height": 224, "width": 224}})
    null_budget = {"min_pixels": None, "max_pixels": 12845056}
    ref = Qwen2VLImageProcessor.from_dict(null_budget)
    assert (ImageProcessor.from_dict(null_budget).min_pixels, ref.min_pixels) == (3136, 3136)


def test_to_dict_round_trip():
    proc = ImageProcessor(min_pixels=10 * 784, max_pixels=3400 * 784, max_ratio=None, max_image_pixels=10**8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ImageProcessor.from_dict(proc.to_dict())
    assert again == proc
    ref = Qwen2VLImageProcessor.from_dict(proc.to_dict())
    assert (ref.min_pixels, ref.max_pixels, ref.temporal_patch_size) == (10 * 784, 3400 * 784, 1)


# ------------------------------------------------------------------ C. loading and edge cases


def png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def png_header(width, height):
    """A PNG that declares width x height but holds no pixel data: enough for PIL to read the size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_sources_decode_to_the_same_pixels(tmp_path):
    image = random_image(np.random.default_rng(4), 30, 50, "RGBA")
    data = png_bytes(image)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    expected = np.asarray(image.convert("RGB"))
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    for source in (path, str(path), "file://" + str(path), data, bytearray(data), url, image):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), expected)
        assert read_image_size(source) == (30, 50)
    with open(path, "rb") as f:
        assert np.array_equal(np.asarray(load_image(f)), expected)


def test_bad_sources_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="not downloaded"):
        load_image("https://example.com/cat.png")
    with pytest.raises(ImageError, match="base64 payload is invalid"):
        load_image("data:image/png;base64,abc$")
    with pytest.raises(ImageError, match="needs a comma"):
        load_image("data:image/png;base64")
    with pytest.raises(TypeError, match="got int"):
        load_image(3)


def test_truncated_png(tmp_path):
    data = png_bytes(random_image(np.random.default_rng(6), 64, 64, "RGB"))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated.png' could not be decoded"):
        load_image(path)
    with pytest.raises(ImageError, match="could not be decoded"):
        ImageProcessor()([path])


def test_random_bytes_and_empty_files(tmp_path):
    noise = np.random.default_rng(8).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not an image format PIL can read"):
        load_image(noise)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.jpg' is empty \(0 bytes\)"):
        load_image(empty)
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        load_image(b"")
    with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
        num_image_tokens(empty)


def test_one_pixel_image_is_upscaled_to_the_min_budget():
    out = ImageProcessor()(np.array([[[10, 200, 30]]], dtype=np.uint8))
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56x56 = min_pixels
    solid = ImageProcessor()(np.full((56, 56, 3), [10, 200, 30], dtype=np.uint8))
    assert torch.equal(out["pixel_values"], solid["pixel_values"])  # bicubic of a single pixel is flat
    assert num_image_tokens((1, 1)) == 4
    assert smart_resize(1, 1, min_pixels=0) == (28, 28)
    assert smart_resize(3, 20) == (28, 168)  # grown to >= 3136 px keeping the shape: 4704 px


def test_aspect_ratio_above_200():
    image = np.random.default_rng(9).integers(0, 256, (10, 3000, 3), dtype=np.uint8)
    with pytest.raises(ValueError):  # the reference refuses it too
        ref_smart_resize(28, 28 * 201)
    with pytest.raises(ImageError, match="aspect ratio 300.0, above the limit of 200"):
        ImageProcessor()(image)
    with pytest.raises(ImageError, match="aspect ratio 300.0"):
        num_image_tokens((10, 3000))
    proc = ImageProcessor(max_ratio=None)
    out = proc(image)
    assert out["image_grid_thw"].tolist() == [[1, 2, 214]]  # 28x2996
    assert out["pixel_values"].shape == (428, 588)
    assert num_image_tokens((10, 3000), processor=proc) == 107
    assert smart_resize(28, 28 * 200) == (28, 5600)  # exactly 200 is allowed (reference: "> 200" fails)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20000, 20000))
    with pytest.raises(ImageError, match="400000000 pixels"):
        load_image(path)
    with pytest.raises(ImageError, match="400000000 pixels"):
        num_image_tokens(path)
    with pytest.raises(ImageError, match="too large to decode safely"):
        ImageProcessor()(path.read_bytes())
    # Once the user lifts PIL's limit, the size (and the token count) come from the header alone.
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        assert read_image_size(path) == (20000, 20000)
        assert num_image_tokens(path) == 1225  # 980x980
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_pixel_limit(monkeypatch):
    data = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="10000 pixels, more than the limit of 5000"):
        load_image(data, max_image_pixels=5000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # PIL would only warn at 10000 (< 2 x 6000)
    with pytest.raises(ImageError, match="more than the limit of 6000"):
        load_image(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(data, max_image_pixels=20000).size == (100, 100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10000 > 2 x 4000: PIL's hard limit
    with pytest.raises(ImageError, match="raise PIL.Image.MAX_IMAGE_PIXELS"):
        load_image(data, max_image_pixels=20000)
    with pytest.raises(ValueError, match="max_image_pixels must be a positive"):
        load_image(data, max_image_pixels=0)


def test_large_image_is_never_held_as_floats():
    image = np.random.default_rng(10).integers(0, 256, (3000, 2000, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        out = ImageProcessor(max_pixels=64 * 784)(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["image_grid_thw"].tolist() == [[1, 18, 12]]  # 252x168
    assert peak < 8_000_000  # the full image would be 72 MB as float32, 18 MB as uint8


def test_16_bit_grayscale_is_clipped_like_pil(tmp_path):
    values = np.array([[0, 100, 255, 256, 1000, 65535]], dtype="<u2")
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    rgb = np.asarray(load_image(path))
    assert rgb[0, :, 0].tolist() == [0, 100, 255, 255, 255, 255]
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.array_equal(np.asarray(load_image(values)), rgb)  # a uint16 array is read the same way


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 3
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (30, 40, 3) and np.all(rgb == [255, 0, 0])
    assert read_image_size(path) == (30, 40)
    assert_matches_reference(card_load(path), path, *DEFAULT)


def test_exif_orientation_is_not_applied(tmp_path):
    image = random_image(np.random.default_rng(12), 60, 100, "RGB")  # 100 wide, 60 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (100, 60) and read_image_size(path) == (60, 100)  # as stored, like the reference
    assert np.array_equal(np.asarray(loaded), np.asarray(card_load(path)))
    assert_matches_reference(card_load(path), path, *DEFAULT)
    # Opt-in: turned upright.
    assert load_image(path, exif_transpose=True).size == (60, 100)
    assert read_image_size(path, exif_transpose=True) == (100, 60)


def test_numpy_inputs():
    gray = np.random.default_rng(13).integers(0, 256, (20, 30), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(gray)), np.repeat(gray[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(load_image(gray[..., None])), np.asarray(load_image(gray)))
    rgba = np.random.default_rng(14).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(rgba)), rgba[..., :3])  # alpha dropped, not composited
    floats = np.array([[[0.0, 0.5, 1.0], [0.2, 0.0019, 0.998]]])
    assert np.asarray(load_image(floats)).tolist() == [[[0, 128, 255], [51, 0, 254]]]
    assert np.asarray(load_image(np.array([[True, False]]))).tolist() == [[[255] * 3, [0] * 3]]
    with pytest.raises(ImageError, match=r"in \[0, 1\]"):
        load_image(floats * 2)
    with pytest.raises(ImageError, match="got dtype int32"):
        load_image(gray.astype(np.int32))
    with pytest.raises(ImageError, match="channels last"):
        load_image(np.zeros((3, 40, 50), np.uint8))
    assert read_image_size(rgba) == (20, 30)
