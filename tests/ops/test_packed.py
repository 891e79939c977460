"""Decode products through oneDNN-packed weights: same results as the plain path, used only where they apply."""

import pytest
import torch
from zamba_testkit import TINY_TEXT, randomize_, tiny_text_dict

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.ops import packed
from zamba2vl.text.model import Zamba2LM

NATIVE = packed.available(torch.bfloat16)


def tiny_bf16_lm(name):
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(name))).eval()
    randomize_(model, 7)
    return model.bfloat16()


def decode(model, ids, steps=6):
    with torch.no_grad():
        out = model(input_ids=ids[:, :-steps], use_cache=True)
        return torch.stack([model(input_ids=ids[:, t:t + 1], cache=out.cache).logits[:, -1].float()
                            for t in range(ids.shape[1] - steps, ids.shape[1])], 1)


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_packed_decode_matches_the_plain_products(name, monkeypatch):
    monkeypatch.setattr(packed, "MIN_ELEMENTS", 0)  # the tiny model's weights are all small
    model = tiny_bf16_lm(name)
    ids = torch.randint(0, 128, (2, 30), generator=torch.Generator().manual_seed(1))
    plain = decode(model, ids)
    calls = []
    real = packed.packed_linear
    monkeypatch.setattr(packed, "packed_linear", lambda *a: calls.append(a[0].shape[:-1].numel()) or real(*a))
    added = packed.pack_for_decode(model)
    try:
        if not NATIVE:  # no oneDNN bf16 here: nothing is packed and decode is the plain one
            assert added == 0 and decode(model, ids).equal(plain) and not calls
            return
        n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert added >= sum(m.weight.numel() * 2 for m in model.modules() if isinstance(m, torch.nn.Linear))
        got = decode(model, ids)
        assert calls and max(calls) <= 2  # decode rows only: the 24-token prompt went through F.linear
        assert len(calls) >= 6 * min(n_linear, 10)
        # the same bf16 products with fp32 accumulation; only the order of the sums may differ
        assert ((got - plain).norm() / plain.norm()).item() <= 1e-2
        assert (got.argmax(-1) == plain.argmax(-1)).float().mean().item() >= 0.9
    finally:
        packed.unpack(model)
    assert all(packed.lookup(m.weight) is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_a_packed_copy_is_dropped_once_its_weight_changes(monkeypatch):
    monkeypatch.setattr(packed, "MIN_ELEMENTS", 0)
    layer = torch.nn.Linear(64, 32, bias=False).bfloat16()
    if not NATIVE:  # nothing to pack on this CPU
        assert packed.pack_for_decode(layer) == 0 and packed.lookup(layer.weight) is None
        return
    assert packed.pack_for_decode(layer) == 64 * 32 * 2
    assert packed.lookup(layer.weight) is not None
    x = torch.randn(1, 64).bfloat16()
    with torch.no_grad():
        before = packed.decode_linear(x, layer.weight)
        layer.weight.mul_(2)  # in place: the packed copy is stale now
        after = packed.decode_linear(x, layer.weight)
    assert packed.lookup(layer.weight) is None
    torch.testing.assert_close(after.float(), 2 * before.float(), rtol=1e-2, atol=1e-2)


def test_float32_models_pack_nothing():
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(sorted(TINY_TEXT)[0]))).eval()
    assert packed.pack_for_decode(model) == 0


def test_a_dropped_models_packed_copies_are_freed(monkeypatch):
    import gc

    monkeypatch.setattr(packed, "MIN_ELEMENTS", 0)
    layer = torch.nn.Linear(64, 32, bias=False).bfloat16()
    key = id(layer.weight)
    added = packed.pack_for_decode(layer)
    assert (key in packed._PACKED) == (added > 0) == NATIVE
    del layer
    gc.collect()
    assert key not in packed._PACKED


def test_unpack_frees_the_copy_while_the_model_lives(monkeypatch):
    import weakref

    monkeypatch.setattr(packed, "MIN_ELEMENTS", 0)
    layer = torch.nn.Linear(64, 32, bias=False).bfloat16()
    if not packed.pack_for_decode(layer):
        assert not NATIVE
        return
    copy = weakref.ref(packed._PACKED[id(layer.weight)][3])
    packed.unpack(layer)
    assert copy() is None and packed.lookup(layer.weight) is None
