"""Grounding: read the boxes and points a model writes, map them to the original image, and draw them.

Qwen2.5-VL, whose vision tower and processor Zamba2-VL reuses, grounds in absolute pixel coordinates of the
*resized* image the model saw (``smart_resize``: sides that are multiples of 28), usually as JSON in a fenced
block::

    ```json
    [{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, {"point_2d": [x, y], "label": "dog"}]
    ```

``parse_boxes`` reads three kinds of notation, in this order, and stops at the first kind that gives anything,
so that the list inside a ``bbox_2d`` is not read again as a plain list:

1. Keyed entries (``bbox_2d``, ``bbox``, ``box``; ``point_2d``, ``point``) in every JSON value of the text,
   fenced or not: a list, a single object, or nested objects. Text that is not valid JSON (truncated output,
   single quotes, trailing commas) is searched for the same keys with a regex, and each match takes the
   ``label`` of its own object.
2. Tags: ``<ref>cat</ref><box>(x1,y1),(x2,y2)</box>`` (Qwen-VL) and
   ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (Qwen2-VL).
3. Plain lists ``[x1, y1, x2, y2]`` (exactly four numbers) and corner pairs ``(x1, y1), (x2, y2)``. A
   ``label:`` written just before one on the same line becomes its label.

Coordinates come back as written. The tag notations of Qwen-VL and Qwen2-VL use a 0-1000 grid instead of
pixels; map those with ``to_original(boxes, (1000, 1000), original_size)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from zamba2vl.errors import ImageError, InputError

__all__ = ["Box", "draw_boxes", "parse_boxes", "to_original"]

_BOX_KEYS = ("bbox_2d", "bbox", "box")
_POINT_KEYS = ("point_2d", "point")
_LABEL_KEYS = ("label", "category", "name")

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(_NUM)
_OPENING = re.compile(r'\{(?=\s*")|\[(?=\s*\{\s*")')  # where a JSON value holding keyed objects can start
# A keyed entry: the key, then a list that may hold one level of nested lists ([[x1, y1], [x2, y2]]).
_KEYED = re.compile(r"""["']?\b(bbox_2d|bbox|box|point_2d|point)\b["']?\s*:\s*\[((?:[^\[\]]|\[[^\[\]]*\])*)\]""")
_LABEL = re.compile(r"""["']?\b(?:label|category|name)\b["']?\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""")
_TAGS = (
    re.compile(r"(?:<ref>([^<]*)</ref>\s*)?<box>([^<]*)</box>"),
    re.compile(r"(?:<\|object_ref_start\|>([^<]*)<\|object_ref_end\|>\s*)?<\|box_start\|>([^<]*)<\|box_end\|>"),
)
_PLAIN = (
    re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"),
    re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*(?:,|-|to|and)?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"),
)
_LABEL_BEFORE = re.compile(r"""(?<![\w\-])["']?([A-Za-z][\w\-]*(?: [\w\-]+){0,3})["']?\s*[:=]\s*$""")  # 1-4 words

# Colours far apart from each other (after Sasha Trubetskoy's list of distinct colours).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (0, 0, 128),
)


@dataclass
class Box:
    """A box (or, with ``is_point``, a point at (x1, y1) = (x2, y2)), with x1 <= x2 and y1 <= y2."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None
    image_index: int = 0
    is_point: bool = False

    def as_list(self) -> list[float]:
        """``[x1, y1, x2, y2]``, for points too."""
        return [self.x1, self.y1, self.x2, self.y2]

    def as_dict(self) -> dict[str, Any]:
        """The Qwen2.5-VL JSON form: ``{"bbox_2d": [...], "label": ...}`` or ``{"point_2d": [x, y], ...}``."""
        d: dict[str, Any] = {"point_2d": [self.x1, self.y1]} if self.is_point else {"bbox_2d": self.as_list()}
        if self.label is not None:
            d["label"] = self.label
        return d


def _make(numbers: Sequence[float], label: str | None, is_point: bool) -> Box | None:
    """A normalized box from the first 4 numbers (first 2 for a point); None if too few or not finite."""
    need = 2 if is_point else 4
    if len(numbers) < need or not all(math.isfinite(v) for v in numbers[:need]):
        return None
    if is_point:
        x, y = numbers[0], numbers[1]
        return Box(x, y, x, y, label, is_point=True)
    x1, y1, x2, y2 = numbers[:4]
    return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2), label)


def _clean_label(label: Any) -> str | None:
    if label is None or isinstance(label, (dict, list)):
        return None
    label = str(label).strip()
    return label or None


# ---- 1. keyed entries: JSON values, then a regex over the text that is not valid JSON ----


def _json_numbers(value: Any) -> list[float] | None:
    """The numbers of a JSON coordinate list, one level of nesting flattened; None if anything is not a number."""
    if isinstance(value, str):
        return [float(v) for v in _NUMBER.findall(value)]
    if not isinstance(value, list):
        return None
    flat = [v for item in value for v in (item if isinstance(item, list) else [item])]
    numbers = []
    for v in flat:
        if isinstance(v, bool):
            return None
        if isinstance(v, (int, float)):
            numbers.append(float(v))
        elif isinstance(v, str) and re.fullmatch(_NUM, v.strip()):
            numbers.append(float(v))
        else:
            return None
    return numbers


def _boxes_in_json(value: Any) -> Iterator[Box]:
    """Every keyed entry in a decoded JSON value, in document order; objects nest in lists or other objects."""
    if isinstance(value, list):
        for item in value:
            yield from _boxes_in_json(item)
        return
    if not isinstance(value, dict):
        return
    label = _clean_label(next((value[k] for k in _LABEL_KEYS if k in value), None))
    for keys, is_point in ((_BOX_KEYS, False), (_POINT_KEYS, True)):
        key = next((k for k in keys if k in value), None)
        if key is not None:
            numbers = _json_numbers(value[key])
            box = _make(numbers, label, is_point) if numbers is not None else None
            if box is not None:
                yield box
            return
    for item in value.values():
        yield from _boxes_in_json(item)


def _json_values(text: str) -> Iterator[tuple[int, int, Any]]:
    """``(start, end, value)`` of each JSON object, or list of objects, in the text, left to right, none inside
    another. A value that does not decode (say, a list cut off by the token limit) is searched for values
    inside it, so the complete objects of a truncated answer are still found."""
    decoder = json.JSONDecoder()
    pos = 0
    while (m := _OPENING.search(text, pos)) is not None:
        try:
            value, end = decoder.raw_decode(text, m.start())
        except ValueError:
            pos = m.start() + 1
            continue
        except RecursionError:  # nested deeper than any answer: junk, and retrying inside it costs O(n^2)
            return
        yield m.start(), end, value
        pos = end


def _unquote(double: str | None, single: str | None) -> str:
    if double is not None:
        try:
            return json.loads(f'"{double}"')
        except ValueError:
            return double
    return single.replace("\\'", "'")


def _nearby_label(text: str, lo: int, start: int, end: int, hi: int) -> str | None:
    """The label of the object holding ``text[start:end]``: after it up to ``}``, else before it back to ``{``.

    ``lo`` and ``hi`` bound the search at the neighbouring entries, so two entries never share a label."""
    after = text[end:hi].split("}", 1)[0]
    m = _LABEL.search(after)
    if m is None:
        before = text[lo:start].rsplit("{", 1)[-1]
        m = next(reversed(list(_LABEL.finditer(before))), None)
    return None if m is None else _clean_label(_unquote(m.group(1), m.group(2)))


def _keyed_boxes(text: str) -> list[Box]:
    found: list[tuple[int, int, Box]] = []
    spans = []
    for start, end, value in _json_values(text):
        spans.append((start, end))
        found += [(start, i, box) for i, box in enumerate(_boxes_in_json(value))]
    matches = list(_KEYED.finditer(text))
    j = 0  # spans and matches both run left to right
    for i, m in enumerate(matches):
        while j < len(spans) and spans[j][1] <= m.start():
            j += 1
        if j < len(spans) and spans[j][0] <= m.start():
            continue  # already read as JSON
        lo = matches[i - 1].end() if i > 0 else 0
        hi = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        label = _nearby_label(text, lo, m.start(), m.end(), hi)
        box = _make([float(v) for v in _NUMBER.findall(m.group(2))], label, m.group(1) in _POINT_KEYS)
        if box is not None:
            found.append((m.start(), 0, box))
    return [box for _, _, box in sorted(found, key=lambda t: t[:2])]


# ---- 2. tags and 3. plain lists ----


def _tagged_boxes(text: str) -> list[Box]:
    found = []
    for pattern in _TAGS:
        for m in pattern.finditer(text):
            box = _make([float(v) for v in _NUMBER.findall(m.group(2))], _clean_label(m.group(1)), False)
            if box is not None:
                found.append((m.start(), box))
    return [box for _, box in sorted(found, key=lambda t: t[0])]


def _plain_boxes(text: str) -> list[Box]:
    found = []
    for pattern in _PLAIN:
        for m in pattern.finditer(text):
            lo = max(0, m.start() - 80)  # a label sits on the same line, at most 80 characters before
            newline = text.rfind("\n", lo, m.start())
            before = _LABEL_BEFORE.search(text, newline + 1 if newline >= 0 else lo, m.start())
            label = _clean_label(before.group(1)) if before else None
            box = _make([float(v) for v in m.groups()], label, False)
            if box is not None:
                found.append((m.start(), box))
    return [box for _, box in sorted(found, key=lambda t: t[0])]


def parse_boxes(text: str) -> list[Box]:
    """The boxes and points in a model's answer, in the order written, coordinates as written.

    See the module docstring for the notations read. Never raises: text with no boxes (or not a string at all)
    gives ``[]``. Box entries with fewer than 4 numbers, and point entries with fewer than 2, are dropped."""
    if not isinstance(text, str) or not text:
        return []
    for reader in (_keyed_boxes, _tagged_boxes, _plain_boxes):
        boxes = reader(text)
        if boxes:
            return boxes
    return []


# ---- mapping back to the original image ----


def _size(size: Sequence[float], name: str) -> tuple[float, float]:
    try:
        h, w = (float(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a (height, width) pair, got {size!r}.") from None
    if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
        raise InputError(f"{name} must be a positive (height, width), got {size!r}.")
    return h, w


def to_original(
    boxes: Sequence[Box], resized_size: Sequence[float], original_size: Sequence[float]
) -> list[Box]:
    """Boxes in the pixels of the image the model saw, ``resized_size`` = (h, w), mapped to the original image
    of ``original_size`` = (h, w): x scaled by W0/Wr, y by H0/Hr, then clamped to [0, W0] x [0, H0].

    Take both sizes from the processor's ``resized_sizes`` and ``image_sizes`` for the box's image."""
    rh, rw = _size(resized_size, "resized_size")
    oh, ow = _size(original_size, "original_size")
    sx, sy = ow / rw, oh / rh

    def cx(x: float) -> float:
        return min(max(x * sx, 0.0), ow)

    def cy(y: float) -> float:
        return min(max(y * sy, 0.0), oh)

    return [dataclasses.replace(b, x1=cx(b.x1), y1=cy(b.y1), x2=cx(b.x2), y2=cy(b.y2)) for b in boxes]


# ---- drawing ----


def box_colours(boxes: Sequence[Box]) -> list[tuple[int, int, int]]:
    """One colour per box: boxes with the same label share one, each unlabelled box gets its own."""
    by_label: dict[str, tuple[int, int, int]] = {}
    colours = []
    fresh = 0  # colours handed out so far
    for box in boxes:
        if box.label is not None and box.label in by_label:
            colours.append(by_label[box.label])
            continue
        colour = PALETTE[fresh % len(PALETTE)]
        fresh += 1
        if box.label is not None:
            by_label[box.label] = colour
        colours.append(colour)
    return colours


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def draw_boxes(
    image: Image.Image, boxes: Sequence[Box], out_path: str | Path | None = None, *, width: int | None = None
) -> Image.Image:
    """A copy of ``image`` (as RGB) with each box outlined and labelled, each point marked with a dot.

    Boxes are in the image's own pixels (see ``to_original``); all given boxes are drawn, whatever their
    ``image_index``. ``width`` is the outline width in pixels (default: scaled with the image). The result is
    saved to ``out_path`` when given, in the format its extension names."""
    if not isinstance(image, Image.Image):
        raise ImageError(f"draw_boxes needs a PIL image, got {type(image).__name__}; open the file with PIL first.")
    canvas = image.convert("RGB")  # always a new image
    w, h = canvas.size
    short = min(w, h)
    width = max(1, int(width)) if width is not None else max(2, round(short / 250))
    font = _font(max(12, round(short / 30)))
    draw = ImageDraw.Draw(canvas)
    colours = box_colours(boxes)

    def px(v: float, limit: int) -> int:
        return min(max(round(v), 0), limit - 1)  # an edge at the image border stays visible

    anchors = []  # top-left corner of each label, drawn after all outlines so labels stay on top
    for box, colour in zip(boxes, colours):
        x1, y1, x2, y2 = px(box.x1, w), px(box.y1, h), px(box.x2, w), px(box.y2, h)
        if box.is_point:
            r = 2 * width + 1
            draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=colour, outline=(255, 255, 255))
            anchors.append((x1 + r, y1 - r))
        else:
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
            anchors.append((x1, y1))

    pad = 2
    for box, colour, (ax, ay) in zip(boxes, colours, anchors):
        if not box.label:
            continue
        text = box.label
        if not isinstance(font, ImageFont.FreeTypeFont):  # the bitmap fallback font only encodes Latin-1
            text = text.encode("latin-1", "replace").decode("latin-1")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        bx = min(max(ax, 0), max(w - tw, 0))
        by = ay - th if ay - th >= 0 else ay  # above the box when there is room, else inside it
        draw.rectangle((bx, by, bx + tw - 1, by + th - 1), fill=colour)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)
        draw.text((bx + pad - left, by + pad - top), text, fill=ink, font=font)

    if out_path is not None:
        try:
            canvas.save(out_path)
        except ValueError as e:  # PIL: unknown extension
            raise InputError(f"cannot save boxes to {str(out_path)!r}: {e}. Use a .png or .jpg path.") from None
    return canvas
