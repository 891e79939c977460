"""The shared transformer block of Zamba2 (spec 6.4) and its per-invocation LoRA adapters.

One block object serves several hybrid layers ("visits"). Visit k uses block k mod num_mem_blocks and adapter
slot k. A block holds adapter modules for every slot it serves and empty placeholders for the others, so its
parameter names are exactly the checkpoint's ``...shared_transformer.{name}`` names.

Precision: each sublayer (attention, MLP) follows ops.precision like the Mamba2 mixers and the vision tower. It
converts its input once to ``compute_dtype`` of its weights (the model dtype, or fp32 for a bf16/fp16 model on a
CPU without native low-precision GEMMs), runs its products (projections, LoRA adapters, SDPA) in that dtype with
the weights upcast per call (exact; no fp32 copy is kept, which would double a bf16 model's memory) and returns the
model dtype. In fp32, or where low precision is native (GPUs, AVX512-BF16/AMX CPUs), nothing is converted and the
computation is the plain one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.ops.norms import RMSNorm
from zamba2vl.ops.attention import (OffsetCausal, attention, cached_attention, offset_causal_attention,
                                    use_cached_attention)
from zamba2vl.ops.precision import compute_dtype, linear


def lora(in_dim: int, rank: int, out_dim: int) -> nn.Sequential:
    """Plain B(A(x)) with no bias and no scaling (checkpoint names ``.0.weight`` = A, ``.1.weight`` = B)."""
    return nn.Sequential(nn.Linear(in_dim, rank, bias=False), nn.Linear(rank, out_dim, bias=False))


def _lora(h: torch.Tensor, adapter: nn.Sequential) -> torch.Tensor:
    """``adapter(h)`` in h's dtype (see the module docstring)."""
    down, up = adapter
    return linear(linear(h, down.weight), up.weight)


def _adapter_list(config: Zamba2TextConfig, block_id: int, in_dim: int, out_dim: int) -> nn.ModuleList:
    return nn.ModuleList(
        lora(in_dim, config.adapter_rank, out_dim) if slot % config.num_mem_blocks == block_id else nn.Identity()
        for slot in range(config.num_hybrid_layers)
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for x [b, n, L, d] (a transposed view of [b, L, n, d] projections).

    Without autograd each half of the result is one product and one fused multiply-add written in place, two
    passes over x instead of five (negate, concatenate, two products, a sum), into a [b, L, n, d] buffer so the
    attention kernel sees the layout it saw before. With autograd, or mixed dtypes, the plain formula.
    """
    if (torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad)) or cos.dtype != x.dtype:
        return x * cos + rotate_half(x) * sin
    b, n, L, d = x.shape
    h = d // 2
    x1, x2 = x[..., :h], x[..., h:]
    out = torch.empty(b, L, n, d, dtype=x.dtype, device=x.device).transpose(1, 2)
    torch.mul(x1, cos[..., :h], out=out[..., :h]).addcmul_(x2, sin[..., :h], value=-1)
    torch.mul(x2, cos[..., h:], out=out[..., h:]).addcmul_(x1, sin[..., h:])
    return out


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [b, L] -> cos, sin [b, 1, L, head_dim]; computed in fp32 and cast to the activation dtype."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    ang = positions.float()[..., None] * inv_freq  # [b, L, head_dim/2]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


class SharedAttention(nn.Module):
    def __init__(self, config: Zamba2TextConfig, block_id: int):
        super().__init__()
        c = config
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.attention_head_dim
        self.scale = (self.head_dim / 2) ** -0.5  # the reference's scale: 1/sqrt(head_dim/2), not 1/sqrt(head_dim)
        A = c.attention_hidden_size
        self.q_proj = nn.Linear(A, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(A, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(A, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, c.hidden_size, bias=False)
        self.use_adapters = c.use_shared_attention_adapter
        if self.use_adapters:
            self.linear_q_adapter_list = _adapter_list(c, block_id, A, A)
            self.linear_k_adapter_list = _adapter_list(c, block_id, A, A)
            self.linear_v_adapter_list = _adapter_list(c, block_id, A, A)

    def forward(self, x, slot, layer_idx, rope, attn_mask, cache):
        b, L, _ = x.shape
        h = x.to(compute_dtype(self.q_proj.weight))
        q = linear(h, self.q_proj.weight, self.q_proj.bias)
        k = linear(h, self.k_proj.weight, self.k_proj.bias)
        v = linear(h, self.v_proj.weight, self.v_proj.bias)
        if self.use_adapters:
            q = q + _lora(h, self.linear_q_adapter_list[slot])
            k = k + _lora(h, self.linear_k_adapter_list[slot])
            v = v + _lora(h, self.linear_v_adapter_list[slot])
        q = q.view(b, L, self.n_heads, self.head_dim).transpose(1, 2)  # [b, nA, L, dA]
        k = k.view(b, L, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(b, L, self.n_kv, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append_kv(layer_idx, k, v)  # stored in the model dtype
        if cache is not None and use_cached_attention(q, k):  # decode over a low-precision cache: read it as stored
            o = cached_attention(q, k, v, self.scale, attn_mask)
        else:
            if cache is not None:
                k, v = k.to(h.dtype), v.to(h.dtype)
            if self.n_kv != self.n_heads:
                rep = self.n_heads // self.n_kv
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            if attn_mask is None:
                o = attention(q, k, v, causal=L > 1, scale=self.scale)
            elif isinstance(attn_mask, OffsetCausal):  # a prompt piece after earlier ones, no padding
                o = offset_causal_attention(q, k, v, self.scale, attn_mask.past)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        o = o.transpose(1, 2).reshape(b, L, self.n_heads * self.head_dim)
        return linear(o, self.o_proj.weight, self.o_proj.bias).to(x.dtype)


class SharedMLP(nn.Module):
    def __init__(self, config: Zamba2TextConfig, block_id: int):
        super().__init__()
        c = config
        self.F = c.intermediate_size
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.add_bias_linear)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.add_bias_linear)
        self.gate_up_proj_adapter_list = _adapter_list(c, block_id, c.hidden_size, 2 * c.intermediate_size)
        if c.hidden_act not in ("gelu", "gelu_python"):
            raise NotImplementedError(f"shared MLP activation {c.hidden_act!r} (Zamba2 uses exact 'gelu')")

    def forward(self, x, slot):
        h = x.to(compute_dtype(self.gate_up_proj.weight))
        gu = linear(h, self.gate_up_proj.weight, self.gate_up_proj.bias)
        gu = gu + _lora(h, self.gate_up_proj_adapter_list[slot])
        gate, up = gu.split(self.F, dim=-1)
        return linear(F.gelu(gate) * up, self.down_proj.weight, self.down_proj.bias).to(x.dtype)


class SharedTransformerBlock(nn.Module):
    """concat(hidden, original embeddings) -> RMSNorm -> attention -> RMSNorm -> gated MLP; no residuals inside."""

    def __init__(self, config: Zamba2TextConfig, block_id: int):
        super().__init__()
        self.block_id = block_id
        self.input_layernorm = RMSNorm(config.attention_hidden_size, config.rms_norm_eps)
        self.self_attn = SharedAttention(config, block_id)
        self.pre_ff_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.feed_forward = SharedMLP(config, block_id)

    def forward(self, x, original, slot, layer_idx, rope, attn_mask, cache):
        h = self.input_layernorm(torch.cat([x, original], dim=-1))
        h = self.self_attn(h, slot, layer_idx, rope, attn_mask, cache)
        h = self.pre_ff_layernorm(h)
        return self.feed_forward(h, slot)


def attention_mask_for(key_valid: torch.Tensor, q_len: int, past: int) -> torch.Tensor:
    """Boolean [b, 1, q_len, past+q_len] mask: causal and padding, with the diagonal always allowed.

    The diagonal keeps rows of padding queries from being fully masked (which would give NaN); their outputs are
    zeroed before they reach the Mamba mixer, so they never touch real tokens.
    """
    total = past + q_len
    qpos = torch.arange(past, total, device=key_valid.device)
    kpos = torch.arange(total, device=key_valid.device)
    causal = kpos[None, :] <= qpos[:, None]  # [q, T]
    m = causal[None] & key_valid[:, None, :total]  # [b, q, T]
    m = m | (kpos[None, :] == qpos[:, None])[None]
    return m[:, None]


__all__ = ["SharedTransformerBlock", "attention_mask_for", "rope_cos_sin", "lora"]
