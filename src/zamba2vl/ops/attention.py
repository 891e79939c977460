"""Attention over a KV cache: a few new queries (decode), or a prompt piece after earlier pieces (chunked prefill).

Decode (`cached_attention`): ``F.scaled_dot_product_attention`` over a bf16 cache on a CPU without native bf16
either upcasts the whole cache to fp32 first (the precision policy's default: one read and a 2x-size write of every
key and value per step) or runs its bf16 kernel, which on an AVX2 CPU reads the cache at ~3 GB/s. Decode reads the
whole cache once per step, so that is most of a long-context step. Here the two products are plain batched matrix-
vector products on the cache as it is stored (``K @ q`` and ``V^T @ p`` per head, ~8-9 GB/s on the same CPU), the
scores and the softmax in fp32, and grouped-query heads share their cache rows instead of repeating them.

Training (`attention`): under autograd on the CPU in bf16/fp16 with short sequences (the nano model's 64-patch
images and ~40-token prompts), SDPA's CPU flash kernel is slow, its backward most of all: forward + backward of
[32, 4, 64, 32] bf16 took 12.9 ms against 5.5 ms for an explicit ``q @ k^T``, fp32 softmax, ``p @ v`` (causal
[32, 4, 40, 48]: 11.1 against 2.3 ms; 2 threads, AVX512-BF16 EPYC, torch 2.13). In fp32, or without autograd,
SDPA is as fast or faster, so everything else stays on SDPA.

Chunked prefill (`offset_causal_attention`): a prompt piece attends over the earlier pieces and itself a block of
queries at a time, so the mask is never the full [L, past+L] (see `OffsetCausal`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zamba2vl.ops.precision import cpu_has_native_gemm

# Decode attention takes this path when there are at most this many query rows per sequence.
MAX_QUERY_ROWS = 4


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of ``q`` [b, nq, L, d] over ``k``, ``v`` [b, nkv, S, d] (nq a multiple of nkv).

    The products run in k's dtype (q and the probabilities are rounded to it, as a native low-precision kernel
    rounds them), the scores and softmax in fp32; the result is in q's dtype. ``mask`` is SDPA's: boolean
    [b or 1, 1, L, S] with True = attend, or additive float. Returns [b, nq, L, d].
    """
    b, nq, L, d = q.shape
    nkv, S = k.shape[1], k.shape[2]
    rep = nq // nkv
    # Queries of a KV group side by side: [b, nkv, rep*L, d], so each cache row is read once per group.
    qg = q.reshape(b, nkv, rep * L, d).to(k.dtype)
    # One 2-D product per (sequence, KV head): each head's rows of the cache are contiguous even when the cache
    # is a prefix of a larger preallocated buffer, where a batched product over heads falls into a slow
    # strided path (measured 1 GB/s against ~9 GB/s for V^T p at 32k on an AVX2 CPU).
    row_major = _row_major_products(k)
    if row_major:
        # On CPUs with native bf16 GEMMs, ``F.linear(q, K)`` and ``p @ V`` read the cache fastest (measured, 32
        # heads x 32k x 128 bf16, 2 threads, AVX512-BF16 EPYC: 13.3 and 17.5 GB/s, against 9.8 and 7.4 for the
        # matrix-vector products below, 2.0 and 6.5 for batched products over heads).
        scores = torch.stack([F.linear(qg[i, g], k[i, g]) for i in range(b) for g in range(nkv)])  # [b*nkv, r, S]
        scores = scores.float().view(b, nkv, rep, L, S).mul_(scale)
    else:
        scores = torch.stack([_product(k[i, g], qg[i, g]) for i in range(b) for g in range(nkv)])  # [b*nkv, S, r]
        scores = scores.float().view(b, nkv, S, rep, L).permute(0, 1, 3, 4, 2).mul_(scale)  # [b, nkv, rep, L, S]
    if mask is not None:
        m = mask[:, :, None]  # [b, 1, 1, L, S]
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.float()
    p = torch.softmax(scores, dim=-1).reshape(b, nkv, rep * L, S).to(v.dtype)
    if row_major:
        o = torch.stack([torch.mm(p[i, g], v[i, g]) for i in range(b) for g in range(nkv)])  # [b*nkv, r, d]
        return o.view(b, nq, L, d).to(q.dtype)
    o = torch.stack([_product(v[i, g].t(), p[i, g]) for i in range(b) for g in range(nkv)])  # [b*nkv, d, r]
    return o.view(b, nkv, d, rep, L).permute(0, 1, 3, 4, 2).reshape(b, nq, L, d).to(q.dtype)


def _row_major_products(k: torch.Tensor) -> bool:
    """Whether ``cached_attention`` multiplies as ``F.linear(q, K)`` / ``p @ V`` (CPUs with native GEMMs for k's dtype)."""
    return k.device.type == "cpu" and cpu_has_native_gemm(k.dtype)


def _product(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``matrix @ rows.T`` as [m, r]: a matrix-vector product when there is one row."""
    if rows.shape[0] == 1:
        return torch.mv(matrix, rows[0])[:, None]
    return torch.mm(matrix, rows.t())


@dataclass(frozen=True)
class OffsetCausal:
    """The mask of a prompt piece whose queries sit at positions past .. past+L-1 over past+L keys, no padding:
    query i sees keys 0 .. past+i. Stands in for the [L, past+L] tensor, which SDPA would turn into a float mask
    of 4 bytes per entry (measured: an 8k piece over a 32k prompt peaked higher than prefilling all at once)."""

    past: int


# Queries per block in `offset_causal_attention`: the block's mask is block x keys (bool, then float inside SDPA).
OFFSET_CAUSAL_BLOCK = 1024


def offset_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, past: int,
                            block: int | None = None) -> torch.Tensor:
    """SDPA of q [b, h, L, d] over k, v [b, h, past+L, d] under `OffsetCausal(past)`, a block of queries at a time.

    Each block sees only the keys up to its last query (the later ones are cut off, not masked) and carries a
    [block, keys] mask, so memory is bounded by the block, not by L x (past+L).
    """
    block = block or OFFSET_CAUSAL_BLOCK
    L, T = q.shape[2], k.shape[2]
    assert T == past + L, (T, past, L)
    out = torch.empty_like(q)
    kpos = torch.arange(T, device=q.device)
    for s in range(0, L, block):
        e = min(L, s + block)
        visible = past + e
        qpos = torch.arange(past + s, past + e, device=q.device)
        mask = kpos[None, :visible] <= qpos[:, None]  # [e-s, visible]
        out[:, :, s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, :visible], v[:, :, :visible],
                                                        attn_mask=mask, scale=scale)
    return out


# `attention` computes scores explicitly up to this many keys ([b, h, L, keys] fp32 scores: 33 MB at b=32, h=4, 256).
EXPLICIT_MAX_KEYS = 256


def use_explicit_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether `attention` takes the explicit path: autograd on the CPU in a 16-bit dtype (the inputs', or CPU
    autocast's, which makes SDPA run its 16-bit kernel on fp32 inputs) over a short sequence."""
    if q.device.type != "cpu" or not torch.is_grad_enabled() or not (q.requires_grad or k.requires_grad):
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    return dtype in (torch.bfloat16, torch.float16) and k.shape[-2] <= EXPLICIT_MAX_KEYS


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, causal: bool = False,
              key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of q [..., L, d] over k, v [..., S, d] (same heads): SDPA, or where `use_explicit_attention`
    says, the explicit products with the softmax in fp32. ``causal``: query i sees keys 0..i (L == S).
    ``key_mask``: boolean, broadcastable to [..., L, S], True where a key may be seen."""
    if not use_explicit_attention(q, k):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=causal, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if causal:
        L, S = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    return torch.matmul(scores.softmax(-1).to(v.dtype), v)


def use_cached_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether decode should take `cached_attention`: few queries over a cache stored in a lower precision, on the
    CPU. Also where bf16 is native: SDPA's bf16 kernel reads a 32k cache at 4.5 GB/s there (2 threads, AVX512-BF16
    EPYC), these products at 13-17 GB/s."""
    return q.shape[2] <= MAX_QUERY_ROWS and k.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu"


__all__ = ["EXPLICIT_MAX_KEYS", "MAX_QUERY_ROWS", "OFFSET_CAUSAL_BLOCK", "OffsetCausal", "attention", "cached_attention",
           "offset_causal_attention", "use_cached_attention", "use_explicit_attention"]
