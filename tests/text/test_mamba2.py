"""The Mamba2 mixer's tiled prefill (``Mamba2Mixer.prefill_tile``) against the untiled one."""

import pytest
import torch
from zamba_testkit import TINY_TEXT, randomize_, tiny_text_dict

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.text.mamba2 import Mamba2Mixer
from zamba2vl.text.model import Zamba2LM

UNTILED = 4096  # longer than any prompt below: one tile


def tiny_lm(name, seed=0) -> Zamba2LM:
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(name))).eval()
    randomize_(model, seed)
    return model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("tile", [16, 23])
def test_mixer_tiled_prefill_equals_untiled_with_gradients(tile, monkeypatch):
    # 100 tokens in tiles of 16 (the last one of 4 tokens) or 23 (the last of 8, not a multiple of the chunk size).
    mixer = tiny_lm("like_7b", seed=3).model.layers[0].mamba
    u = torch.randn(2, 100, 64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    monkeypatch.setattr(Mamba2Mixer, "prefill_tile", UNTILED)
    y_ref = mixer(u)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [u, mixer.in_proj.weight, mixer.A_log])
    monkeypatch.setattr(Mamba2Mixer, "prefill_tile", tile)
    y = mixer(u)
    g = torch.autograd.grad(y.square().sum(), [u, mixer.in_proj.weight, mixer.A_log])
    assert y_ref.abs().max().item() > 1  # outputs of order 1, so the absolute bound below is meaningful
    assert (y - y_ref).abs().max().item() <= 1e-5  # measured ~1.4e-6
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) <= 1e-5  # measured ~4e-7


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
@pytest.mark.parametrize("tile", [16, 23])
def test_lm_tiled_prefill_equals_untiled(name, tile, monkeypatch):
    """Whole LM, left-padded batch of ~100 tokens, with a cache: logits and the carried states."""
    model = tiny_lm(name, seed=3)
    ids = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 100, dtype=torch.long)
    mask[1, :13] = 0
    with torch.no_grad():
        monkeypatch.setattr(Mamba2Mixer, "prefill_tile", UNTILED)
        ref = model(input_ids=ids, attention_mask=mask, use_cache=True)
        monkeypatch.setattr(Mamba2Mixer, "prefill_tile", tile)
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        states = [(c.ssm_states.clone(), c.conv_states.clone()) for c in (ref.cache, out.cache)]
        # and one decode step on from each cache
        nxt = torch.tensor([[5], [6]])
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        ref_step = model(input_ids=nxt, cache=ref.cache, attention_mask=step_mask).logits
        step = model(input_ids=nxt, cache=out.cache, attention_mask=step_mask).logits
    # Logits reach ~8; the tiles change the scan's chunking, so fp32 rounding differs (measured up to 2.7e-5).
    assert (out.logits - ref.logits).abs().max().item() <= 1e-4
    assert (step - ref_step).abs().max().item() <= 1e-4
    (ref_ssm, ref_conv), (ssm, conv) = states
    assert rel_err(ssm, ref_ssm) <= 1e-5  # measured ~3e-6
    assert rel_err(conv, ref_conv) <= 1e-5  # measured ~2e-6
