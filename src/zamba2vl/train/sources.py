"""Training data sources: LLaVA-style JSONL files and the synthetic task generator.

A JSONL line is one conversation, in either of the two common layouts:

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "images/a.png"},
                                               {"type": "text", "text": "What is it?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]}
    {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                                         {"from": "gpt", "value": "A cat."}]}

Images are paths (relative to the source's ``image_root``, by default the JSONL file's folder) or inline
``data:`` URLs. A JSONL file is indexed once when the run starts (with a progress bar): every line is parsed
and checked (structure, image files present, image tokens within ``max_image_tokens``, read from the image
headers) and the byte offset of each good line kept, so records are read on demand. A bad record is a
``DataError`` naming the file and the line; by ``on_bad_record`` it stops the run or is skipped, counted and
reported. Records that only fail when encoded (undecodable image, too many tokens) are handled the same way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zamba2vl.errors import Zamba2VLError
from zamba2vl.processing.chat import normalize_messages
from zamba2vl.processing.image import ImageProcessor, read_image_size, smart_resize
from zamba2vl.train import synthetic
from zamba2vl.train.encode import image_parts

_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataError(Zamba2VLError, ValueError):
    """A training record that cannot be used; the message starts with ``file:line:``."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass
class SkipLog:
    """Every bad record met so far: counted, kept for the report, never silent."""

    stop: bool = False  # on_bad_record: stop -> raise instead of recording
    records: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    warn_limit: int = 20

    def add(self, error: DataError) -> None:
        if self.stop:
            raise error
        self.records.append((error.where, error.reason))
        if len(self.records) <= self.warn_limit:
            print(f"zamba2vl train: skipping bad record {error}", file=sys.stderr, flush=True)
        elif len(self.records) == self.warn_limit + 1:
            print("zamba2vl train: more bad records are skipped; all are listed in the run's skipped.jsonl",
                  file=sys.stderr, flush=True)

    @property
    def count(self) -> int:
        return len(self.records)


# ---------------------------------------------------------------------------------------------- records


def llava_to_messages(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``{"image", "conversations": [{"from", "value"}]}`` layout -> messages with image parts in place."""
    images = record.get("image", record.get("images"))
    images = [] if images is None else [images] if isinstance(images, str) else list(images)
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise ValueError("'conversations' must be a list of {from, value}")
    messages, used = [], 0
    for i, turn in enumerate(turns):
        if not (isinstance(turn, Mapping) and turn.get("from") in _LLAVA_ROLES and isinstance(turn.get("value"), str)):
            raise ValueError(f"conversations[{i}] must be {{'from': human|gpt|system, 'value': str}}")
        pieces = turn["value"].split("<image>")
        content: list[dict[str, Any]] = []
        for j, piece in enumerate(pieces):
            if j > 0:
                if used >= len(images):
                    raise ValueError(f"conversations[{i}] has more <image> markers than the record has images")
                content.append({"type": "image", "image": images[used]})
                used += 1
            piece = piece.strip("\n") if len(pieces) > 1 else piece
            if piece:
                content.append({"type": "text", "text": piece})
        messages.append({"role": _LLAVA_ROLES[turn["from"]], "content": content})
    if used == 0 and images:  # no marker: the images go before the first user text, as LLaVA does
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise ValueError("the record has images but no human turn to put them in")
        first["content"][:0] = [{"type": "image", "image": im} for im in images]
        used = len(images)
    if used != len(images):
        raise ValueError(f"the record has {len(images)} images but {used} <image> markers")
    return messages


def record_messages(record: Any) -> list[dict[str, Any]]:
    """The messages of a JSONL record (either layout); ValueError/InputError say what is wrong."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        messages = llava_to_messages(record)
    else:
        raise ValueError("a record needs 'messages' (chat layout) or 'conversations' (LLaVA layout)")
    normalized, _ = normalize_messages(messages)
    if not any(m["role"] == "assistant" and any(p["type"] == "text" and p["text"] for p in m["content"])
               for m in normalized):
        raise ValueError("the conversation has no assistant answer to learn from")
    return list(messages)


def _map_images(messages: list[dict[str, Any]], fn) -> list[dict[str, Any]]:
    """A copy of ``messages`` with each image part's source replaced by ``fn(source)``."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in ("image", "image_url"):
                    src = part.get("image_url") if part["type"] == "image_url" else next(
                        (part[k] for k in ("image", "url", "path") if part.get(k) is not None), None)
                    if isinstance(src, Mapping):
                        src = src.get("url")
                    budgets = {k: part[k] for k in ("min_pixels", "max_pixels") if part.get(k) is not None}
                    part = {"type": "image", "image": fn(src), **budgets}
                parts.append(part)
            content = parts
        out.append({**m, "content": content})
    return out


# ---------------------------------------------------------------------------------------------- sources


class JsonlSource:
    """One JSONL file, indexed: ``size`` good records, ``messages(i)`` reads record i from disk."""

    def __init__(self, path: str | os.PathLike, *, name: str | None = None, image_root: str | None = None,
                 image_processor: ImageProcessor | None = None, max_image_tokens: int | None = None,
                 min_pixels: int | None = None, max_pixels: int | None = None, validate_images: bool = True,
                 skips: SkipLog | None = None, progress: bool = True):
        self.path = Path(path)
        self.name = name or self.path.name
        self.image_root = Path(image_root) if image_root else self.path.parent
        self.image_processor = image_processor or ImageProcessor()
        self.max_image_tokens = max_image_tokens
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.skips = skips if skips is not None else SkipLog()
        if not self.path.is_file():
            raise DataError(str(self.path), "no such file (data.sources[].path)")
        self.offsets: list[int] = []  # byte offset of each good record
        self.lines: list[int] = []  # its 1-based line number
        self._index(validate_images, progress)
        self._file = None

    def _index(self, validate_images: bool, progress: bool) -> None:
        from tqdm import tqdm

        size = self.path.stat().st_size
        with open(self.path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"indexing {self.name}",
                                              disable=not progress or None, leave=False) as bar:
            offset, line_no = 0, 0
            for raw in f:
                line_no += 1
                bar.update(len(raw))
                if raw.strip():
                    try:
                        self._check(raw, line_no, validate_images)
                    except DataError as e:
                        self.skips.add(e)
                    else:
                        self.offsets.append(offset)
                        self.lines.append(line_no)
                offset += len(raw)
        if not self.offsets:
            raise DataError(str(self.path), "no usable record in the file")

    def where(self, line_no: int) -> str:
        return f"{self.path}:{line_no}"

    def _parse(self, raw: bytes, line_no: int) -> list[dict[str, Any]]:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(self.where(line_no), f"not valid JSON ({e})") from None
        try:
            messages = record_messages(record)
        except (ValueError, KeyError) as e:
            raise DataError(self.where(line_no), str(e)) from None
        return _map_images(messages, self._resolve)

    def _resolve(self, src: Any) -> Any:
        if isinstance(src, str) and not src.startswith("data:"):
            src = src[len("file://"):] if src.startswith("file://") else src
            return str(self.image_root / src)
        return src

    def _check(self, raw: bytes, line_no: int, validate_images: bool) -> None:
        messages = self._parse(raw, line_no)
        if not validate_images:
            return
        _, sources = normalize_messages(messages)
        counts = []
        for src, part in zip(sources, image_parts(messages)):
            if src is None:
                raise DataError(self.where(line_no), "an image part names no image")
            if isinstance(src, str) and not src.startswith("data:") and not os.path.isfile(src):
                raise DataError(self.where(line_no), f"image file not found: {src}")
            try:
                counts.append(self._image_tokens(src, part))
            except Zamba2VLError as e:
                raise DataError(self.where(line_no), f"bad image {_short(src)}: {e}") from None
        check_image_budget(counts, self.max_image_tokens, self.where(line_no))

    def _image_tokens(self, src: Any, part: Mapping[str, Any]) -> int:
        """Tokens the image will take, from its header: a part's own budget first resizes it (as the processor
        does, after qwen_vl_utils), then the run's min_pixels / max_pixels apply."""
        ip = self.image_processor
        h, w = read_image_size(src, max_image_pixels=ip.max_image_pixels)
        if part.get("min_pixels") is not None or part.get("max_pixels") is not None:
            h, w = smart_resize(h, w, factor=ip.factor, min_pixels=int(part.get("min_pixels") or 4 * 28 * 28),
                                max_pixels=int(part.get("max_pixels") or 16384 * 28 * 28))
        return ip.num_image_tokens((h, w), min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def messages(self, i: int) -> tuple[list[dict[str, Any]], str]:
        """(messages of good record i with image paths resolved, "file:line")."""
        if self._file is None:
            self._file = open(self.path, "rb")
        self._file.seek(self.offsets[i])
        return self._parse(self._file.readline(), self.lines[i]), self.where(self.lines[i])

    @property
    def size(self) -> int:
        return len(self.offsets)

    def __getstate__(self):  # file handles do not pickle
        return {**self.__dict__, "_file": None}


class SyntheticSource:
    """The synthetic tasks as an endless source: record i is example i of the task mixture under ``seed``.

    ``curriculum`` ([[until_example, task_weights], ...], until_example increasing) gives other task weights to
    the stream's first examples, e.g. the easiest task alone first; example i uses the first phase with
    i < until_example, and ``task_weights`` after the last. The task of each example still comes from
    ``(seed, i)`` alone, so a resumed run draws the same examples.
    """

    def __init__(self, *, name: str | None = None, tasks=None, task_weights=None, seed: int = 0,
                 image_size: int = 224, curriculum=None, grounding_format: str = "json", letters: bool = False,
                 reading_size=None):
        """``letters``: annotate the reading task's letters too (``synthetic.object_annotation``);
        ``reading_size``: the reading task's [width, height] (default ``image_size``)."""
        self.name = name or "synthetic"
        self.letters = letters
        if grounding_format not in synthetic.GROUNDING_FORMATS:
            raise DataError(f"{name or 'synthetic'}: grounding_format",
                            f"{grounding_format!r}; choose from {synthetic.GROUNDING_FORMATS}")
        self.grounding_format = grounding_format
        self.tasks = tuple(tasks or synthetic.TASKS)
        self.task_weights = task_weights
        self.seed, self.image_size = seed, image_size
        self.reading_size = reading_size
        self.phases = _check_curriculum(curriculum, len(self.tasks), self.name)
        for until, weights in self.phases:  # fail now on unknown tasks or bad weights
            next(synthetic.generate(self.tasks, n=1, seed=seed, image_size=image_size, weights=weights,
                                    reading_size=self.reading_size))
        next(self._examples(0))

    def weights_at(self, i: int):
        """The task weights example i is drawn with."""
        return next((w for until, w in self.phases if i < until), self.task_weights)

    def _examples(self, i: int):
        return synthetic.generate(self.tasks, n=1, seed=self.seed, image_size=self.image_size,
                                  weights=self.weights_at(i), start=i, grounding_format=self.grounding_format,
                                  reading_size=self.reading_size)

    def messages(self, i: int) -> tuple[list[dict[str, Any]], str]:
        ex = next(self._examples(i))
        messages = example_messages(ex)
        annotation = synthetic.object_annotation(ex, self.letters)
        if annotation is not None:  # read by the objects objective (train/objects.py) when it is on
            messages[0]["content"][0]["objects"] = annotation
        return messages, f"{self.name}:{ex.id}"

    size = None  # endless


def _check_curriculum(curriculum, n_tasks: int, name: str) -> list[tuple[int, list[float]]]:
    if not curriculum:
        return []
    phases, last = [], 0
    for k, phase in enumerate(curriculum):
        ok = isinstance(phase, (list, tuple)) and len(phase) == 2 and isinstance(phase[0], int) \
            and isinstance(phase[1], (list, tuple)) and len(phase[1]) == n_tasks
        if not ok or phase[0] <= last:
            raise DataError(f"{name}: curriculum[{k}]",
                            f"expected [until_example, [one weight per task ({n_tasks})]] with until_example "
                            f"increasing and > 0, got {phase!r}")
        phases.append((int(phase[0]), [float(w) for w in phase[1]]))
        last = phase[0]
    return phases


def example_messages(ex: synthetic.SyntheticExample, with_answer: bool = True) -> list[dict[str, Any]]:
    messages = [{"role": "user", "content": [{"type": "image", "image": ex.image},
                                             {"type": "text", "text": ex.question}]}]
    if with_answer:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": ex.answer}]})
    return messages


def check_image_budget(counts: list[int], budget: int | None, where: str) -> None:
    if budget is not None and sum(counts) > budget:
        raise DataError(where, f"its images need {sum(counts)} tokens (per image: {counts}), over the budget "
                               f"data.max_image_tokens={budget}; lower data.max_pixels or raise the budget")


def _short(src: Any) -> str:
    return repr(src[:60] + "...") if isinstance(src, str) and len(src) > 60 else repr(src) if isinstance(src, str) \
        else type(src).__name__
