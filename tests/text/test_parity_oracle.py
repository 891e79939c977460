"""Our Zamba2 language model against transformers==4.52.4 Zamba2ForCausalLM on identical random weights."""

import pytest
import torch
from zamba_testkit import TINY_TEXT, make_oracle_lm, tiny_text_dict

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.text.mamba2 import Mamba2Mixer
from zamba2vl.text.model import Zamba2LM
from zamba2vl.text.weights import load_text_state


class _DictReader(dict):
    def shape(self, k):
        return tuple(self[k].shape)


def ours_from_oracle(oracle, cfg_dict) -> Zamba2LM:
    config = Zamba2TextConfig.from_dict(cfg_dict)
    config.dt_clamp_to_time_step_min = True  # the oracle's torch path clamps dt >= time_step_min
    model = Zamba2LM(config).eval()
    load_text_state(model, _DictReader(oracle.state_dict()), config, source="oracle", dtype=torch.float32)
    return model


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_logits_match_oracle_over_several_chunks(name, monkeypatch):
    # Our scan runs 5 chunks of 32; the oracle gets chunk_size >= L because its chunked path is wrong past one chunk.
    monkeypatch.setattr(Mamba2Mixer, "scan_chunk_size", 32)
    L = 150
    d = tiny_text_dict(name, chunk_size=160)
    oracle = make_oracle_lm(d, seed=1)
    ours = ours_from_oracle(oracle, d)
    ids = torch.randint(0, d["vocab_size"], (1, L), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = oracle(input_ids=ids, use_cache=False).logits
        got = ours(input_ids=ids).logits
    assert 0.3 < ref.abs().mean() < 3  # logits of order 1, so the tolerance below is meaningful
    assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_oracle_decode_matches_our_decode(name):
    """Oracle prefill + greedy decode steps (its cache path) against ours, token by token."""
    d = tiny_text_dict(name, chunk_size=64)
    oracle = make_oracle_lm(d, seed=2)
    ours = ours_from_oracle(oracle, d)
    ids = torch.randint(0, d["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(6))
    from transformers.models.zamba2.modeling_zamba2 import Zamba2HybridDynamicCache

    with torch.no_grad():
        ocache = Zamba2HybridDynamicCache(oracle.config, 1, dtype=torch.float32)
        ref = oracle(input_ids=ids, past_key_values=ocache, use_cache=True).logits[:, -1]
        out = ours(input_ids=ids, use_cache=True)
        got, cache = out.logits[:, -1], out.cache
        assert (got - ref).abs().max().item() <= 1e-4
        for step in range(8):
            nxt = ref.argmax(-1, keepdim=True)
            pos = torch.tensor([ids.shape[1] + step])
            ref = oracle(input_ids=nxt, past_key_values=ocache, use_cache=True, cache_position=pos, position_ids=pos[None]).logits[:, -1]
            got = ours(input_ids=nxt, cache=cache).logits[:, -1]
            assert (got - ref).abs().max().item() <= 1e-4, step
