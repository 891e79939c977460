"""Training checkpoints, written atomically so that a run killed at any moment resumes exactly.

    <output_dir>/checkpoints/step-000200/
        config.json, model.safetensors          the model, Hub layout (loadable by Zamba2VL.from_pretrained)
        tokenizer.json, ..., preprocessor_config.json   its processor
        train_config.yaml                       the run's settings (``zamba2vl eval`` reads its eval image size)
        trainer_state.pt                        step, optimizer, scheduler, sampler position, counters
        rng-rank0.pt, rng-rank1.pt, ...         python, numpy and torch RNG states of every process

Everything is written into ``.tmp-step-000200`` (fsynced), which is then renamed into place: a ``step-*``
folder is complete or absent, never half written. Resuming takes the highest ``step-*`` folder.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zamba2vl.checkpoint import latest_pointer_target, open_weights
from zamba2vl.errors import CheckpointError
from zamba2vl.model import Zamba2VL
from zamba2vl.text.weights import load_text_state
from zamba2vl.vision.weights import load_vision_weights

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The ``step-*`` folder with the highest step under ``root`` (None if there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- writing


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class CheckpointWriter:
    """Writes a checkpoint in the three phases a multi-process run needs (barriers between them):
    ``begin`` (rank 0 makes the temporary folder), ``write_rank`` (every rank its RNG state), ``commit``
    (rank 0 writes the model and trainer state, then renames the folder into place and prunes old ones)."""

    def __init__(self, root: str | os.PathLike, keep: int):
        self.root = Path(root)
        self.keep = keep

    def tmp(self, step: int) -> Path:
        return self.root / f".tmp-step-{step:06d}"

    def begin(self, step: int) -> None:
        tmp = self.tmp(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)

    def write_rank(self, step: int, rank: int) -> None:
        torch.save(rng_state(), self.tmp(step) / f"rng-rank{rank}.pt")

    def commit(self, step: int, model: Zamba2VL, processor, trainer_state: dict[str, Any],
               train_config: dict[str, Any] | None = None) -> Path:
        tmp = self.tmp(step)
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        if train_config is not None:  # so the folder alone says how it was trained (and is ready to ship)
            (tmp / "train_config.yaml").write_text(yaml.safe_dump(train_config, sort_keys=False))
        torch.save(trainer_state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        final = step_dir(self.root, step)
        if final.exists():  # left by a run that died after this step; ours replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        latest = self.root / "latest"
        (self.root / ".latest.tmp").write_text(final.name + "\n")
        os.replace(self.root / ".latest.tmp", latest)
        self._prune()
        return final

    def _prune(self) -> None:
        steps = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)))
        for _, p in steps[: max(0, len(steps) - self.keep)]:
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- reading


def load_model_weights(model: Zamba2VL, folder: str | os.PathLike) -> None:
    """Copy a checkpoint's weights into ``model``'s existing parameters (names and shapes checked)."""
    reader = open_weights(folder)
    dtype = model.dtype
    load_vision_weights(model.vision_tower, reader, source=str(folder), dtype=dtype)
    load_text_state(model.language_model, reader, model.config.text_config, source=str(folder), dtype=dtype)


def checkpoint_folder(path: str | os.PathLike) -> Path:
    """A checkpoint folder as given, or the folder a run's ``checkpoints/latest`` pointer file names."""
    return latest_pointer_target(Path(path)) or Path(path)


def load_trainer_state(folder: str | os.PathLike, rank: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state, this rank's RNG state) of a checkpoint folder."""
    folder = Path(folder)
    state_path, rng_path = folder / STATE_FILE, folder / f"rng-rank{rank}.pt"
    if not state_path.is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint: it has no {STATE_FILE}")
    if not rng_path.is_file():
        raise CheckpointError(f"{folder} has no RNG state for process {rank} ({rng_path.name}); it was written by a "
                              "run with fewer processes. Resume with the same number of processes")
    return torch.load(state_path, weights_only=True), torch.load(rng_path, weights_only=True)
