import hashlib
import json
import re
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from zamba2vl.train import synthetic
from zamba2vl.train.synthetic import (
    COLORS, SHAPES, TASKS, SyntheticExample, box_iou, generate, make_example, parse_box, read_jsonl, score,
    to_jsonl, words,
)

N = 100  # examples per task in the constraint tests; ~1 ms each


def pixels(ex: SyntheticExample) -> np.ndarray:
    return np.asarray(ex.image).astype(np.int64)


def apart(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def colour_box(img: np.ndarray, rgb, box) -> list[int]:
    """Tight box of the pixels of colour `rgb` inside `box`."""
    x1, y1, x2, y2 = box
    ys, xs = np.nonzero((img[y1:y2, x1:x2] == rgb).all(-1))
    return [x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1]


def check_objects(img: np.ndarray, objects, background):
    """Objects sit apart, each box is exactly its colour's pixels, and everything else is background."""
    for a, b in combinations(objects, 2):
        assert apart(a["box"], b["box"])
    covered = np.zeros(img.shape[:2], bool)
    for obj in objects:
        assert obj["shape"] in SHAPES and obj["color"] in COLORS
        assert colour_box(img, COLORS[obj["color"]], obj["box"]) == obj["box"]
        x1, y1, x2, y2 = obj["box"]
        inside = img[y1:y2, x1:x2]
        is_colour, is_bg = (inside == COLORS[obj["color"]]).all(-1), (inside == background).all(-1)
        assert (is_colour | is_bg).all()
        covered[y1:y2, x1:x2] = True
    assert (img[~covered] == background).all()


def test_word_list():
    vocab = words()
    assert len(vocab) >= 1000
    assert len(set(vocab)) == len(vocab)
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in vocab)
    assert {"apple", "house", "water", "window"} <= set(vocab)


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_and_index_give_the_same_example(task):
    a, b = make_example(task, 7, 123), make_example(task, 7, 123)
    assert a.image.mode == "RGB" and a.image.size == (224, 224)
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.question, a.answer, a.meta, a.id) == (b.question, b.answer, b.meta, f"{task}-7-0000123")
    assert make_example(task, 8, 123).image.tobytes() != a.image.tobytes()
    assert make_example(task, 7, 124).image.tobytes() != a.image.tobytes()


# Shapes and bars depend on numpy's PCG64 stream alone; a change here means old datasets can't be regenerated.
# (Changed once, on purpose, in version 2 of the tasks: three shapes and objects of at least side/8; see synthetic.py.)
GOLDEN = {
    "counting": ("00f2670167e3a7e12475d1ab306c2280f1d49d63b27eba254ec9425d2c189bf6",
                 "How many brown shapes are there?", "9"),
    "bar_chart": ("c1c4beaec161f781aef67e139fc33085230c67532510ffd3844c91abe7a4c871",
                  "What colour is the largest bar?", "red"),
    "grounding": ("fa2db4db25cd5cf29a22905c9d2701e9befd55414fd3bd2188834e0d38697087",
                  "Where is the yellow triangle? Answer with a bounding box.",
                  '[{"bbox_2d": [7, 108, 55, 155], "label": "yellow triangle"}]'),
}


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_golden_pixels(task):
    ex = make_example(task, 0, 0)
    assert (hashlib.sha256(ex.image.tobytes()).hexdigest(), ex.question, ex.answer) == GOLDEN[task]


def test_golden_reading_text():
    # The word and colours come from numpy; the glyph pixels depend on the FreeType build, so are not pinned.
    ex = make_example("reading", 0, 0)
    assert (ex.question, ex.answer) == ("What word is written in the image?", "window")


def test_counting():
    answers, queries, shapes, colours = set(), set(), set(), set()
    for i in range(N):
        ex = make_example("counting", 3, i)
        objects, query = ex.meta["objects"], ex.meta["query"]
        assert 1 <= len(objects) <= 9
        matching = [o for o in objects
                    if query["shape"] in (None, o["shape"]) and query["color"] in (None, o["color"])]
        assert ex.answer == str(ex.meta["count"]) == str(len(matching))
        if query["shape"] is None and query["color"] is None:
            assert ex.question == "How many shapes are in the image?" and ex.answer != "0"
        if query["shape"] and query["color"]:
            assert ex.question == f"How many {query['color']} {query['shape']}s are there?"
        check_objects(pixels(ex), objects, ex.meta["background"])
        # At least a 14-pixel patch wide at 112 (side/8; a triangle's apex row is empty, hence the -1).
        assert min(min(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objects) >= 224 // 8 - 1
        answers.add(int(ex.answer))
        queries.add((query["shape"] is not None, query["color"] is not None))
        shapes |= {o["shape"] for o in objects}
        colours |= {o["color"] for o in objects}
    assert answers == set(range(10))
    assert len(queries) == 4 and shapes == set(SHAPES) and colours == set(COLORS)


def test_grounding():
    for i in range(N):
        ex = make_example("grounding", 3, i)
        objects, box = ex.meta["objects"], ex.meta["box"]
        assert 2 <= len(objects) <= 4
        assert len({(o["shape"], o["color"]) for o in objects}) == len(objects)
        target = objects[ex.meta["target"]]
        label = f"{target['color']} {target['shape']}"
        assert ex.meta["label"] == label and target["box"] == box
        assert ex.question == f"Where is the {label}? Answer with a bounding box."
        assert json.loads(ex.answer) == [{"bbox_2d": box, "label": label}]
        assert all(isinstance(v, int) for v in box) and 0 <= box[0] < box[2] <= 224 and 0 <= box[1] < box[3] <= 224
        check_objects(pixels(ex), objects, ex.meta["background"])
        assert min(min(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) for o in objects) >= 224 // 7 - 1
        assert score("grounding", ex.answer, ex) == 1.0


def test_grounding_box_format_changes_only_the_answer():
    for i in range(20):
        ex, bare = make_example("grounding", 3, i), make_example("grounding", 3, i, grounding_format="box")
        x1, y1, x2, y2 = ex.meta["box"]
        assert bare.answer == f"[{x1}, {y1}, {x2}, {y2}]"
        assert (bare.question, bare.meta) == (ex.question, ex.meta)
        assert bare.image.tobytes() == ex.image.tobytes()
        assert score("grounding", bare.answer, ex) == 1.0
    other = make_example("counting", 3, 0, grounding_format="box")  # other tasks: unchanged
    assert other.answer == make_example("counting", 3, 0).answer
    with pytest.raises(ValueError, match="grounding_format 'xml'.*json.*box"):
        make_example("grounding", 3, 0, grounding_format="xml")


def test_bar_chart():
    sizes = set()
    for i in range(N):
        ex = make_example("bar_chart", 3, i)
        colours, heights, largest = ex.meta["colors"], ex.meta["heights"], ex.meta["largest"]
        sizes.add(len(colours))
        assert 3 <= len(colours) <= 6 and len(set(colours)) == len(colours)
        assert ex.answer == colours[largest]
        assert all(heights[largest] * 0.85 >= h for j, h in enumerate(heights) if j != largest)
        img = pixels(ex)
        for colour, h, (x1, y1, x2, y2) in zip(colours, heights, ex.meta["boxes"]):
            ys, xs = np.nonzero((img == COLORS[colour]).all(-1))
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [x1, y1, x2, y2] and y2 - y1 == h
            assert len(xs) == (x2 - x1) * (y2 - y1)  # a solid bar
        tops = [b[1] for b in ex.meta["boxes"]]
        assert tops.index(min(tops)) == largest and tops.count(min(tops)) == 1
    assert sizes == {3, 4, 5, 6}


def test_reading():
    vocab = set(words())
    for i in range(N):
        ex = make_example("reading", 3, i)
        assert ex.answer == ex.meta["word"] and ex.answer in vocab
        img, bg, fg = pixels(ex), ex.meta["background"], ex.meta["color"]
        luma = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
        assert abs(luma(fg) - luma(bg)) >= 110
        ys, xs = np.nonzero((img != bg).any(-1))
        x1, y1, x2, y2 = ex.meta["box"]
        # Ink inside the box; the box adds at most the glyphs' side bearings.
        assert x1 <= xs.min() <= x1 + 4 and x2 - 4 <= xs.max() + 1 <= x2
        assert y1 <= ys.min() <= y1 + 4 and y2 - 4 <= ys.max() + 1 <= y2
        assert (img == fg).all(-1).sum() > 20  # solid strokes in the text colour, not just anti-aliasing


def test_other_image_sizes():
    for task in TASKS:
        ex = make_example(task, 1, 5, image_size=(280, 168))
        assert ex.image.size == (280, 168)
        for obj in ex.meta.get("objects", []):
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= 280 and 0 <= y1 < y2 <= 168
    ex = make_example("counting", 0, 3, image_size=56)  # nine shapes still fit at the smallest size
    assert ex.image.size == (56, 56)
    check_objects(pixels(ex), ex.meta["objects"], ex.meta["background"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        make_example("ocr", 0, 0)
    with pytest.raises(ValueError, match="too small"):
        make_example("counting", 0, 0, image_size=32)
    with pytest.raises(ValueError, match=">= 0"):
        make_example("counting", -1, 0)
    with pytest.raises(ValueError, match="weight"):
        next(generate(("counting", "reading"), 1, weights=[1.0]))


def test_reading_without_freetype_fails_clearly(monkeypatch):
    monkeypatch.setattr(synthetic.features, "check", lambda name: False)
    synthetic._font.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="FreeType"):
            make_example("reading", 0, 0)
    finally:
        synthetic._font.cache_clear()


def test_generate_mixture():
    examples = list(generate(TASKS, 40, seed=5, image_size=112, weights=[3, 1, 1, 1]))
    again = list(generate(TASKS, 10, seed=5, image_size=112, weights=[3, 1, 1, 1], start=30))
    assert [ex.index for ex in examples] == list(range(40))
    assert [(e.task, e.answer) for e in examples[30:]] == [(e.task, e.answer) for e in again]
    counts = {t: sum(ex.task == t for ex in examples) for t in TASKS}
    assert counts == {"counting": 20, "reading": 6, "bar_chart": 9, "grounding": 5}
    ex = examples[11]
    assert ex.image.tobytes() == make_example(ex.task, 5, 11, image_size=112).image.tobytes()
    assert {ex.task for ex in generate(TASKS, 20, seed=5, weights=[0, 0, 1, 0])} == {"bar_chart"}


def test_jsonl_round_trip(tmp_path):
    examples = [make_example(task, 2, i) for i, task in enumerate(TASKS)]
    path = to_jsonl(examples, tmp_path)
    assert path == tmp_path / "data.jsonl"
    record = json.loads(path.read_text().splitlines()[1])
    assert record["id"] == "reading-2-0000001" and record["task"] == "reading"
    assert record["messages"] == [
        {"role": "user", "content": [{"type": "image", "image": "images/reading-2-0000001.png"},
                                     {"type": "text", "text": "What word is written in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": examples[1].answer}]},
    ]
    assert Image.open(tmp_path / "images/reading-2-0000001.png").size == (224, 224)
    back = list(read_jsonl(path))
    assert len(back) == 4
    for a, b in zip(examples, back):
        assert (a.task, a.question, a.answer, a.meta, a.seed, a.index) == (b.task, b.question, b.answer, b.meta,
                                                                          b.seed, b.index)
        assert a.image.tobytes() == b.image.tobytes()


def example(task, answer, **meta):
    return SyntheticExample(task, Image.new("RGB", (8, 8)), "", answer, meta, 0, 0)


def test_score_counting():
    ex = example("counting", "3")
    # The first number counts, in digits or as a word up to "ten"; "none" / "no" are not read as 0.
    right = ("3", "There are 3 shapes.", " 3\n", "three", "Three.", "3.0", "I see three-ish")
    wrong = ("13", "3.5", "4", "2 or 3", "", "someone", "one, two, three")
    assert [score("counting", p, ex) for p in right] == [1.0] * len(right)
    assert [score("counting", p, ex) for p in wrong] == [0.0] * len(wrong)
    assert score("counting", "none", example("counting", "0")) == 0.0
    assert score("counting", "0", example("counting", "0")) == 1.0


def test_score_reading():
    ex = example("reading", "apple")
    assert [score("reading", p, ex) for p in ("apple", "Apple.", '  "APPLE"\n', "apple!")] == [1.0] * 4
    assert [score("reading", p, ex) for p in ("apples", "the word is apple", "aple", "")] == [0.0] * 4


def test_score_bar_chart():
    ex = example("bar_chart", "red")
    assert [score("bar_chart", p, ex) for p in ("red", "Red.", "The largest bar is red.")] == [1.0] * 3
    assert [score("bar_chart", p, ex) for p in ("blue", "red or blue", "reddish", "")] == [0.0] * 4


def test_score_grounding_and_iou():
    box = [10, 20, 50, 60]
    ex = example("grounding", "", box=box)
    assert score("grounding", '[{"bbox_2d": [10, 20, 50, 60], "label": "red circle"}]', ex) == 1.0
    assert score("grounding", '```json\n[{"label": "red circle 2", "bbox_2d": [12, 22, 52, 62]}]\n```', ex) == 1.0
    assert score("grounding", "[10, 20, 50, 60]", ex) == 1.0
    assert score("grounding", "(30, 20, 70, 60)", ex) == 0.0  # IoU 1/3
    assert score("grounding", "[10, 20, 50]", ex) == 0.0
    assert score("grounding", "somewhere on the left", ex) == 0.0
    assert parse_box('{"bbox_2d": [1.5, 2, 3, 4]}') == [1.5, 2.0, 3.0, 4.0]
    assert box_iou(box, box) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    assert box_iou([5, 5, 0, 0], [0, 0, 10, 10]) == 0.0  # a reversed box is empty



def test_reading_banner():
    """reading_size gives the reading task its own canvas; a banner (width >= 4 x height) draws the word at
    65-95% of its height (shrunk to fit), so letters span a patch; the other tasks keep image_size."""
    vocab, sizes = set(words()), set()
    for i in range(N):
        ex = make_example("reading", 3, i, image_size=112, reading_size=(224, 28))
        assert ex.image.size == (224, 28) and ex.answer == ex.meta["word"] in vocab
        x1, y1, x2, y2 = ex.meta["box"]
        assert 2 <= x1 < x2 <= 222 and 2 <= y1 < y2 <= 26  # inside the 2-pixel margin
        img, bg = pixels(ex), ex.meta["background"]
        ys, xs = np.nonzero((img != bg).any(-1))
        assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2
        assert 10 <= ex.meta["font_size"] <= 27
        sizes.add(ex.meta["font_size"])
    assert len(sizes) >= 5 and max(sizes) >= 22  # random sizes, mostly large
    # The same (seed, index) draws the same word at either size: only the canvas differs.
    assert make_example("reading", 3, 0, reading_size=(224, 28)).answer == make_example("reading", 3, 0).answer
    ex = make_example("counting", 3, 0, image_size=112, reading_size=(224, 28))
    assert ex.image.size == (112, 112)
    mixed = list(generate(TASKS, 40, seed=2, image_size=112, reading_size=(224, 28)))
    assert {e.image.size for e in mixed if e.task == "reading"} == {(224, 28)}
    assert {e.image.size for e in mixed if e.task != "reading"} == {(112, 112)}
    with pytest.raises(ValueError, match="too small"):
        make_example("reading", 0, 0, reading_size=(224, 14))
    with pytest.raises(ValueError, match="too small"):
        make_example("reading", 0, 0, reading_size=(56, 28))
