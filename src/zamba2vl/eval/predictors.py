"""What the runner asks a model for, and the predictors that answer.

`Predictor` is the one method the runner needs. `AnswerPredictor` is the stand-in used by tests and by
`--model answers:FILE.json` / `--model oracle`: it returns fixed answers by row index. `ModelPredictor`
adapts the real model and depends on the end-to-end generation API (`zamba2vl.pipeline`), which is
being written separately; it is imported lazily so that scoring never needs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from zamba2vl.errors import InputError


@dataclass
class EvalRequest:
    index: Any  # the benchmark row this request is for
    images: list  # PIL images, in the order the prompt refers to them
    prompt: str
    min_pixels: int | None  # None: the model's processor's
    max_pixels: int | None
    max_new_tokens: int
    meta: dict = field(default_factory=dict)


class Predictor(Protocol):
    def generate(self, requests: list[EvalRequest]) -> list[str]:
        """One answer per request, in order. Greedy decoding is expected for evaluation."""
        ...

    # Optional: ``identity() -> dict``, JSON-able, the same exactly when the answers would be. The runner keeps it
    # beside the predictions and will not resume a folder that another identity wrote (see runner.run_identity).


_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".jinja", ".model", ".txt")
_EDGE = 1 << 20  # bytes read at each end of a large file


def _hash_file(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))


def folder_fingerprint(folder: str | Path) -> str:
    """A short hash of a checkpoint folder's files (names, sizes, and the whole of each small file or the first and
    last MiB of a large one): cheap on a 15 GB checkpoint, and any retraining changes the weights' bytes."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix in _FINGERPRINT_SUFFIXES:
            h.update(f"{path.name}\0".encode())
            _hash_file(h, path)
    return h.hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """The same kind of hash of a benchmark's data, whatever its name: a file's size and bytes (the first and last
    MiB of a large one), or for a folder (a Parquet split) the names, sizes and bytes of every file in it."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            h.update(f"{f.name}\0".encode())
            _hash_file(h, f)
    else:
        _hash_file(h, path)
    return h.hexdigest()[:16]


class AnswerPredictor:
    """Answers from a mapping (row index as a string -> answer) or a callable on the request."""

    def __init__(self, answers: dict[str, str] | Callable[[EvalRequest], str], default: str = ""):
        self.answers = answers
        self.default = default
        self.calls = 0  # requests answered, so tests can tell which rows were generated

    def identity(self) -> dict:
        if callable(self.answers):
            return {"answers": getattr(self.answers, "__qualname__", "callable")}
        blob = json.dumps(self.answers, sort_keys=True, ensure_ascii=False) + "\0" + self.default
        return {"answers": hashlib.sha256(blob.encode()).hexdigest()[:16]}

    def generate(self, requests: list[EvalRequest]) -> list[str]:
        self.calls += len(requests)
        if callable(self.answers):
            return [self.answers(r) for r in requests]
        return [self.answers.get(str(r.index), self.default) for r in requests]

    @classmethod
    def from_file(cls, path: str | Path) -> "AnswerPredictor":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read stand-in answers from {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError(f"{path} must hold a JSON object mapping row index to answer.")
        return cls({str(k): str(v) for k, v in data.items()})


class ModelPredictor:
    """The real model behind the Predictor protocol: batched greedy generation through ``zamba2vl.pipeline``.

    Each request becomes one user turn (its images, then its prompt) rendered with the checkpoint's chat
    template. Requests of one batch come from one benchmark, so they share its image budget and token limit.
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str | None = None):
        self.model, self.device, self.dtype = model, device, dtype
        self._vlm = None
        self._identity: dict | None = None

    def identity(self) -> dict:
        """The checkpoint's files (so a folder retrained in place is a new model) and the dtype; worked out once,
        as the one predictor serves every benchmark of a command."""
        if self._identity is None:
            from zamba2vl.checkpoint import resolve_model_dir

            try:
                files = folder_fingerprint(resolve_model_dir(self.model))
            except Exception:  # unresolvable here: loading it will say why; fall back to the name
                files = None
            self._identity = {"model": self.model if files is None else None, "files": files, "dtype": self.dtype}
        return self._identity

    def generate(self, requests: list[EvalRequest]) -> list[str]:
        if not requests:
            return []
        if self._vlm is None:
            from zamba2vl.pipeline import load  # lazy: scoring must not need the model

            self._vlm = load(self.model, device=self.device, dtype=self.dtype or "auto")
        first = requests[0]
        conversations = [
            [{"role": "user", "content": [{"type": "image", "image": im} for im in r.images]
              + [{"type": "text", "text": r.prompt}]}]
            for r in requests
        ]
        result = self._vlm.generate(conversations, min_pixels=first.min_pixels, max_pixels=first.max_pixels,
                                    max_new_tokens=first.max_new_tokens, do_sample=False)
        return [t.strip() for t in result.texts]
