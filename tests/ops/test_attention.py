"""Attention paths of ops.attention (decode over a low-precision cache, chunked prefill, the explicit training path)
against SDPA on the same values in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zamba2vl.ops.attention import (
    EXPLICIT_MAX_KEYS, MAX_QUERY_ROWS, attention, cached_attention, offset_causal_attention, use_cached_attention,
    use_explicit_attention,
)
from zamba2vl.text.shared_block import attention_mask_for


def _case(b=2, nq=8, nkv=2, L=1, S=37, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nq, L, d, generator=g)
    k = torch.randn(b, nkv, S, d, generator=g).bfloat16()
    v = torch.randn(b, nkv, S, d, generator=g).bfloat16()
    return q, k, v


def _reference(q, k, v, scale, mask=None):
    rep = q.shape[1] // k.shape[1]
    kf, vf = k.float().repeat_interleave(rep, 1), v.float().repeat_interleave(rep, 1)
    # The path rounds q and the probabilities to bf16 (what a native bf16 kernel does); so does the reference's q.
    return F.scaled_dot_product_attention(q.bfloat16().float(), kf, vf, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("row_major", [True, False])
@pytest.mark.parametrize("nq,nkv,L", [(4, 4, 1), (8, 2, 1), (8, 2, 3), (6, 1, 2)])
def test_matches_sdpa_on_the_same_values(nq, nkv, L, row_major, monkeypatch):
    # both product orders: F.linear / p @ V (CPUs with native bf16) and matrix-vector products (others)
    from zamba2vl.ops import attention

    monkeypatch.setattr(attention, "_row_major_products", lambda k: row_major)
    q, k, v = _case(nq=nq, nkv=nkv, L=L)
    out = cached_attention(q, k, v, scale=0.3)
    ref = _reference(q, k, v, 0.3)
    assert out.shape == ref.shape and out.dtype == q.dtype
    # Only the probabilities' rounding to bf16 (relative 2^-9) separates the two.
    assert (out - ref).abs().max().item() < 1e-2
    assert torch.allclose(out, ref, rtol=0, atol=1e-2)


def test_padding_and_causal_masks_as_the_model_builds_them():
    q, k, v = _case(b=2, L=2, S=9)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, :4] = False  # the second row is left-padded
    mask = attention_mask_for(valid, q_len=2, past=7)  # [2, 1, 2, 9]
    out = cached_attention(q, k, v, 0.25, mask)
    ref = _reference(q, k, v, 0.25, mask)
    assert (out - ref).abs().max().item() < 1e-2
    # A masked key changes nothing: perturb the padded keys of row 1.
    k2 = k.clone()
    k2[1, :, :4] += 5
    assert torch.equal(cached_attention(q, k2, v, 0.25, mask)[1], out[1])
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.allclose(cached_attention(q, k, v, 0.25, additive), out, rtol=0, atol=1e-6)


def test_taken_only_for_few_cpu_queries_over_a_lower_precision_cache():
    q, k, _ = _case(L=1)
    assert use_cached_attention(q, k)
    assert not use_cached_attention(q, k.float())  # same precision: plain SDPA
    assert not use_cached_attention(torch.zeros(2, 8, MAX_QUERY_ROWS + 1, 16), k)  # a prompt: SDPA
    assert use_cached_attention(q.bfloat16(), k)  # native bf16 compute too: SDPA's bf16 kernel reads slower
    assert not use_cached_attention(q.float(), k.float())  # fp32 cache: SDPA


@pytest.mark.parametrize("past,L,block", [(0, 7, 3), (5, 9, 4), (13, 4, 64), (16, 16, 16)])
def test_offset_causal_in_blocks_equals_sdpa_with_the_full_mask(past, L, block):
    g = torch.Generator().manual_seed(past * 100 + L)
    q = torch.randn(2, 3, L, 8, generator=g)
    k, v = torch.randn(2, 3, past + L, 8, generator=g), torch.randn(2, 3, past + L, 8, generator=g)
    full = attention_mask_for(torch.ones(2, past + L, dtype=torch.bool), L, past)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=0.4)
    out = offset_causal_attention(q, k, v, 0.4, past, block=block)
    assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("mask", ["none", "causal", "keys"])
def test_explicit_training_attention_matches_fp32_sdpa_values_and_gradients(mask):
    g = torch.Generator().manual_seed(3)
    b, h, L, d = 3, 4, 24, 32
    q, k, v = (torch.randn(b, h, L, d, generator=g) for _ in range(3))
    key_mask = torch.rand(b, 1, 1, L, generator=g) > 0.3 if mask == "keys" else None
    if key_mask is not None:
        key_mask[..., 0] = True  # every query sees at least one key
    grad_out = torch.randn(b, h, L, d, generator=g)

    def run(fn, dtype):
        leaves = [x.clone().to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad_out.to(dtype))
        return [out.float()] + [x.grad.float() for x in leaves]

    def explicit(q_, k_, v_):
        assert use_explicit_attention(q_, k_)
        return attention(q_, k_, v_, causal=mask == "causal", key_mask=key_mask, scale=0.2)

    def sdpa(q_, k_, v_):
        return F.scaled_dot_product_attention(q_, k_, v_, attn_mask=key_mask, is_causal=mask == "causal", scale=0.2)

    got, want = run(explicit, torch.bfloat16), run(sdpa, torch.float32)
    for name, a, w in zip(("out", "dq", "dk", "dv"), got, want):
        err = (a - w).abs().max().item() / w.abs().max().item()
        assert err < 0.03, (name, err)  # bf16 products (8-bit mantissa): ~1% of the largest value
    # Under CPU bf16 autocast fp32 inputs take it too (SDPA would run its bf16 kernel), with the same values.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run(explicit, torch.float32)
    for name, a, w in zip(("out", "dq", "dk", "dv"), auto, want):
        assert (a - w).abs().max().item() / w.abs().max().item() < 0.03, name


def test_explicit_path_only_for_short_16bit_sequences_under_autograd():
    q = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16, requires_grad=True)
    long_k = torch.randn(1, 2, EXPLICIT_MAX_KEYS + 1, 16, dtype=torch.bfloat16)
    assert use_explicit_attention(q, q)
    assert not use_explicit_attention(q, long_k)  # the fp32 scores would grow with L x S
    assert not use_explicit_attention(q.float().detach().requires_grad_(), q.float())  # fp32: SDPA is faster
    with torch.no_grad():
        assert not use_explicit_attention(q, q)  # inference keeps SDPA
    assert not use_explicit_attention(q.detach(), q.detach())
