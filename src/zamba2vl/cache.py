"""Hybrid decoding state of Zamba2: a conv state and an SSM state per layer, and a KV cache per hybrid layer.

The Mamba2 states have a fixed size whatever the context length (the point of the architecture); only the
hybrid layers' keys and values grow. KV buffers are preallocated with spare capacity and grown geometrically,
so decode steps write in place. The SSM state is kept in float32 (the reference stores it in the model dtype;
float32 is the more accurate choice and costs little since it is small).
"""

from __future__ import annotations

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
