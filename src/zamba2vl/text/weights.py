"""Mapping between Hub checkpoint names and the Zamba2 language model's parameters (spec 10.3).

Hub names carry a shared block once per hybrid layer (``model.layers.{i}.shared_transformer.*``); we keep each
block once (``model.blocks.{b}.*``). Any hybrid layer's copy of a block is accepted; if a checkpoint holds
several copies that differ, the last one read wins (as in the reference) and a warning says so.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from zamba2vl.checkpoint import TensorReader, assign_weights, open_weights, resolve_model_dir, save_safetensors
from zamba2vl.config import Zamba2TextConfig, load_config_json
from zamba2vl.errors import CheckpointError, ConfigError

# Prefixes under which a language model's keys may sit, mapped to our "model." / "lm_head." roots.
_LM_PREFIXES = (
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.language_model.model.", "model."),
    ("model.language_model.", "model."),
    ("model.", "model."),
    ("lm_head.", "lm_head."),
)
_VISION_PREFIXES = ("vision_tower.", "model.vision_tower.", "visual.", "model.visual.")
_SHARED = re.compile(r"^model\.layers\.(\d+)\.shared_transformer\.(.+)$")
_SLOT = re.compile(r"adapter_list\.(\d+)\.")


def is_vision_key(key: str) -> bool:
    return key.startswith(_VISION_PREFIXES)


def normalize_lm_key(key: str) -> str | None:
    """Hub key -> our root-relative key ('model.…' or 'lm_head.…'), or None if it is not a language-model key."""
    if is_vision_key(key):
        return None
    for prefix, root in _LM_PREFIXES:
        if key.startswith(prefix):
            return root + key[len(prefix):]
    return None


class _RemappedTensors(Mapping[str, torch.Tensor]):
    """Our parameter name -> tensor, read lazily from the checkpoint (duplicates compared when read)."""

    def __init__(self, reader: TensorReader, sources: dict[str, list[str]]):
        self.reader = reader
        self.sources = sources

    def __getitem__(self, key: str) -> torch.Tensor:
        names = self.sources[key]
        value = self.reader[names[-1]]
        for other in names[:-1]:
            if self.reader.shape(other) != tuple(value.shape) or not torch.equal(self.reader[other], value):
                warnings.warn(
                    f"checkpoint holds differing copies of shared tensor {key} ({other} vs {names[-1]}); "
                    f"using {names[-1]} as the reference implementation would.", stacklevel=3)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)


def map_lm_keys(keys, config: Zamba2TextConfig) -> tuple[dict[str, list[str]], list[str]]:
    """Group checkpoint keys by the parameter they fill. Returns (sources, unexpected keys)."""
    sources: dict[str, list[str]] = {}
    unexpected: list[str] = []
    for key in keys:
        ours = normalize_lm_key(key)
        if ours is None:
            if not is_vision_key(key):
                unexpected.append(key)
            continue
        m = _SHARED.match(ours)
        if m:
            layer, rest = int(m.group(1)), m.group(2)
            if layer not in config.hybrid_layer_ids:
                raise CheckpointError(
                    f"{key}: a shared-block tensor under layer {layer}, which is not a hybrid layer of this config "
                    f"(hybrid layers: {config.hybrid_layer_ids}). Check that config.json belongs to these weights."
                )
            block, _ = config.block_for_layer(layer)
            s = _SLOT.search(rest)
            if s and int(s.group(1)) % config.num_mem_blocks != block:
                raise CheckpointError(
                    f"{key}: adapter slot {s.group(1)} does not belong to shared block {block} "
                    f"(slot mod num_mem_blocks must equal the block index; num_mem_blocks={config.num_mem_blocks})."
                )
            ours = f"model.blocks.{block}.{rest}"
        sources.setdefault(ours, []).append(key)
    return sources, unexpected


def load_text_state(model: torch.nn.Module, reader: TensorReader, config: Zamba2TextConfig, *, source: str,
                    dtype: torch.dtype | None) -> None:
    sources, unexpected = map_lm_keys(list(reader), config)
    if unexpected:
        raise CheckpointError(
            f"the weights in {source} contain tensors that belong to no part of a Zamba2 model: "
            + ", ".join(unexpected[:20]) + ". Is this a Zamba2 checkpoint?"
        )
    if config.tie_word_embeddings and "lm_head.weight" in sources:
        head = sources.pop("lm_head.weight")
        embed = sources.get("model.embed_tokens.weight")
        if embed and not torch.equal(reader[head[-1]], reader[embed[-1]]):
            warnings.warn(
                "tie_word_embeddings is true but the checkpoint's lm_head.weight differs from embed_tokens; "
                "the output head uses embed_tokens (as the reference does).", stacklevel=2)
    assign_weights(model, _RemappedTensors(reader, sources), source=source, dtype=dtype)


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "auto": None}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def text_config_from_json(d: dict) -> tuple[Zamba2TextConfig, str]:
    """(text config, description of where the LM lives) from a text-only or a VL config.json."""
    mt = d.get("model_type")
    if mt == "zamba2":
        return Zamba2TextConfig.from_dict(d), "zamba2"
    if mt == "zamba2_vl":
        text = dict(d.get("text_config") or {})
        if text.get("model_type") != "zamba2":
            raise ConfigError("text_config of this zamba2_vl config.json must have model_type 'zamba2'.")
        return Zamba2TextConfig.from_dict(text), "zamba2_vl"
    raise ConfigError(f"config.json has model_type {mt!r}; expected 'zamba2' or 'zamba2_vl'.")


def load_text_model(cls, path, *, dtype=None, device="cpu", revision=None, **config_overrides):
    folder = resolve_model_dir(path, revision=revision)
    config, _ = text_config_from_json(load_config_json(folder))
    for k, v in config_overrides.items():
        if not hasattr(config, k):
            raise TypeError(f"unknown config override {k!r}")
        setattr(config, k, v)
    config.__post_init__()
    dtype = _parse_dtype(dtype)
    reader = open_weights(folder)
    with torch.device("meta"):
        model = cls(config)
    if dtype is None:
        first = next(iter(reader))
        dtype = reader[first].dtype if reader[first].is_floating_point() else torch.float32
    load_text_state(model, reader, config, source=str(folder), dtype=dtype)
    return model.to(device).eval()


def text_hub_state(model) -> dict[str, torch.Tensor]:
    """Our parameters under Hub names: block b is written under the b-th hybrid layer (visit b uses block b)."""
    config: Zamba2TextConfig = model.config
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        m = re.match(r"^model\.blocks\.(\d+)\.(.+)$", name)
        if m:
            layer = config.hybrid_layer_ids[int(m.group(1))]
            name = f"model.layers.{layer}.shared_transformer.{m.group(2)}"
        out[name] = t
    return out


def save_text_model(model, out_dir, *, max_shard_bytes: int) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["architectures"] = ["Zamba2ForCausalLM"]
    cfg["torch_dtype"] = str(model.dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_safetensors(text_hub_state(model), out, max_shard_bytes=max_shard_bytes)


__all__ = ["load_text_model", "save_text_model", "map_lm_keys", "normalize_lm_key", "text_hub_state"]
