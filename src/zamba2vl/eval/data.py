"""Benchmark rows and the two on-disk layouts they come in.

* VLMEvalKit's TSV: one row per question with columns ``index``, ``image`` (base64; or the ``index`` of
  another row whose image it shares; or a Python-literal list of base64 strings for several images),
  ``question``, ``answer`` (a Python-literal list for multi-answer VQA), ``hint``, option columns
  ``A``, ``B``, ..., ``category``, ``split`` and benchmark-specific extras (MathVista's ``choices``,
  ``answer_type``, ...). Optional ``image_path`` column with files next to the TSV.
* JSON lines (or a JSON list, or Parquet when pyarrow is installed) in the Hugging Face datasets layout
  used by lmms-eval for VQAv2 and PixMoCount: ``question_id``, ``question``, ``answers`` (list of
  ``{"answer": ...}`` dicts) or ``answer``, and ``image`` as a path, a base64 string, a data URI or
  a ``{"bytes": ..., "path": ...}`` dict.

Cells are read the way ``pandas.read_csv(sep="\\t")`` reads them (VLMEvalKit's loader), so that an
option spelled ``None`` or ``NA`` is treated as absent exactly as it is there; pandas' numeric type
inference is *not* reproduced: every cell stays the string that is in the file.

Problems found while loading (an image reference that points nowhere, no question, a missing answer,
an answer letter that is not an option) are attached to the row, never raised: the runner reports the
row by its index, counts it as wrong and goes on.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import io
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from zamba2vl.errors import ImageError, InputError

# pandas.read_csv's default missing-value spellings (its `na_values` default, pandas >= 1.0).
PANDAS_NA = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
])
OPTION_LETTERS = string.ascii_uppercase
# VLMEvalKit stores a shared image as the index of the row that holds it; real base64 is far longer.
_MAX_POINTER_LEN = 64


@dataclass(frozen=True)
class ImageRef:
    """Where one image comes from; decoded only when the row is generated."""

    kind: str  # "base64" | "path" | "bytes" | "pil" (an image made in memory)
    value: Any

    def load(self):
        """Decode to an RGB PIL image; raise ImageError with the reason when it cannot be read."""
        from PIL import Image, UnidentifiedImageError

        if self.kind == "pil":
            return self.value.convert("RGB")
        try:
            if self.kind == "path":
                img = Image.open(self.value)
            else:
                raw = self.value if self.kind == "bytes" else _b64decode(self.value)
                img = Image.open(io.BytesIO(raw))
            img.load()
        except UnidentifiedImageError as exc:
            raise ImageError(f"cannot decode image ({self.kind}): not an image format Pillow can read") from exc
        except binascii.Error as exc:
            raise ImageError(f"cannot decode image ({self.kind}): invalid base64 ({exc})") from exc
        except (OSError, ValueError) as exc:  # no object addresses in the message: results must be reproducible
            raise ImageError(f"cannot decode image ({self.kind}): {re.sub(r' at 0x[0-9a-f]+', '', str(exc))}") from exc
        return img.convert("RGB")


def _b64decode(text: str) -> bytes:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    return base64.b64decode(text, validate=True)


@dataclass
class EvalSample:
    """One benchmark question. `fields` keeps every column of the file (None where the cell is empty)."""

    index: Any
    fields: dict[str, Any]
    images: list[ImageRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return str(self.index)

    @property
    def question(self) -> str:
        return self.fields.get("question") or ""

    @property
    def answer(self) -> Any:
        return self.fields.get("answer")

    @property
    def options(self) -> dict[str, str]:
        """Option letter -> text, in letter order, for the option columns that have a value."""
        return {c: self.fields[c] for c in OPTION_LETTERS if self.fields.get(c) is not None}

    @property
    def hint(self) -> str | None:
        return self.fields.get("hint")


def parse_literal_list(text: Any) -> list | None:
    """A cell holding a Python-literal list (VLMEvalKit's multi-answer convention), else None."""
    if isinstance(text, list):
        return text
    if not isinstance(text, str):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    return value if isinstance(value, list) else None


# ----------------------------------------------------------------------------------------------------
# VLMEvalKit TSV


def read_vlmevalkit_tsv(path: str | os.PathLike) -> list[EvalSample]:
    path = Path(path)
    csv.field_size_limit(2**31 - 1)  # base64 cells run to megabytes
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quotechar='"')
        rows = [r for r in reader if r]  # pandas skips blank lines too
    if not rows:
        raise InputError(f"{path} is empty; expected a VLMEvalKit TSV with a header row.")
    header, body = rows[0], rows[1:]
    if "index" not in header:
        raise InputError(f"{path} has no 'index' column; columns are {header[:12]}. Is it a VLMEvalKit TSV?")

    records = []
    for line_no, cells in enumerate(body, start=2):
        cells = cells + [""] * (len(header) - len(cells))
        rec = {h: (None if c in PANDAS_NA else c) for h, c in zip(header, cells)}
        records.append((line_no, rec))

    raw_images = {str(r["index"]): r.get("image") for _, r in records}
    samples = []
    for line_no, rec in records:
        index = rec["index"] if rec["index"] is not None else f"line{line_no}"
        sample = EvalSample(index=index, fields=rec)
        if "image" in header:
            sample.images = _tsv_images(rec.get("image"), raw_images, sample.problems)
        elif "image_path" in header:
            sample.images = _path_images(rec.get("image_path"), path.parent, sample.problems)
        else:
            sample.problems.append("no image column")
        samples.append(sample)

    if all(_is_int(s.index) for s in samples):  # VLMEvalKit turns all-integer indices into ints
        for s in samples:
            s.index = int(s.index)
    _check_duplicates(samples, path)
    return samples


def _is_int(x: Any) -> bool:
    try:
        int(str(x))
        return True
    except ValueError:
        return False


def _tsv_images(cell: str | None, raw_images: dict, problems: list[str]) -> list[ImageRef]:
    if cell is None:
        problems.append("image: empty cell")
        return []
    if len(cell) <= _MAX_POINTER_LEN:  # the index of the row that holds this image
        target = raw_images.get(cell)
        if target is None or len(target) <= _MAX_POINTER_LEN:
            problems.append(f"image: refers to row {cell!r}, which has no image")
            return []
        cell = target
    if cell.startswith("[") and cell.endswith("]"):
        items = parse_literal_list(cell)
        if items is None:
            problems.append("image: malformed list of images")
            return []
        return [ImageRef("base64", str(x)) for x in items]
    return [ImageRef("base64", cell)]


def _path_images(cell: str | None, root: Path, problems: list[str]) -> list[ImageRef]:
    if cell is None:
        problems.append("image_path: empty cell")
        return []
    paths = parse_literal_list(cell) if cell.startswith("[") else [cell]
    if paths is None:
        problems.append("image_path: malformed list")
        return []
    return [ImageRef("path", str(p) if os.path.isabs(str(p)) else str(root / str(p))) for p in paths]


def _check_duplicates(samples: list[EvalSample], path: Path) -> None:
    seen: set[str] = set()
    for s in samples:
        if s.key in seen:
            raise InputError(f"{path}: index {s.key!r} occurs twice; every row needs its own index.")
        seen.add(s.key)


# ----------------------------------------------------------------------------------------------------
# JSON lines / Hugging Face layout

_ID_KEYS = ("index", "question_id", "questionId", "id")


def read_hf_rows(path: str | os.PathLike) -> list[EvalSample]:
    """Read `.jsonl`, `.json` (a list of objects) or `.parquet` (needs pyarrow) in the HF layout."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet" or path.is_dir():
        rows = _read_parquet(path)
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise InputError(f"{path} holds a JSON {type(rows).__name__}; expected a list of rows.")
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    rows.append({"_problem": f"line {line_no} is not JSON: {exc.msg}", "index": f"line{line_no}"})

    samples = []
    for row_no, row in enumerate(rows):
        index = next((row[k] for k in _ID_KEYS if row.get(k) is not None), row_no)
        fields = {k: v for k, v in row.items() if k not in ("image", "images", "_problem")}
        sample = EvalSample(index=index, fields=fields)
        if "_problem" in row:
            sample.problems.append(row["_problem"])
        raw = row.get("images", row.get("image"))
        raw = raw if isinstance(raw, list) else [raw]
        for item in raw:
            ref = _hf_image(item, path.parent if path.is_file() else path, sample.problems)
            if ref is not None:
                sample.images.append(ref)
        samples.append(sample)
    _check_duplicates(samples, path)
    return samples


def _hf_image(item: Any, root: Path, problems: list[str]) -> ImageRef | None:
    if item is None:
        problems.append("image: missing")
        return None
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            b = item["bytes"]
            if isinstance(b, (bytes, bytearray)):
                return ImageRef("bytes", bytes(b))
            if isinstance(b, list):
                return ImageRef("bytes", bytes(b))
            return ImageRef("base64", str(b))
        item = item.get("path")
        if item is None:
            problems.append("image: dict without bytes or path")
            return None
    if isinstance(item, (bytes, bytearray)):
        return ImageRef("bytes", bytes(item))
    text = str(item)
    if text.startswith("data:"):
        return ImageRef("base64", text)
    candidate = Path(text) if os.path.isabs(text) else root / text
    if len(text) < 1024 and candidate.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}:
        return ImageRef("path", str(candidate))
    return ImageRef("base64", text)


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(
            f"{path} is Parquet, which needs pyarrow (pip install pyarrow); or export the split to JSON lines "
            "with `datasets.load_dataset(...).to_json(...)`."
        ) from exc
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    rows: list[dict] = []
    for f in files:
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def read_rows(path: str | os.PathLike) -> list[EvalSample]:
    """Pick the reader from the file name: `.tsv` is VLMEvalKit, anything else the HF layout."""
    path = Path(path)
    if path.suffix.lower() == ".tsv":
        return read_vlmevalkit_tsv(path)
    return read_hf_rows(path)


def iter_chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
