"""Hybrid decoding state of Zamba2: a conv state and an SSM state per layer, and a KV cache per hybrid layer.

The Mamba2 states have a fixed size whatever the context length (the point of the architecture); only the
hybrid layers' keys and values grow. KV buffers are preallocated with spare capacity and grown geometrically,
so decode steps write in place. The SSM state is kept in float32 (the reference stores it in the model dtype;
float32 is the more accurate choice and costs little since it is small).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zamba2vl.config import Zamba2TextConfig


@dataclass
class HybridCache:
    conv_states: torch.Tensor  # [layers, b, conv_dim, K] pre-activation inputs of the causal conv
    ssm_states: torch.Tensor  # [layers, b, nh, P, N] float32
    keys: torch.Tensor  # [hybrid layers, b, nKV, capacity, dA]
    values: torch.Tensor  # [hybrid layers, b, nKV, capacity, dA]
    key_valid: torch.Tensor  # [b, capacity] bool: False for padding positions
    positions: torch.Tensor  # [b] int64: next RoPE position of each row (= real tokens seen)
    length: int = 0  # tokens (padding included) stored so far
    hybrid_slot: dict[int, int] | None = None  # global layer index -> row of keys/values

    @classmethod
    def empty(
        cls,
        config: Zamba2TextConfig,
        batch_size: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        capacity: int = 256,
    ) -> "HybridCache":
        c = config
        nhyb = len(c.hybrid_layer_ids)
        return cls(
            conv_states=torch.zeros(c.num_hidden_layers, batch_size, c.conv_dim, c.mamba_d_conv, dtype=dtype, device=device),
            ssm_states=torch.zeros(
                c.num_hidden_layers, batch_size, c.n_mamba_heads, c.mamba_headdim, c.mamba_d_state,
                dtype=torch.float32, device=device,
            ),
            keys=torch.zeros(nhyb, batch_size, c.num_key_value_heads, capacity, c.attention_head_dim, dtype=dtype, device=device),
            values=torch.zeros(nhyb, batch_size, c.num_key_value_heads, capacity, c.attention_head_dim, dtype=dtype, device=device),
            key_valid=torch.zeros(batch_size, capacity, dtype=torch.bool, device=device),
            positions=torch.zeros(batch_size, dtype=torch.long, device=device),
            length=0,
            hybrid_slot={layer: i for i, layer in enumerate(c.hybrid_layer_ids)},
        )

    def __repr__(self) -> str:
        return (f"HybridCache(batch={self.batch_size}, length={self.length}, capacity={self.capacity}, "
                f"layers={self.conv_states.shape[0]}, dtype={self.keys.dtype})")

    @property
    def batch_size(self) -> int:
        return self.conv_states.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more positions (grows by at least 2x to keep appends amortised)."""
        need = self.length + new_tokens
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity)
        grow = cap - self.capacity
        pad_kv = lambda t: torch.cat([t, t.new_zeros(*t.shape[:3], grow, t.shape[4])], dim=3)  # noqa: E731
        self.keys = pad_kv(self.keys)
        self.values = pad_kv(self.values)
        self.key_valid = torch.cat([self.key_valid, self.key_valid.new_zeros(self.batch_size, grow)], dim=1)

    def append_kv(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [b, nKV, L, dA] at positions length..length+L (``reserve`` first); return all keys/values."""
        slot = self.hybrid_slot[layer_idx]
        L = k.shape[2]
        end = self.length + L
        self.keys[slot, :, :, self.length : end] = k
        self.values[slot, :, :, self.length : end] = v
        return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]

    def nbytes(self) -> dict[str, int]:
        """Bytes of state actually in use (KV counted up to ``length``)."""
        per_pos = self.keys[:, :, :, :1].numel() * self.keys.element_size()
        return {
            "conv": self.conv_states.numel() * self.conv_states.element_size(),
            "ssm": self.ssm_states.numel() * self.ssm_states.element_size(),
            "kv": 2 * per_pos * self.length,
        }

    def select(self, rows: torch.Tensor | list[int]) -> "HybridCache":
        """A new cache holding only the given batch rows (for batch scheduling and beam bookkeeping)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.conv_states.device)
        return HybridCache(
            conv_states=self.conv_states[:, idx].clone(),
            ssm_states=self.ssm_states[:, idx].clone(),
            keys=self.keys[:, idx].clone(),
            values=self.values[:, idx].clone(),
            key_valid=self.key_valid[idx].clone(),
            positions=self.positions[idx].clone(),
            length=self.length,
            hybrid_slot=dict(self.hybrid_slot),
        )

    def clone(self) -> "HybridCache":
        return self.select(list(range(self.batch_size)))

    @classmethod
    def merge(cls, caches: Sequence["HybridCache"]) -> "HybridCache":
        """One new cache holding the rows of ``caches`` in order (continuous batching: rows join a running batch).

        Caches of different lengths are aligned on their last position: a shorter cache's keys and values move right
        and the columns in front of them are marked invalid, as left padding is, so attention never sees them. RoPE
        positions are per row, so every row keeps the positions it had alone. Leading columns that no row of a cache
        uses are dropped, so ``merge([cache])`` also compacts a cache whose long rows have left (``select``).
        Spare capacity is the largest any input had, so rows keep appending in place.
        """
        assert caches, "merge needs at least one cache"
        first = caches[0]
        for c in caches[1:]:
            assert c.hybrid_slot == first.hybrid_slot and c.keys.dtype == first.keys.dtype, "caches of different models"
            assert c.keys.device == first.keys.device, "caches on different devices"
            assert c.conv_states.shape[::2] == first.conv_states.shape[::2], "caches of different models"
            assert c.keys.shape[::2] == first.keys.shape[::2], "caches of different models"
        spans = []  # (first used column, length) of each cache
        for c in caches:
            used = c.key_valid[:, : c.length].any(0)  # [length]
            start = int(used.to(torch.int8).argmax()) if bool(used.any()) else c.length
            spans.append((start, c.length))
        length = max(end - start for start, end in spans)
        capacity = length + max(c.capacity - c.length for c in caches)
        batch = sum(c.batch_size for c in caches)
        nhyb, _, nkv, _, head_dim = first.keys.shape
        keys = first.keys.new_zeros(nhyb, batch, nkv, capacity, head_dim)
        values = first.values.new_zeros(nhyb, batch, nkv, capacity, head_dim)
        key_valid = first.key_valid.new_zeros(batch, capacity)
        row = 0
        for c, (start, end) in zip(caches, spans):
            rows, cols = slice(row, row + c.batch_size), slice(length - (end - start), length)
            keys[:, rows, :, cols] = c.keys[:, :, :, start:end]
            values[:, rows, :, cols] = c.values[:, :, :, start:end]
            key_valid[rows, cols] = c.key_valid[:, start:end]
            row += c.batch_size
        return cls(
            conv_states=torch.cat([c.conv_states for c in caches], dim=1),
            ssm_states=torch.cat([c.ssm_states for c in caches], dim=1),
            keys=keys,
            values=values,
            key_valid=key_valid,
            positions=torch.cat([c.positions for c in caches]),
            length=length,
            hybrid_slot=dict(first.hybrid_slot),
        )
