"""Grounding: parsing every box notation a model writes, mapping to original pixels, drawing."""

import math

import pytest
from PIL import Image

from zamba2vl.errors import ImageError, InputError
from zamba2vl.grounding import PALETTE, Box, box_colours, draw_boxes, parse_boxes, to_original
from zamba2vl.processing.image import smart_resize

GREY = (128, 128, 128)


def as_tuples(boxes):
    return [(*b.as_list(), b.label) for b in boxes]


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            'Sure.\n```json\n[\n  {"bbox_2d": [12, 30, 200, 180], "label": "cat"},\n'
            '  {"bbox_2d": [250, 40, 410, 275], "label": "dog"}\n]\n```\nDone.',
            [(12, 30, 200, 180, "cat"), (250, 40, 410, 275, "dog")],
            id="fenced-json",
        ),
        pytest.param(
            '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5.5, 6, 7, 8.25], "label": "b"}]',
            [(1, 2, 3, 4, "a"), (5.5, 6, 7, 8.25, "b")],
            id="bare-json-list",
        ),
        pytest.param(
            'The answer is {"bbox_2d": [10, 20, 30, 40], "label": "red car", "score": 0.9}.',
            [(10, 20, 30, 40, "red car")],
            id="single-dict-extra-keys",
        ),
        pytest.param(
            '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"label": "b", "bbox_2d": [5, 6, 7, 8]}, '
            '{"bbox_2d": [9, 10, 11',
            [(1, 2, 3, 4, "a"), (5, 6, 7, 8, "b")],
            id="truncated-json",
        ),
        pytest.param(
            "[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}, {'label': 'b', 'bbox_2d': [5, 6, 7, 8],}, "
            "{'bbox_2d': [9, 10, 11, 12]}]",
            [(1, 2, 3, 4, "a"), (5, 6, 7, 8, "b"), (9, 10, 11, 12, None)],
            id="invalid-json-regex-fallback",
        ),
        pytest.param(
            '{"objects": [{"bbox_2d": [[1, 2], [3, 4]], "label": "n"}]}',
            [(1, 2, 3, 4, "n")],
            id="nested-object-corner-pairs",
        ),
        pytest.param("The cat is at [12, 30, 200, 180].", [(12, 30, 200, 180, None)], id="plain-list"),
        pytest.param(
            "- cat: [12, 30, 200, 180]\n- dog: [1, 2, 3, 4]",
            [(12, 30, 200, 180, "cat"), (1, 2, 3, 4, "dog")],
            id="plain-list-labelled",
        ),
        pytest.param(
            "Here is a long sentence before it, the box of the big dog: [1, 2, 3, 4]\nfound it, cat=[5, 6, 7, 8]",
            [(1, 2, 3, 4, "of the big dog"), (5, 6, 7, 8, "cat")],
            id="plain-list-label-at-most-four-words",
        ),
        pytest.param(
            "cat: (12, 30), (200, 180)\ndog = (1,2) to (3,4)",
            [(12, 30, 200, 180, "cat"), (1, 2, 3, 4, "dog")],
            id="tuple-pairs",
        ),
        pytest.param(
            "<ref>cat</ref><box>(12,30),(200,180)</box> and <box>(1,2),(3,4)</box>",
            [(12, 30, 200, 180, "cat"), (1, 2, 3, 4, None)],
            id="box-tags",
        ),
        pytest.param(
            "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>",
            [(100, 200, 300, 400, "the dog")],
            id="qwen2-tags",
        ),
        pytest.param(
            '[{"bbox_2d": [300, 40, 250, 10], "label": "swapped"}]',
            [(250, 10, 300, 40, "swapped")],
            id="normalized-order",
        ),
    ],
)
def test_parse_formats(text, expected):
    assert as_tuples(parse_boxes(text)) == expected


def test_points_json_and_fallback():
    text = '```json\n[{"point_2d": [50, 60], "label": "eye"}, {"bbox_2d": [1, 2, 3, 4], "label": "face"}]\n```'
    boxes = parse_boxes(text)
    assert [(b.as_list(), b.label, b.is_point) for b in boxes] == [
        ([50, 60, 50, 60], "eye", True),
        ([1, 2, 3, 4], "face", False),
    ]
    assert boxes[0].as_dict() == {"point_2d": [50, 60], "label": "eye"}
    assert boxes[1].as_dict() == {"bbox_2d": [1, 2, 3, 4], "label": "face"}
    loose = parse_boxes("[{'point_2d': [7, 8], 'label': 'tip'}, {'point_2d': [9")
    assert [(b.as_list(), b.label, b.is_point) for b in loose] == [([7, 8, 7, 8], "tip", True)]


def test_drops_short_and_non_finite_entries():
    text = (
        '[{"bbox_2d": [1, 2, 3], "label": "short"}, {"bbox_2d": [NaN, 1, 2, 3]}, {"bbox_2d": [true, 1, 2, 3]}, '
        '{"point_2d": [5]}, {"bbox_2d": [1, 2, 3, 4], "label": "ok"}]'
    )
    assert as_tuples(parse_boxes(text)) == [(1, 2, 3, 4, "ok")]
    assert parse_boxes("[1, 2, 3] and [1, 2, 3, 4, 5]") == []  # a plain list must hold exactly four numbers


def test_json_is_not_read_twice_as_plain_lists():
    assert len(parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "a"}')) == 1


@pytest.mark.parametrize(
    "junk",
    ["", "no boxes here", "[1, 2] {oops", "[" * 5000, '{"a":' * 3000, "<box></box>", "(1, 2)", '{"bbox_2d": "x"}',
     None, 12, b"[1, 2, 3, 4]"],
)
def test_junk_gives_empty(junk):
    assert parse_boxes(junk) == []


def test_to_original_known_scale():
    # resized (h, w) = (280, 420) from (600, 900): both axes scale by 900/420 = 600/280 = 2.142857...
    [b] = to_original([Box(14, 28, 210, 140, "cat")], resized_size=(280, 420), original_size=(600, 900))
    assert 900 / 420 == pytest.approx(2.142857142857)
    assert b.as_list() == pytest.approx([30, 60, 450, 300])
    assert b.label == "cat"
    # Different scales per axis: x by 1000/420, y by 500/280.
    [b] = to_original([Box(42, 56, 84, 112)], (280, 420), (500, 1000))
    assert b.as_list() == pytest.approx([100, 100, 200, 200])


def test_to_original_with_smart_resize_and_clamp():
    h0, w0 = 600, 900
    rh, rw = smart_resize(h0, w0)
    assert (rh, rw) == (588, 896)
    full, outside, point = to_original(
        [Box(0, 0, rw, rh), Box(-10, -5, rw + 50, rh + 1, "big"), Box(rw + 9, 10, rw + 9, 10, is_point=True)],
        (rh, rw), (h0, w0),
    )
    assert full.as_list() == pytest.approx([0, 0, 900, 600])
    assert outside.as_list() == [0, 0, 900, 600]
    assert point.as_list() == pytest.approx([900, 10 * 600 / 588, 900, 10 * 600 / 588]) and point.is_point


@pytest.mark.parametrize("bad", [(0, 10), (10,), (-1, 5), ("a", 3), (math.inf, 4)])
def test_to_original_bad_sizes(bad):
    with pytest.raises(InputError, match="resized_size"):
        to_original([Box(0, 0, 1, 1)], bad, (10, 10))


def test_box_colours_by_label():
    boxes = [Box(0, 0, 1, 1, "cat"), Box(0, 0, 1, 1, "dog"), Box(0, 0, 1, 1, "cat"), Box(0, 0, 1, 1), Box(0, 0, 1, 1)]
    assert box_colours(boxes) == [PALETTE[0], PALETTE[1], PALETTE[0], PALETTE[2], PALETTE[3]]


def test_draw_boxes(tmp_path):
    image = Image.new("RGB", (120, 100), GREY)
    boxes = [Box(10, 30, 60, 80, "cat"), Box(70, 5, 119.6, 99.7, "dog"), Box(90, 50, 90, 50, is_point=True)]
    out_path = tmp_path / "out.png"
    out = draw_boxes(image, boxes, out_path, width=3)
    cat, dog, dot = PALETTE[0], PALETTE[1], PALETTE[2]
    assert out.size == (120, 100) and out.mode == "RGB"
    assert image.getpixel((10, 55)) == GREY  # the input is left alone
    assert [out.getpixel(p) for p in [(10, 55), (12, 55), (60, 55), (58, 55), (35, 80)]] == [cat] * 5  # edges
    assert out.getpixel((13, 55)) == GREY and out.getpixel((35, 55)) == GREY and out.getpixel((9, 55)) == GREY
    assert out.getpixel((10, 29)) == cat  # label background above the box
    assert out.getpixel((119, 60)) == dog and out.getpixel((100, 99)) == dog  # edges at the border stay visible
    assert out.getpixel((90, 50)) == dot
    assert out_path.exists()
    with Image.open(out_path) as saved:
        assert saved.convert("RGB").tobytes() == out.tobytes()


def test_draw_boxes_default_width_and_modes(tmp_path):
    out = draw_boxes(Image.new("L", (200, 160), 128), [Box(20, 40, 100, 120, "猫")])  # unknown glyphs: no error
    assert out.mode == "RGB"
    assert out.getpixel((20, 80)) == out.getpixel((21, 80)) == PALETTE[0]  # default width 2
    assert out.getpixel((22, 80)) == GREY
    with pytest.raises(InputError, match="xyz"):
        draw_boxes(Image.new("RGB", (8, 8)), [], tmp_path / "out.xyz")
    with pytest.raises(ImageError, match="PIL image"):
        draw_boxes("image.png", [])
