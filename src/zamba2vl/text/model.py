"""The Zamba2 hybrid language model: Mamba2 layers with shared transformer blocks (spec 6).

Module tree (parameter names follow the Hub checkpoints, except that shared blocks live once in
``model.blocks.{b}`` instead of once per hybrid layer; ``text.weights`` maps between the two):

    Zamba2LM
      model: Zamba2Model
        embed_tokens        [V, h]
        layers[i]           MambaLayer (input_layernorm, mamba) or HybridLayer (linear, mamba_decoder)
        blocks[b]           SharedTransformerBlock, b < num_mem_blocks
        final_layernorm     [h]
      lm_head               [V, h], only when embeddings are not tied
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.cache import HybridCache
from zamba2vl.config import Zamba2TextConfig
from zamba2vl.errors import InputError
from zamba2vl.ops.attention import MAX_QUERY_ROWS, OffsetCausal
from zamba2vl.ops.norms import RMSNorm
from zamba2vl.ops.precision import linear, linear_module
from zamba2vl.text.mamba2 import MambaLayer
from zamba2vl.text.shared_block import SharedTransformerBlock, attention_mask_for, rope_cos_sin


class HybridLayer(nn.Module):
    """t = linear(SharedBlock(concat(x, e))); x = x + Mamba(RMSNorm(x + t))."""

    def __init__(self, config: Zamba2TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.block_id, self.slot = config.block_for_layer(layer_idx)
        self.linear = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.mamba_decoder = MambaLayer(config, layer_idx)

    def forward(self, x, original, block, rope, attn_mask, cache, mamba_mask, segments=None):
        t = block(x, original, self.slot, self.layer_idx, rope, attn_mask, cache)
        return self.mamba_decoder(x, cache, mamba_mask, injected=linear_module(t, self.linear), segments=segments)


class Zamba2Model(nn.Module):
    def __init__(self, config: Zamba2TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            HybridLayer(config, i) if t == "hybrid" else MambaLayer(config, i)
            for i, t in enumerate(config.layers_block_type)
        )
        self.blocks = nn.ModuleList(SharedTransformerBlock(config, b) for b in range(config.num_mem_blocks))
        self.final_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds, cache, new_mask, positions, segments=None):
        """``segments`` [b, L] (integer ids; training's packed rows: each row several samples one after another,
        each sample's tokens contiguous) makes every sample of a row run as if it were alone: attention stays within
        a sample, the Mamba layers' conv and state restart at each sample's first token. ``positions`` then count
        from 0 in each sample (rotary). No cache and no padding mask with it: padding is a segment of its own."""
        b, L, _ = inputs_embeds.shape
        c = self.config
        if segments is not None:
            if cache is not None or new_mask is not None:
                raise ValueError("packed sequences (segments) run without a cache or a padding mask")
            return self._forward_packed(inputs_embeds, positions, segments)
        past = cache.length if cache is not None else 0
        if cache is not None:
            cache.reserve(L)
            cache.key_valid[:, past : past + L] = True if new_mask is None else new_mask
            key_valid = cache.key_valid[:, : past + L]
        else:
            key_valid = new_mask if new_mask is not None else None
        padded = key_valid is not None and not bool(key_valid.all())
        attn_mask = None
        if past > 0 and L > MAX_QUERY_ROWS and not padded:
            attn_mask = OffsetCausal(past)  # a prompt piece: masks built per block of queries, not L x (past + L)
        elif padded or (past > 0 and L > 1):
            kv = key_valid if key_valid is not None else torch.ones(b, past + L, dtype=torch.bool, device=inputs_embeds.device)
            attn_mask = attention_mask_for(kv, L, past)
        rope = rope_cos_sin(positions, c.attention_head_dim, c.rope_theta, inputs_embeds.dtype) if c.use_mem_rope else None
        mamba_mask = new_mask if new_mask is not None and not bool(new_mask.all()) else None

        x = inputs_embeds
        original = inputs_embeds
        for layer in self.layers:
            if isinstance(layer, HybridLayer):
                args = (x, original, self.blocks[layer.block_id], rope, attn_mask, cache, mamba_mask)
            else:
                args = (x, cache, mamba_mask)
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        if cache is not None:
            cache.length = past + L
            cache.positions += L if new_mask is None else new_mask.sum(1)
        return self.final_layernorm(x)

    def _forward_packed(self, inputs_embeds, positions, segments):
        c = self.config
        L = inputs_embeds.shape[1]
        idx = torch.arange(L, device=inputs_embeds.device)
        causal = idx[None, :] <= idx[:, None]  # [q, k]
        attn_mask = (causal[None] & (segments[:, :, None] == segments[:, None, :]))[:, None]  # [b, 1, L, L]
        rope = None
        if c.use_mem_rope:
            rope = rope_cos_sin(positions, c.attention_head_dim, c.rope_theta, inputs_embeds.dtype)
        x = original = inputs_embeds
        for layer in self.layers:
            if isinstance(layer, HybridLayer):
                args = (x, original, self.blocks[layer.block_id], rope, attn_mask, None, None, segments)
            else:
                args = (x, None, None, None, segments)
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.final_layernorm(x)


@dataclass
class LMOutput:
    logits: torch.Tensor
    cache: HybridCache | None = None
    hidden_states: torch.Tensor | None = None


class Zamba2LM(nn.Module):
    """Zamba2 language model with its output head. ``forward`` returns logits (and the updated cache)."""

    def __init__(self, config: Zamba2TextConfig):
        super().__init__()
        self.config = config
        self.model = Zamba2Model(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # ---------------------------------------------------------------------------------------- properties
    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def new_cache(self, batch_size: int, capacity: int = 256) -> HybridCache:
        return HybridCache.empty(self.config, batch_size, dtype=self.dtype, device=self.device, capacity=capacity)

    # --------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
    ) -> LMOutput:
        """Run the model on new tokens.

        ``attention_mask`` (1 = real, 0 = padding) covers either the new tokens or the whole history
        (cached + new, Hugging Face style). Position ids default to the count of real tokens before each token,
        so left-padded rows get the positions they would have alone. A given ``cache`` is updated in place.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            if input_ids.dim() == 1:
                input_ids = input_ids[None]
            if input_ids.numel() and (int(input_ids.max()) >= self.config.vocab_size or int(input_ids.min()) < 0):
                raise InputError(
                    f"token ids must lie in [0, {self.config.vocab_size}); got ids from {int(input_ids.min())} "
                    f"to {int(input_ids.max())}. Is the tokenizer the one that belongs to this checkpoint?"
                )
            inputs_embeds = self.embed(input_ids)
        b, L, _ = inputs_embeds.shape
        if use_cache and cache is None:
            cache = self.new_cache(b, capacity=max(256, L))
        if cache is not None and cache.batch_size != b:
            raise InputError(f"cache holds {cache.batch_size} rows but the input has {b}")
        past = cache.length if cache is not None else 0

        new_mask = None
        if attention_mask is not None:
            m = attention_mask.to(torch.bool)
            if m.shape[1] == past + L and past > 0:
                m = m[:, past:]
            if m.shape != (b, L):
                raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({b}, {L}) or ({b}, {past + L})")
            new_mask = None if bool(m.all()) else m

        if position_ids is None:
            base = cache.positions[:, None] if cache is not None else torch.zeros(b, 1, dtype=torch.long, device=inputs_embeds.device)
            if new_mask is None:
                position_ids = base + torch.arange(L, device=inputs_embeds.device)[None]
            else:
                position_ids = (base + new_mask.long().cumsum(1) - 1).clamp(min=0)
        elif position_ids.dim() == 1:
            position_ids = position_ids[None].expand(b, -1)

        hidden = self.model(inputs_embeds, cache, new_mask, position_ids)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = linear(hidden, self.output_weight)  # few rows (decode): through a packed copy if there is one
        return LMOutput(logits=logits, cache=cache, hidden_states=hidden if return_hidden else None)

    # -------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str = "cpu",
        revision: str | None = None,
        **config_overrides,
    ) -> "Zamba2LM":
        """Load a text-only Zamba2 checkpoint, or the language model of a Zamba2-VL checkpoint."""
        from zamba2vl.text.weights import load_text_model

        return load_text_model(cls, path, dtype=dtype, device=device, revision=revision, **config_overrides)

    def save_pretrained(self, out_dir: str | os.PathLike, *, max_shard_bytes: int = 4 * 1024**3) -> None:
        from zamba2vl.text.weights import save_text_model

        save_text_model(self, out_dir, max_shard_bytes=max_shard_bytes)
