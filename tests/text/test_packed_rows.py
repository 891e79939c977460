"""Packed rows (training): several samples one after another in a row run exactly as each would alone."""

import pytest
import torch
import torch.nn.functional as F
from zamba_testkit import TINY_TEXT, randomize_, tiny_text_dict

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.ops.conv import causal_conv1d_reference, causal_conv1d_segments
from zamba2vl.ops.ssd import ssd_chunked, ssd_sequential
from zamba2vl.text.mamba2 import Mamba2Mixer
from zamba2vl.text.model import Zamba2LM

LENGTHS = [[13, 40, 7, 20], [64, 1, 30]]  # rows of samples; the second row starts a sample on a chunk boundary


def segments_of(rows, L):
    seg = torch.full((len(rows), L), -1, dtype=torch.long)  # padding: a segment of its own
    pos = torch.zeros(len(rows), L, dtype=torch.long)
    k = 0
    for r, lengths in enumerate(rows):
        t = 0
        for n in lengths:
            seg[r, t : t + n] = k
            pos[r, t : t + n] = torch.arange(n)
            t, k = t + n, k + 1
    return seg, pos


def spans(rows):
    out = []
    for r, lengths in enumerate(rows):
        t = 0
        for n in lengths:
            out.append((r, t, t + n))
            t += n
    return out


def ssd_inputs(b, L, h=4, p=8, g=2, n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen)
    dt = F.softplus(torch.randn(b, L, h, generator=gen) - 2.0)
    A = -torch.exp(torch.rand(h, generator=gen) * 2 - 1.5)
    B = torch.randn(b, L, g, n, generator=gen)
    C = torch.randn(b, L, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("chunk", [8, 16, 64])
def test_scan_restarts_at_each_sample(chunk):
    L = 100
    seg, _ = segments_of(LENGTHS, L)
    resets = F.pad(seg[:, 1:] != seg[:, :-1], (1, 0), value=True)
    x, dt, A, B, C, D = ssd_inputs(2, L)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, B, C)]
    y, _ = ssd_chunked(leaves[0], leaves[1], A, leaves[2], leaves[3], D, chunk_size=chunk, resets=resets)
    seq, _ = ssd_sequential(x, dt, A, B, C, D, resets=resets)
    assert (y - seq).abs().max().item() < 1e-4
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    (y * w).sum().backward()
    for r, t0, t1 in spans(LENGTHS):  # each sample alone, from a zero state: outputs and input gradients
        parts = [t[r : r + 1, t0:t1].clone().requires_grad_(True) for t in (x, dt, B, C)]
        alone, _ = ssd_chunked(parts[0], parts[1], A, parts[2], parts[3], D, chunk_size=chunk)
        assert (y[r : r + 1, t0:t1] - alone).abs().max().item() < 1e-4
        (alone * w[r : r + 1, t0:t1]).sum().backward()
        for leaf, part in zip(leaves, parts):
            assert (leaf.grad[r : r + 1, t0:t1] - part.grad).abs().max().item() < 1e-4


def test_conv_does_not_read_across_samples():
    L, c, K = 100, 12, 4
    seg, _ = segments_of(LENGTHS, L)
    gen = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(2, L, c, generator=gen), torch.randn(c, K, generator=gen), torch.randn(c, generator=gen)
    y = causal_conv1d_segments(x, w, bias, seg)
    for r, t0, t1 in spans(LENGTHS):
        alone = causal_conv1d_reference(x[r : r + 1, t0:t1], w, bias)
        assert (y[r : r + 1, t0:t1] - alone).abs().max().item() < 1e-5
    # Without the segments every sample after the first would read its predecessor's last inputs.
    whole = causal_conv1d_reference(x, w, bias)
    assert (whole[0, 13] - y[0, 13]).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_packed_rows_equal_samples_alone(name, monkeypatch):
    """Hidden states and parameter gradients of packed rows equal those of each sample run alone."""
    monkeypatch.setattr(Mamba2Mixer, "scan_chunk_size", 16)
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(name))).train()
    randomize_(model, 7)
    L = 100
    seg, pos = segments_of(LENGTHS, L)
    ids = torch.randint(0, 128, (2, L), generator=torch.Generator().manual_seed(2))
    emb = model.model.embed_tokens(ids)
    packed = model.model(emb, None, None, pos, segments=seg)
    w = torch.randn(packed.shape, generator=torch.Generator().manual_seed(3)) * (seg >= 0)[..., None]  # no padding
    (packed * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0.0
    for r, t0, t1 in spans(LENGTHS):
        n = t1 - t0
        alone = model.model(model.model.embed_tokens(ids[r : r + 1, t0:t1]), None, None, torch.arange(n)[None])
        assert (packed[r : r + 1, t0:t1] - alone).abs().max().item() < 1e-4, (r, t0)
        total = total + (alone * w[r : r + 1, t0:t1]).sum()
    total.backward()
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            scale = p.grad.abs().max().item() + 1e-6
            assert (grads[n] - p.grad).abs().max().item() <= 1e-4 * max(1.0, scale), n
    # Without the segments the samples would see each other.
    model.zero_grad()
    with torch.no_grad():
        plain = model.model(emb, None, None, torch.arange(L)[None].expand(2, L))
    assert (plain[0, 13:53] - packed[0, 13:53]).abs().max().item() > 1e-2


def test_packed_rows_refuse_a_cache():
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(sorted(TINY_TEXT)[0])))
    seg, pos = segments_of([[3, 4]], 7)
    with pytest.raises(ValueError, match="without a cache"):
        model.model(torch.zeros(1, 7, model.config.hidden_size), None, torch.ones(1, 7, dtype=torch.bool), pos,
                    segments=seg)


def test_packed_rows_with_gradient_checkpointing_give_the_same_gradients():
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict("like_7b"))).train()
    randomize_(model, 8)
    seg, pos = segments_of(LENGTHS, 100)
    ids = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(4))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.model.gradient_checkpointing = checkpointing
        out = model.model(model.model.embed_tokens(ids), None, None, pos, segments=seg)
        (out * (seg >= 0)[..., None]).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0 and (grads[0] - grads[1]).abs().max().item() <= 1e-5 * grads[0].abs().max().item()
