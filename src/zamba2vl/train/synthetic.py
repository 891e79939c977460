"""Deterministic synthetic vision-language tasks, to train a tiny demo model on a CPU and to evaluate it.

Each example is an RGB image, a question, a short answer and a JSON-ready ``meta`` dict, drawn from
``(seed, index)`` alone through ``np.random.default_rng([seed, task_id, index])``: examples can be made in any
order, in parallel or again later, and come out the same.

- ``counting``   1-9 non-overlapping shapes; count all of them, one shape, one colour, or one shape+colour.
- ``reading``    one common English word in Pillow's built-in scalable font on a contrasting background; with
                 ``reading_size`` on a canvas of its own, e.g. a 224x28 banner (session 13: in 112x112 images
                 letters of 5-14 pixels were too small for the nano model's 14-pixel patches).
- ``bar_chart``  3-6 bars of distinct colours; name the colour of the strictly (and visibly) largest one.
- ``grounding``  2-4 distinct coloured shapes; give the named one's box as Qwen2.5-VL JSON (or, with
                 ``grounding_format="box"``, as the bare ``[x1, y1, x2, y2]``: the same image, question and box).

Shapes and bars are rasterised with numpy at pixel centres, without anti-aliasing, so their pixels depend
only on numpy's PCG64 stream and are the same on every machine, and each drawn pixel has exactly its palette
colour. Text goes through FreeType, so ``reading`` pixels are the same for a given Pillow/FreeType build.
Compare ``image.tobytes()``, not PNG files: PNG bytes also depend on the zlib build.

Version 2 of the tasks (session 8): three shapes (circle, square, triangle; the task's minimum) instead of four
with a diamond, and objects of at least side/8 (counting; 14 pixels, one patch, at 112) and side/7 (grounding)
instead of side/14 and side/9, unless a layout only fits smaller. Shapes of 8 pixels inside 14-pixel patches
(at 112) were too small for the nano model's ViT to tell apart: it counted questions naming a shape at 16-21%.

Boxes are ``[x1, y1, x2, y2]`` in image pixels with ``x2``/``y2`` exclusive, tight around the drawn pixels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

TASKS = ("counting", "reading", "bar_chart", "grounding")
# Fixed ids rather than positions in TASKS, so adding a task never changes the streams of the others.
_TASK_IDS = {"counting": 1, "reading": 2, "bar_chart": 3, "grounding": 4}
_MIX_ID = 1000  # the stream that picks each example's task in `generate`

# Saturated colours, each with a channel <= 130: none can equal a light (>= 215) background or a grey line.
COLORS = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (245, 205, 20),
    "orange": (245, 130, 20), "purple": (130, 50, 180), "pink": (240, 110, 190), "brown": (130, 80, 30),
}
_COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle")
# Every (shape, colour) an object can have; an index into it names an object's kind in `object_annotation`.
KINDS = tuple((shape, color) for shape in SHAPES for color in _COLOR_NAMES)
# The reading task's words are lowercase a-z (assets/words.txt).
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
_MIN_SIZE = 56
_MIN_BANNER_SIDE = 28  # reading_size: a banner may be one merged token (28 pixels) high


@dataclass
class SyntheticExample:
    task: str
    image: Image.Image
    question: str
    answer: str
    meta: dict
    seed: int
    index: int

    @property
    def id(self) -> str:
        return f"{self.task}-{self.seed}-{self.index:07d}"


@lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
    """The reading task's vocabulary: common English words, lowercase, 3-10 letters (assets/words.txt)."""
    text = resources.files("zamba2vl").joinpath("assets/words.txt").read_text(encoding="utf-8")
    return tuple(text.split())


# ---------------------------------------------------------------------------------------------- drawing


def _image_size(image_size: int | Sequence[int], min_side: int = _MIN_SIZE) -> tuple[int, int]:
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(width, height) < min_side or width * height < _MIN_SIZE**2:
        raise ValueError(f"image size {image_size!r} is too small; use at least {min_side} pixels a side and "
                         f"{_MIN_SIZE}x{_MIN_SIZE} in all (a multiple of 28, e.g. 224, keeps boxes exact after the "
                         "image processor's resize)")
    return int(width), int(height)


def reading_canvas(size) -> tuple[int, int]:
    """A ``reading_size`` ([width, height] in pixels) checked as ``make_example`` draws it; ValueError if it is not
    one (what the train config and ``zamba2vl eval --synthetic-reading-size`` check their values with)."""
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2 \
            or not all(isinstance(v, int) for v in size):
        raise ValueError(f"reading size {size!r} is not [width, height] in whole pixels")
    return _image_size(size, _MIN_BANNER_SIDE)


def _light_background(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[int]]:
    """An (height, width, 3) uint8 canvas of one random light colour, and that colour."""
    background = [int(v) for v in rng.integers(215, 256, size=3)]
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = background
    return canvas, background


@lru_cache(maxsize=4096)
def _shape_mask(shape: str, side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(side, side) boolean mask of `shape` filling a side x side box, and the mask's tight box in it."""
    c = np.arange(side) + 0.5 - side / 2  # pixel centres relative to the box centre (exact in binary)
    x, y, r = c[None, :], c[:, None], side / 2
    if shape == "circle":
        mask = x * x + y * y <= r * r
    elif shape == "square":
        mask = np.ones((side, side), bool)
    elif shape == "triangle":  # apex at the top centre, base along the bottom edge
        mask = 2 * np.abs(x) <= y + r
    elif shape == "diamond":
        mask = np.abs(x) + np.abs(y) <= r
    else:
        raise AssertionError(shape)
    mask = np.broadcast_to(mask, (side, side))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return mask, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _place(rng: np.random.Generator, n: int, width: int, height: int, lo: int, hi: int,
           gap: int = 4, margin: int = 2) -> list[tuple[int, int, int]]:
    """`n` square boxes (x, y, side), at least `gap` pixels apart; shrinks the sizes until a layout fits."""
    while True:
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            for _ in range(64):
                s = int(rng.integers(lo, hi + 1))
                x = int(rng.integers(margin, width - margin - s + 1))
                y = int(rng.integers(margin, height - margin - s + 1))
                if all(x + s + gap <= bx or bx + bs + gap <= x or y + s + gap <= by or by + bs + gap <= y
                       for bx, by, bs in boxes):
                    boxes.append((x, y, s))
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
        lo, hi = max(4, lo * 4 // 5), max(4, hi * 4 // 5)


def _draw_objects(canvas: np.ndarray, kinds: Sequence[tuple[str, str]],
                  boxes: Sequence[tuple[int, int, int]]) -> list[dict]:
    """Paint each (shape, colour) into its box; returns one meta dict per object with its tight box."""
    objects = []
    for (shape, color), (x, y, s) in zip(kinds, boxes):
        mask, (x1, y1, x2, y2) = _shape_mask(shape, s)
        canvas[y:y + s, x:x + s][mask] = COLORS[color]
        objects.append({"shape": shape, "color": color, "box": [x + x1, y + y1, x + x2, y + y2]})
    return objects


def _random_kind(rng: np.random.Generator) -> tuple[str, str]:
    return SHAPES[rng.integers(len(SHAPES))], _COLOR_NAMES[rng.integers(len(_COLOR_NAMES))]


# ---------------------------------------------------------------------------------------------- tasks


def _counting(rng: np.random.Generator, width: int, height: int):
    query = ("all", "shape", "color", "shape_color")[rng.integers(4)]
    shape = SHAPES[rng.integers(len(SHAPES))] if "shape" in query else None
    color = _COLOR_NAMES[rng.integers(len(_COLOR_NAMES))] if "color" in query else None
    # Draw the answer first so that every answer is equally likely: 1-9 for "all", 0-9 otherwise.
    if query == "all":
        count = n = int(rng.integers(1, 10))
    else:
        count = int(rng.integers(0, 10))
        n = int(rng.integers(max(count, 1), 10))

    def matches(kind: tuple[str, str]) -> bool:
        return shape in (None, kind[0]) and color in (None, kind[1])

    kinds = []
    for i in range(n):
        kind = _random_kind(rng)
        if i < count:
            kind = (shape or kind[0], color or kind[1])
        while i >= count and matches(kind):
            kind = _random_kind(rng)
        kinds.append(kind)
    kinds = [kinds[i] for i in rng.permutation(n)]  # later placements run smaller; don't favour a kind

    canvas, background = _light_background(rng, width, height)
    side = min(width, height)
    objects = _draw_objects(canvas, kinds, _place(rng, n, width, height, side // 8, side // 5))
    if query == "all":
        question = "How many shapes are in the image?"
    else:
        noun = " ".join(part for part in (color, f"{shape or 'shape'}s") if part)
        question = f"How many {noun} are there?"
    meta = {"query": {"shape": shape, "color": color}, "count": count, "objects": objects,
            "background": background}
    return canvas, question, str(count), meta


def _grounding(rng: np.random.Generator, width: int, height: int):
    n = int(rng.integers(2, 5))
    target = _random_kind(rng)
    kinds = [target]
    while len(kinds) < n:  # distractors often share the target's shape or colour
        shape, color = _random_kind(rng)
        share = int(rng.integers(3))
        kind = (target[0] if share == 0 else shape, target[1] if share == 1 else color)
        if kind not in kinds:
            kinds.append(kind)
    t = int(rng.integers(n))
    kinds[0], kinds[t] = kinds[t], kinds[0]

    canvas, background = _light_background(rng, width, height)
    side = min(width, height)
    objects = _draw_objects(canvas, kinds, _place(rng, n, width, height, side // 7, side // 4))
    label = f"{target[1]} {target[0]}"
    box = objects[t]["box"]
    question = f"Where is the {label}? Answer with a bounding box."
    answer = json.dumps([{"bbox_2d": box, "label": label}])
    meta = {"label": label, "box": box, "target": t, "objects": objects, "background": background}
    return canvas, question, answer, meta


_GRID, _AXIS = (190, 190, 190), (70, 70, 70)


def _bar_chart(rng: np.random.Generator, width: int, height: int):
    n = int(rng.integers(3, 7))
    colors = [_COLOR_NAMES[i] for i in rng.permutation(len(_COLOR_NAMES))[:n]]
    left, right, top, bottom = width // 10, width - width // 20, height // 10, height - height // 10
    plot_h = bottom - top
    largest = int(rng.integers(n))
    tallest = int(rng.integers(plot_h * 6 // 10, plot_h + 1))
    # Every other bar is at most 85% of the tallest: a gap of >= 9% of the plot height, plain to see.
    heights = [tallest if i == largest else int(rng.integers(plot_h // 10, tallest * 85 // 100 + 1))
               for i in range(n)]

    canvas, background = _light_background(rng, width, height)
    for k in range(1, 5):
        canvas[bottom - plot_h * k // 4, left:right] = _GRID
    slot = (right - left) // n
    bar_w = max(2, slot * int(rng.integers(50, 81)) // 100)
    bars = []
    for i, (color, h) in enumerate(zip(colors, heights)):
        x = left + i * slot + (slot - bar_w) // 2
        canvas[bottom - h:bottom, x:x + bar_w] = COLORS[color]
        bars.append([x, bottom - h, x + bar_w, bottom])
    canvas[top:bottom + 1, left - 1] = _AXIS
    canvas[bottom, left - 1:right] = _AXIS
    meta = {"colors": colors, "heights": heights, "largest": largest, "boxes": bars,
            "background": background}
    return canvas, "What colour is the largest bar?", colors[largest], meta


@lru_cache(maxsize=256)
def _font(size: int) -> ImageFont.FreeTypeFont:
    if not features.check("freetype2"):
        raise RuntimeError("the reading task renders text with Pillow's built-in scalable font, which needs "
                           "Pillow built with FreeType; install the Pillow wheel from PyPI, which bundles it")
    try:
        return ImageFont.load_default(size=size)  # Aileron Regular, embedded in Pillow; no files, no network
    except TypeError as e:
        raise RuntimeError("the reading task needs Pillow >= 10.1 for ImageFont.load_default(size=...)") from e


def _luma(rgb) -> int:  # x1000, integer so the contrast test is exact everywhere
    return 299 * int(rgb[0]) + 587 * int(rgb[1]) + 114 * int(rgb[2])


def _reading(rng: np.random.Generator, width: int, height: int):
    vocab = words()
    word = vocab[rng.integers(len(vocab))]
    bg = rng.integers(0, 256, size=3)
    for _ in range(32):
        fg = rng.integers(0, 256, size=3)
        if abs(_luma(fg) - _luma(bg)) >= 110_000:
            break
    else:
        fg = np.zeros(3, np.int64) if _luma(bg) >= 127_500 else np.full(3, 255)

    margin = max(2, min(width, height) // 28)
    if width >= 4 * height:  # a banner (e.g. reading_size (224, 28)): the word fills 65-95% of its height
        size = int(rng.integers(max(10, round(0.65 * height)), max(11, round(0.95 * height)) + 1))
    else:
        size = int(rng.integers(max(10, height // 9), max(11, height // 4) + 1))
    left, top, right, bottom = _font(size).getbbox(word)
    while right - left > width - 2 * margin or bottom - top > height - 2 * margin:
        size -= max(1, size // 10)
        left, top, right, bottom = _font(size).getbbox(word)
    text_w, text_h = right - left, bottom - top
    x = int(rng.integers(margin, width - margin - text_w + 1))
    y = int(rng.integers(margin, height - margin - text_h + 1))

    image = Image.new("RGB", (width, height), tuple(int(v) for v in bg))
    ImageDraw.Draw(image).text((x - left, y - top), word, fill=tuple(int(v) for v in fg), font=_font(size))
    meta = {"word": word, "font_size": size, "box": [x, y, x + text_w, y + text_h],
            "color": [int(v) for v in fg], "background": [int(v) for v in bg]}
    return image, "What word is written in the image?", word, meta


_MAKERS = {"counting": _counting, "reading": _reading, "bar_chart": _bar_chart, "grounding": _grounding}


GROUNDING_FORMATS = ("json", "box")


def letter_boxes(word: str, font_size: int, box: Sequence[int]) -> list[list[float]]:
    """Each letter's box in a reading image whose word's tight box is ``box`` (``meta["box"]``): the glyph's own
    box, moved by the advance of the letters before it (kerning, if the font has any, is ignored)."""
    font = _font(font_size)
    left, top = font.getbbox(word)[:2]
    ox, oy = box[0] - left, box[1] - top  # where the text was drawn from
    out = []
    for i, ch in enumerate(word):
        advance = font.getlength(word[:i])
        l, t, r, b = font.getbbox(ch)
        out.append([ox + advance + l, oy + t, ox + advance + r, oy + b])
    return out


def object_annotation(example: SyntheticExample, letters: bool = False) -> dict | None:
    """The objects drawn in a counting or grounding image as ``{"size": [w, h], "kinds": [index into KINDS],
    "boxes": [[x1, y1, x2, y2]]}`` (what ``train/objects.py`` trains on); with ``letters``, a reading image's
    letters too, as kinds ``len(KINDS) + index into LETTERS``; None for the other tasks. Counting and grounding
    annotations also say which objects the question asks about (``"match"``: 1 for each counted object, or for
    grounding's target; 0 for the others), for the ``match`` objective."""
    size = list(example.image.size)
    if example.task in ("counting", "grounding"):
        objects = example.meta["objects"]
        if example.task == "grounding":
            match = [int(i == example.meta["target"]) for i in range(len(objects))]
        else:
            q = example.meta["query"]
            match = [int(q["shape"] in (None, o["shape"]) and q["color"] in (None, o["color"])) for o in objects]
        return {"size": size, "kinds": [KINDS.index((o["shape"], o["color"])) for o in objects],
                "boxes": [list(o["box"]) for o in objects], "match": match}
    if example.task == "reading" and letters:
        word = example.meta["word"]
        return {"size": size, "kinds": [len(KINDS) + LETTERS.index(ch) for ch in word],
                "boxes": letter_boxes(word, example.meta["font_size"], example.meta["box"])}
    return None


def make_example(task: str, seed: int, index: int, image_size: int | tuple[int, int] = 224,
                 grounding_format: str = "json",
                 reading_size: int | Sequence[int] | None = None) -> SyntheticExample:
    """Example `index` of `task` under `seed`. `image_size` is a side or (width, height); `reading_size`, if
    given, is the reading task's instead (e.g. (224, 28): a one-row banner whose letters span a 14-pixel patch).

    `grounding_format` "box" answers grounding with the bare box ``[x1, y1, x2, y2]`` instead of Qwen2.5-VL's
    JSON list: 4x fewer answer characters to learn, which matters to a model trained from scratch."""
    if grounding_format not in GROUNDING_FORMATS:
        raise ValueError(f"unknown grounding_format {grounding_format!r}; choose from {GROUNDING_FORMATS}")
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if task == "reading" and reading_size:
        width, height = _image_size(reading_size, _MIN_BANNER_SIDE)  # (an int: a square)
    else:
        width, height = _image_size(image_size)
    rng = np.random.default_rng([seed, _TASK_IDS[task], index])
    image, question, answer, meta = _MAKERS[task](rng, width, height)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if task == "grounding" and grounding_format == "box":
        answer = "[" + ", ".join(str(v) for v in meta["box"]) + "]"
    return SyntheticExample(task, image, question, answer, meta, seed, index)


def generate(tasks: Sequence[str] = TASKS, n: int = 1000, seed: int = 0, image_size: int | tuple[int, int] = 224,
             weights: Sequence[float] | None = None, start: int = 0,
             grounding_format: str = "json",
             reading_size: int | Sequence[int] | None = None) -> Iterator[SyntheticExample]:
    """Examples `start .. start+n-1` of a mixture of `tasks`; each index's task is drawn with `weights`.

    Use different seeds for training and evaluation sets: within a seed, index i of a task is always the same.
    """
    tasks = tuple(tasks)
    for task in tasks:
        if task not in _MAKERS:
            raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    w = np.ones(len(tasks)) if weights is None else np.asarray(weights, float)
    if len(tasks) == 0 or w.shape != (len(tasks),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need at least one task and one non-negative weight per task (total > 0); "
                         f"got tasks={tasks}, weights={weights}")
    cdf = np.cumsum(w) / w.sum()
    for index in range(start, start + n):
        u = np.random.default_rng([seed, _MIX_ID, index]).random()
        task = tasks[min(int(np.searchsorted(cdf, u, side="right")), len(tasks) - 1)]
        yield make_example(task, seed, index, image_size, grounding_format, reading_size)


# ---------------------------------------------------------------------------------------------- files


def to_jsonl(examples: Iterable[SyntheticExample], out_dir: str | Path, name: str = "data.jsonl") -> Path:
    """Write `out_dir/name` (one LLaVA-style chat record per line) and `out_dir/images/<id>.png`."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(out / name, "w", encoding="utf-8") as f:
        for ex in examples:
            image_path = f"images/{ex.id}.png"
            ex.image.save(out / image_path)
            record = {
                "id": ex.id,
                "messages": [
                    {"role": "user", "content": [{"type": "image", "image": image_path},
                                                 {"type": "text", "text": ex.question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": ex.answer}]},
                ],
                "task": ex.task, "seed": ex.seed, "index": ex.index, "meta": ex.meta,
            }
            f.write(json.dumps(record) + "\n")
    return out / name


def read_jsonl(path: str | Path) -> Iterator[SyntheticExample]:
    """Read back what `to_jsonl` wrote (image paths are relative to the JSONL file's folder)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            user, assistant = record["messages"]
            image_path = next(c["image"] for c in user["content"] if c["type"] == "image")
            question = next(c["text"] for c in user["content"] if c["type"] == "text")
            with Image.open(path.parent / image_path) as im:
                image = im.convert("RGB")
            yield SyntheticExample(record["task"], image, question, assistant["content"][0]["text"],
                                   record["meta"], record["seed"], record["index"])


# ---------------------------------------------------------------------------------------------- scoring

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b")


def _first_number(text: str) -> float | None:
    """The first number in `text`, written in digits or as an English word up to ten."""
    m = _NUMBER_RE.search(text.lower())
    if m is None:
        return None
    token = m.group()
    return float(_NUMBER_WORDS.index(token)) if token in _NUMBER_WORDS else float(token)


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", "", text.lower()).split())


def parse_box(text: str) -> list[float] | None:
    """The box in a prediction: the numbers after "bbox_2d" (Qwen2.5-VL JSON), else the first four numbers."""
    at = text.find("bbox_2d")
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text[at + len("bbox_2d"):] if at >= 0 else text)
    return [float(v) for v in numbers[:4]] if len(numbers) >= 4 else None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes; 0 when either is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def score(task: str, prediction: str, example: SyntheticExample) -> float:
    """1.0 if `prediction` answers `example` correctly, else 0.0.

    counting: the first number (digits, or a word up to "ten") equals the count. reading: equal to the word
    ignoring case, punctuation and surrounding space. bar_chart: names the right colour and no other palette
    colour. grounding: the box (JSON "bbox_2d" or four plain numbers) has IoU > 0.5 with the true box.
    """
    assert task == example.task, (task, example.task)
    if task == "counting":
        return float(_first_number(prediction) == float(example.answer))
    if task == "reading":
        return float(_normalize(prediction) == example.answer)
    if task == "bar_chart":
        named = {w for w in _normalize(prediction).split() if w in COLORS}
        return float(named == {example.answer})
    if task == "grounding":
        box = parse_box(prediction)
        return float(box is not None and box_iou(box, example.meta["box"]) > 0.5)
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
