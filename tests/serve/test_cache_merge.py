"""HybridCache.merge: rows prefilled alone, at different lengths, decode in one batch as they would alone."""

import pytest
import torch

from zamba2vl.cache import HybridCache
from zamba2vl.generation import decode_one_token, left_pad, prefill
from zamba2vl.model import Zamba2VL
from zamba2vl.testing import random_init_, tiny_vl_config


@pytest.fixture(scope="module")
def model():
    m = Zamba2VL(tiny_vl_config()).eval()
    random_init_(m, seed=7)
    return m


def prompt(n, seed):
    return torch.randint(3, 32000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def test_decode_on_merged_cache_gives_each_row_its_own_logits(model):
    prompts = [prompt(n, seed=n) for n in (5, 17, 1)]
    alone, first = [], []
    for p in prompts:
        cache = model.new_cache(1, capacity=len(p) + 4)
        first.append(prefill(model, torch.tensor([p]), None, cache).argmax(-1))
        alone.append(cache)
    # A fourth and fifth row come from a left-padded batch (their cache already holds padding columns).
    ids, mask = left_pad([prompt(3, 30), prompt(9, 31)])
    padded = model.new_cache(2, capacity=16)
    first.append(prefill(model, ids, mask, padded).argmax(-1))
    merged = HybridCache.merge(alone + [padded])
    assert merged.batch_size == 5 and merged.length == 17
    assert merged.positions.tolist() == [5, 17, 1, 3, 9]
    assert merged.key_valid[:, :17].sum(1).tolist() == [5, 17, 1, 3, 9]

    rows = [alone[0], alone[1], alone[2], padded]
    tokens = torch.cat(first)  # [5]
    for _ in range(3):
        expect = torch.cat([decode_one_token(model, t, c) for t, c in
                            zip([tokens[0:1], tokens[1:2], tokens[2:3], tokens[3:5]], rows)])
        got = decode_one_token(model, tokens, merged)
        # Equal up to float32 rounding (a batch of 5 and masked attention sum in another order): logits are ~30.
        torch.testing.assert_close(got, expect, rtol=0, atol=2e-4)
        assert got.argmax(-1).tolist() == expect.argmax(-1).tolist()
        tokens = expect.argmax(-1)
    assert merged.positions.tolist() == [8, 20, 4, 6, 12]


@torch.inference_mode()
def test_merge_compacts_columns_no_row_uses_and_keeps_existing_rows_exact(model):
    long, short = prompt(20, 1), prompt(2, 2)
    caches = []
    for p in (long, short):
        c = model.new_cache(1, capacity=32)
        prefill(model, torch.tensor([p]), None, c)
        caches.append(c)
    batch = HybridCache.merge(caches)
    assert batch.length == 20
    # The long row leaves: 18 leading columns are now padding for every row; merge([cache]) drops them.
    rest = batch.select([1])
    assert rest.length == 20
    compact = HybridCache.merge([rest])
    assert compact.length == 2 and compact.positions.tolist() == [2]
    assert torch.equal(compact.keys[:, :, :, :2], caches[1].keys[:, :, :, :2])
    assert torch.equal(compact.ssm_states, caches[1].ssm_states)
    assert compact.capacity >= 2 + 30  # spare capacity kept: decode appends in place
    token = torch.tensor([7])
    torch.testing.assert_close(decode_one_token(model, token, compact), decode_one_token(model, token, caches[1]),
                               rtol=0, atol=2e-4)
    # select() itself is unchanged: same length, same columns.
    assert torch.equal(rest.keys, batch.keys[:, 1:2])


def test_merge_refuses_caches_of_different_models(model):
    other = tiny_vl_config(hidden=32)
    a = model.new_cache(1)
    b = HybridCache.empty(other.text_config, 1)
    with pytest.raises(AssertionError):
        HybridCache.merge([a, b])
