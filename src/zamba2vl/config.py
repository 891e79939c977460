"""Configuration dataclasses for the Zamba2 language model, the Qwen2.5-VL vision tower and Zamba2-VL.

Every config is built from a Hub ``config.json`` dict with ``from_dict`` and written back with ``to_dict``.
Derived quantities (head dims, Mamba head dim, hybrid layer ids, ...) are computed in ``__post_init__`` and
only there, exactly as the reference ``Zamba2Config.__init__`` does: values of the same name in the file are
overwritten, because the reference overwrites them too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from zamba2vl.errors import ConfigError


def _default_layers_block_type() -> list[str]:
    # The reference's default layout (Zamba2-2.7B): used only when config.json has no layers_block_type.
    return (
        ["mamba"]
        + (["mamba"] * 5 + ["hybrid"]) * 7
        + ["mamba"] * 4
        + ["hybrid"]
        + ["mamba"] * 3
        + ["hybrid"]
        + ["mamba"] * 2
    )


def _from_dict(cls, d: dict[str, Any], aliases: dict[str, str] | None = None):
    """Fill a dataclass from a dict: known init fields are taken, the rest is kept in ``extra``."""
    aliases = aliases or {}
    init_names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in d.items():
        name = aliases.get(key, key)
        if name in init_names and name != "extra":
            kwargs[name] = value
        else:
            extra[key] = value
    if "extra" in init_names:
        kwargs["extra"] = extra
    return cls(**kwargs)


def _to_dict(obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name == "extra":
            continue
        out[f.name] = getattr(obj, f.name)
    out.update(obj.extra)
    return out


@dataclass
class Zamba2TextConfig:
    """The Zamba2 hybrid language model (reference: ``Zamba2Config``, model_type ``zamba2``)."""

    vocab_size: int = 32000
    hidden_size: int = 2560
    num_hidden_layers: int = 54
    layers_block_type: list[str] | None = None
    mamba_d_state: int = 64
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_ngroups: int = 1
    n_mamba_heads: int = 8
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: list[float] | None = None
    use_conv_bias: bool = True
    chunk_size: int = 256
    add_bias_linear: bool = False
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    num_mem_blocks: int = 1
    use_shared_attention_adapter: bool = False
    adapter_rank: int = 128
    use_mem_rope: bool = False
    rope_theta: float = 10000.0
    use_long_context: bool = False
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    model_type: str = "zamba2"
    # Runtime-only switch (not in Hub files): clamp dt >= time_step_min after softplus, as the reference's
    # pure-torch path does. The CUDA-kernel path (what the released model was run with) does not clamp.
    dt_clamp_to_time_step_min: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # Derived (always recomputed; see module docstring).
    attention_hidden_size: int = field(init=False)
    attention_head_dim: int = field(init=False)
    mamba_headdim: int = field(init=False)
    d_inner: int = field(init=False)
    conv_dim: int = field(init=False)
    in_proj_dim: int = field(init=False)
    hybrid_layer_ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.layers_block_type is None:
            self.layers_block_type = _default_layers_block_type()
        self.layers_block_type = list(self.layers_block_type)
        if len(self.layers_block_type) != self.num_hidden_layers:
            raise ConfigError(
                f"layers_block_type has {len(self.layers_block_type)} entries but num_hidden_layers is "
                f"{self.num_hidden_layers}; the two must agree (check config.json)."
            )
        bad = sorted(set(self.layers_block_type) - {"mamba", "hybrid"})
        if bad:
            raise ConfigError(f"layers_block_type may only contain 'mamba' and 'hybrid', found {bad}.")
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.attention_hidden_size = 2 * self.hidden_size
        self.attention_head_dim = 2 * self.hidden_size // self.num_attention_heads
        self.d_inner = int(self.mamba_expand * self.hidden_size)
        if self.d_inner % self.n_mamba_heads:
            raise ConfigError(
                f"mamba_expand*hidden_size = {self.d_inner} is not divisible by n_mamba_heads = {self.n_mamba_heads}."
            )
        self.mamba_headdim = self.d_inner // self.n_mamba_heads
        if self.n_mamba_heads % self.mamba_ngroups:
            raise ConfigError(
                f"n_mamba_heads = {self.n_mamba_heads} is not divisible by mamba_ngroups = {self.mamba_ngroups}."
            )
        self.conv_dim = self.d_inner + 2 * self.mamba_ngroups * self.mamba_d_state
        self.in_proj_dim = 2 * self.d_inner + 2 * self.mamba_ngroups * self.mamba_d_state + self.n_mamba_heads
        self.hybrid_layer_ids = [i for i, t in enumerate(self.layers_block_type) if t == "hybrid"]
        if self.use_long_context:
            if self.use_mem_rope:
                d = self.attention_head_dim
                self.rope_theta = self.rope_theta * 8 ** (d / (d - 2))
            self.max_position_embeddings = 16384

    # ------------------------------------------------------------------ helpers
    @property
    def num_hybrid_layers(self) -> int:
        return len(self.hybrid_layer_ids)

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def block_for_layer(self, layer_idx: int) -> tuple[int, int]:
        """(shared block index, adapter slot) used by hybrid layer ``layer_idx``."""
        visit = self.hybrid_layer_ids.index(layer_idx)
        return visit % self.num_mem_blocks, visit

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Zamba2TextConfig":
        d = dict(d)
        # Derived keys in the file are ignored: the reference recomputes them.
        for name in ("attention_hidden_size", "attention_head_dim", "mamba_headdim", "hybrid_layer_ids",
                     "kv_channels", "num_query_groups", "d_inner", "conv_dim", "in_proj_dim"):
            d.pop(name, None)
        mt = d.get("model_type", "zamba2")
        if mt != "zamba2":
            raise ConfigError(f"text config has model_type {mt!r}; zamba2vl only runs 'zamba2' language models.")
        if "n_mamba_heads" not in d:
            warnings.warn("config.json has no n_mamba_heads; using the reference default of 8.", stacklevel=2)
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        out = _to_dict(self)
        out.pop("dt_clamp_to_time_step_min")
        for name in ("d_inner", "conv_dim", "in_proj_dim"):
            out.pop(name)
        return out


@dataclass
class VisionConfig:
    """The Qwen2.5-VL vision transformer and patch merger (reference: ``Qwen2_5_VLVisionConfig``)."""

    depth: int = 32
    hidden_size: int = 1280
    hidden_act: str = "silu"
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 1
    tokens_per_second: int = 4
    window_size: int = 112
    out_hidden_size: int = 2048
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    model_type: str = "qwen2_5_vl"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fullatt_block_indexes = list(self.fullatt_block_indexes)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merged_dim(self) -> int:
        return self.hidden_size * self.spatial_merge_size**2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        d = dict(d)
        if "in_chans" in d and "in_channels" not in d:
            d["in_channels"] = d.pop("in_chans")
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass
class Zamba2VLConfig:
    """Zamba2-VL: vision tower + merger + Zamba2 language model (model_type ``zamba2_vl``)."""

    text_config: Zamba2TextConfig = field(default_factory=Zamba2TextConfig)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    image_token_index: int = 32000
    model_type: str = "zamba2_vl"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vision_config.out_hidden_size != self.text_config.hidden_size:
            raise ConfigError(
                f"vision_config.out_hidden_size ({self.vision_config.out_hidden_size}) must equal "
                f"text_config.hidden_size ({self.text_config.hidden_size}): the merger writes into the LM's width."
            )
        if not 0 <= self.image_token_index < self.text_config.vocab_size:
            raise ConfigError(
                f"image_token_index {self.image_token_index} is outside the vocabulary (size "
                f"{self.text_config.vocab_size}); config.json must set image_token_index to the id of the image token."
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Zamba2VLConfig":
        d = dict(d)
        mt = d.get("model_type")
        if mt != "zamba2_vl":
            raise ConfigError(
                f"config.json has model_type {mt!r}; a Zamba2-VL checkpoint must say 'zamba2_vl'. "
                "For a text-only Zamba2 checkpoint use zamba2vl.Zamba2LM.from_pretrained."
            )
        text = d.pop("text_config", None)
        vision = d.pop("vision_config", None)
        if text is None or vision is None:
            raise ConfigError("config.json of model_type 'zamba2_vl' needs both text_config and vision_config.")
        if "model_type" not in text:
            # The reference would silently fall back to qwen2 here; that can only be a broken file.
            raise ConfigError("text_config has no model_type; it must say 'zamba2'.")
        d["text_config"] = Zamba2TextConfig.from_dict(text)
        d["vision_config"] = VisionConfig.from_dict(vision)
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "model_type": self.model_type,
            "text_config": self.text_config.to_dict(),
            "vision_config": self.vision_config.to_dict(),
            "image_token_index": self.image_token_index,
        }
        out.update(self.extra)
        return out


def load_config_json(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"no config.json at {path}; a model folder must contain the Hub config.json.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}).") from e


# ---------------------------------------------------------------------------------------------- presets


def _layers(n: int, hybrid: list[int]) -> list[str]:
    return ["hybrid" if i in hybrid else "mamba" for i in range(n)]


def text_preset(size: str, vocab_size: int = 32064) -> Zamba2TextConfig:
    """Language-model shapes of Zamba2-VL-1.2B / 2.7B / 7B (spec section 2.3)."""
    common = dict(vocab_size=vocab_size, mamba_d_conv=4, mamba_expand=2, num_attention_heads=32,
                  adapter_rank=128, chunk_size=256, rms_norm_eps=1e-5, max_position_embeddings=4096)
    if size == "1.2b":
        return Zamba2TextConfig(
            hidden_size=2048, num_hidden_layers=38, layers_block_type=_layers(38, [5, 11, 17, 23, 29, 35]),
            num_mem_blocks=1, mamba_d_state=128, mamba_ngroups=1, n_mamba_heads=64,
            use_mem_rope=True, use_shared_attention_adapter=True, **common)
    if size == "2.7b":
        return Zamba2TextConfig(
            hidden_size=2560, num_hidden_layers=54,
            layers_block_type=_layers(54, [6, 12, 18, 24, 30, 36, 42, 47, 51]),
            num_mem_blocks=2, mamba_d_state=64, mamba_ngroups=1, n_mamba_heads=80,
            use_mem_rope=False, use_shared_attention_adapter=False, **common)
    if size == "7b":
        return Zamba2TextConfig(
            hidden_size=3584, num_hidden_layers=81,
            layers_block_type=_layers(81, [6, 11, 17, 23, 29, 35, 41, 47, 53, 59, 65, 71, 77]),
            num_mem_blocks=2, mamba_d_state=64, mamba_ngroups=2, n_mamba_heads=112,
            use_mem_rope=True, use_shared_attention_adapter=False, **common)
    raise ValueError(f"unknown size {size!r}; choose one of {PRESET_SIZES}")


PRESET_SIZES = ("1.2b", "2.7b", "7b")


def vision_preset(out_hidden_size: int) -> VisionConfig:
    return VisionConfig(out_hidden_size=out_hidden_size)


def vl_preset(size: str) -> Zamba2VLConfig:
    text = text_preset(size)
    return Zamba2VLConfig(text_config=text, vision_config=vision_preset(text.hidden_size), image_token_index=32000)
