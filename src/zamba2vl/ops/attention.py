"""Attention over a KV cache: a few new queries (decode), or a prompt piece after earlier pieces (chunked prefill).

Decode (`cached_attention`): ``F.scaled_dot_product_attention`` over a bf16 cache on a CPU without native bf16
either upcasts the whole cache to fp32 first (the precision policy's default: one read and a 2x-size write of every
key and value per step) or runs its bf16 kernel, which on an AVX2 CPU reads the cache at ~3 GB/s. Decode reads the
whole cache once per step, so that is most of a long-context step. Here the two products are plain batched matrix-
vector products on the cache as it is stored (``K @ q`` and ``V^T @ p`` per head, ~8-9 GB/s on the same CPU), the
scores and the softmax in fp32, and grouped-query heads share their cache rows instead of repeating them.

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


def use_cached_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether decode should take `cached_attention`: few queries over a cache stored in a lower precision, on the
    CPU. Also where bf16 is native: SDPA's bf16 kernel reads a 32k cache at 4.5 GB/s there (2 threads, AVX512-BF16
    EPYC), these products at 13-17 GB/s."""
    return q.shape[2] <= MAX_QUERY_ROWS and k.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu"


__all__ = ["MAX_QUERY_ROWS", "OFFSET_CAUSAL_BLOCK", "OffsetCausal", "cached_attention", "offset_causal_attention",
           "use_cached_attention"]
