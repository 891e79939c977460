"""Reading and writing Hub-format checkpoints (config.json + safetensors, single file or sharded).

Weights are read one tensor at a time straight into their own buffers, so a model built on the meta device can
be filled with peak memory close to the size of the weights. Pickle files are never unpickled: a ``.bin``
checkpoint is read only if ``torch.load(weights_only=True)`` accepts it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from zamba2vl.errors import CheckpointError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


# ------------------------------------------------------------------------------------------ locating files


SHIPPED_MODEL_NAME = "nano"


def latest_pointer_target(path: Path) -> Path | None:
    """The step folder a training run's ``checkpoints/latest`` pointer file names (train/checkpoints.py), if ``path``
    is such a file and that folder exists; None otherwise."""
    if path.is_file() and path.name == "latest":
        target = path.parent / path.read_text(encoding="utf-8").strip()
        if target.name.startswith("step-") and target.is_dir():
            return target
    return None


def resolve_model_dir(path_or_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local folder, or a Hub repo id downloaded (or found in the local cache) through huggingface_hub.

    ``nano`` (when no folder of that name exists here) is the small model that ships inside the package."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    s = os.fspath(path_or_id)
    if s == SHIPPED_MODEL_NAME:
        shipped = Path(__file__).parent / "assets" / "nano"
        if not (shipped / "config.json").is_file():
            raise CheckpointError(f"the shipped model is missing from this installation ({shipped}); reinstall "
                                  "zamba2vl, or pass a checkpoint folder or Hub id")
        return shipped
    target = latest_pointer_target(p)
    if target is not None:
        return target
    if p.exists():
        raise CheckpointError(f"{s} is a file; pass the model folder that contains config.json.")
    if s.count("/") != 1 or s.startswith((".", "/", "~")):
        raise CheckpointError(f"{s} is neither a local folder nor a Hugging Face repo id like 'Zyphra/Zamba2-VL-1.2B'.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError("huggingface_hub is needed to download models by repo id.") from e
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(s, revision=revision, allow_patterns=patterns))
    except Exception as first:  # offline, no such repo, gated, ...
        try:
            return Path(snapshot_download(s, revision=revision, allow_patterns=patterns, local_files_only=True))
        except Exception:
            raise CheckpointError(
                f"could not download {s!r} from the Hugging Face Hub ({type(first).__name__}: {first}) and it is "
                "not in the local cache. Check the repo id and your network, or download the folder elsewhere "
                "(`huggingface-cli download <id> --local-dir DIR`) and pass DIR."
            ) from first


def weight_files(model_dir: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint folder, in a deterministic order."""
    d = Path(model_dir)
    index = d / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e}).") from e
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that are not in {d}: {missing}. Download every shard.")
        return [d / f for f in files]
    if (d / SAFE_SINGLE).is_file():
        return [d / SAFE_SINGLE]
    shards = sorted(d.glob("*.safetensors"))
    if shards:
        return shards
    bins = sorted(d.glob("*.bin"))
    if bins:
        return bins
    raise CheckpointError(f"no weights in {d}: expected {SAFE_SINGLE} or {SAFE_INDEX} with its shards.")


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """Reads tensors from a .safetensors file with plain reads into fresh tensors (no mmap).

    Memory-mapping would keep every page it touched resident next to the copy we make of it, doubling peak RSS
    during a load; reading each tensor straight into its own buffer keeps the peak near the model's size.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if not 0 < n < 100 * 1024**2:
                    raise ValueError(f"header length {n} is implausible")
                header = json.loads(f.read(n))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}).") from e
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            dtype = _ST_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {key} has unsupported dtype {info.get('dtype')!r}.")
            start, end = info["data_offsets"]
            self.entries[key] = (dtype, tuple(info["shape"]), start, end)

    def keys(self):
        return self.entries.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][1]

    def get_tensor(self, key: str) -> torch.Tensor:
        dtype, shape, start, end = self.entries[key]
        out = torch.empty(shape, dtype=dtype)
        nbytes = out.numel() * out.element_size()
        if nbytes != end - start:
            raise CheckpointError(f"{self.path}: tensor {key} has {end - start} bytes for shape {shape} and {dtype}.")
        if nbytes:
            buf = memoryview(out.view(-1).view(torch.uint8).numpy())
            with open(self.path, "rb") as f:
                f.seek(self.base + start)
                if f.readinto(buf) != nbytes:
                    raise CheckpointError(f"{self.path} is truncated: tensor {key} is incomplete. Download it again.")
        return out


class TensorReader(Mapping[str, torch.Tensor]):
    """Read-only mapping key -> tensor over all weight files; each tensor is read when asked for."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, Path] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        self._safe: dict[Path, SafetensorsFile] = {}
        for f in files:
            if f.suffix == ".safetensors":
                self._safe[f] = SafetensorsFile(f)
                keys = self._safe[f].keys()
            else:
                self._bins[f] = _load_bin(f)
                keys = self._bins[f].keys()
            for k in keys:
                self._where[k] = f

    def __getitem__(self, key: str) -> torch.Tensor:
        f = self._where[key]
        if f in self._bins:
            return self._bins[f][key]
        return self._safe[f].get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        f = self._where[key]
        if f in self._bins:
            return tuple(self._bins[f][key].shape)
        return self._safe[f].shape(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where


def _load_bin(f: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(os.fspath(f), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(
            f"{f} is a pickle checkpoint that cannot be loaded safely (weights_only=True refused it: {e}). "
            "zamba2vl never unpickles arbitrary code; convert it to safetensors with a trusted tool first."
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{f} does not hold a flat dict of tensors.")
    return sd


def open_weights(model_dir: str | os.PathLike) -> TensorReader:
    return TensorReader(weight_files(model_dir))


# -------------------------------------------------------------------------------------- filling a module


def _expected_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name (shared parameters appear under their first name only)."""
    return dict(module.state_dict(keep_vars=True))


def assign_weights(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    dtype: torch.dtype | None = None,
    allow_missing: Collection[str] = (),
) -> None:
    """Put ``state`` into ``module``'s parameters, checking names and shapes first.

    Raises CheckpointError naming every missing key, every unexpected key and, for a mis-shaped tensor, the key
    with both shapes. Floating tensors are converted to ``dtype`` (or to the parameter's dtype when the module
    lives on a real device and ``dtype`` is None). Works for modules on the meta device (tensors are assigned,
    not copied).
    """
    expected = _expected_tensors(module)
    missing = [k for k in expected if k not in state and k not in allow_missing]
    unexpected = [k for k in state if k not in expected]
    wrong = []
    for k, v in state.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            wrong.append(f"{k}: checkpoint has {tuple(v.shape)}, model expects {tuple(expected[k].shape)}")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(
            f"unexpected {len(unexpected)} tensor(s): " + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else "")
        )
    if wrong:
        problems.append("mis-shaped tensor(s): " + "; ".join(wrong[:20]))
    if problems:
        raise CheckpointError(
            f"the weights in {source} do not fit this model's config: " + " | ".join(problems)
            + ". Check that config.json belongs to these weights."
        )

    for name, value in state.items():
        target = expected[name]
        want_dtype = dtype if dtype is not None else (target.dtype if target.device.type != "meta" else value.dtype)
        if value.is_floating_point() and value.dtype != want_dtype:
            value = value.to(want_dtype)
        _set_tensor(module, name, value, target)


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, target: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = module
    for p in path:
        owner = getattr(owner, p)
    if target.device.type == "meta":
        if isinstance(target, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(value, requires_grad=target.requires_grad))
        else:
            owner._buffers[leaf] = value
    else:
        with torch.no_grad():
            if target.dtype != value.dtype:
                # Caller asked for a dtype change of a materialised module: replace the tensor.
                if isinstance(target, nn.Parameter):
                    setattr(owner, leaf, nn.Parameter(value.to(target.device), requires_grad=target.requires_grad))
                else:
                    owner._buffers[leaf] = value.to(target.device)
            else:
                target.copy_(value)


# ------------------------------------------------------------------------------------------------ writing


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, *, max_shard_bytes: int = 4 * 1024**3
) -> list[str]:
    """Write tensors as model.safetensors, or as shards plus model.safetensors.index.json if they are large."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v.detach().contiguous()
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.fspath(out / SAFE_SINGLE), metadata=meta)
        return [SAFE_SINGLE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    total = 0
    for name, shard in zip(names, shards):
        save_file(shard, os.fspath(out / name), metadata=meta)
        for k, v in shard.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (out / SAFE_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names
