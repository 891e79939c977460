"""data.pack: several samples per row, each run as if alone; the same training as one sample per row."""

import json

import pytest
import torch
from trainkit import stage_config, train_in_process

from zamba2vl.train.encode import IGNORE, Example, collate, pack, pack_rows


def example(n, image=None, first_label=IGNORE, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n,), generator=g)
    labels = torch.where(torch.arange(n) >= n - 3, ids, torch.full_like(ids, IGNORE))
    labels[0] = first_label
    pixels = None if image is None else torch.full((4, 6), float(image))
    grid = None if image is None else torch.tensor([[1, 2, 2]])
    objects = None if image is None else torch.full((1, 3), float(image))
    return Example(ids, labels, pixels, grid, objects)


def test_rows_hold_the_most_samples_in_the_fewest_slots():
    assert pack_rows([30, 30, 30, 30]) == (30, [[0], [1], [2], [3]])  # no padding either way: the shorter rows
    assert pack_rows([30, 30, 30, 34]) == (64, [[3, 0], [1, 2]])  # 128 slots against 136
    # 190 tokens: first-fit into rows of 64 needs four (256 slots), 96 three (288), 192 one: longest first
    assert pack_rows([58, 20, 40, 25, 30, 17]) == (192, [[0, 2, 4, 3, 1, 5]])
    # 300 tokens: 6 rows of 60 (360 slots), 6 of 64 (384), 3 of 128 (384)
    lengths = [58, 20, 40, 25, 30, 17, 50, 60]
    R, rows = pack_rows(lengths, row_lengths=(64, 128))
    assert R == 60 and sorted(i for r in rows for i in r) == list(range(8)) and len(rows) == 6
    assert all(sum(lengths[i] for i in r) <= 60 for r in rows)
    assert pack_rows([300, 5]) == (300, [[0], [1]])  # longer than every candidate: rows of the longest
    with pytest.raises(ValueError, match="no samples"):
        pack_rows([])


def test_pack_keeps_every_token_label_and_image_in_the_rows_order():
    exs = [example(30, image=1, seed=1), example(12, seed=2), example(20, image=3, first_label=7, seed=3),
           example(50, image=4, seed=4)]
    b = pack(exs, pad_token_id=0)
    assert b.input_ids.shape == (2, 64)
    order = []
    for r in range(2):
        seg = b.segments[r]
        for k in seg[seg >= 0].unique_consecutive().tolist():
            order.append(k)
    assert order == list(range(4))  # samples are numbered in the rows' order
    placed = []  # which example each numbered sample is
    for k in range(4):
        r, cols = (b.segments == k).nonzero(as_tuple=True)
        ids = b.input_ids[r[0], cols]
        (i,) = [i for i, e in enumerate(exs) if len(e.input_ids) == len(ids) and torch.equal(e.input_ids, ids)]
        placed.append(i)
        labels = b.labels[r[0], cols]
        assert labels[0] == IGNORE and torch.equal(labels[1:], exs[i].labels[1:])  # a sample's first label dropped
    assert (b.input_ids[b.segments < 0] == 0).all() and (b.labels[b.segments < 0] == IGNORE).all()
    with_images = [i for i in placed if exs[i].pixel_values is not None]
    assert b.pixel_values[:, 0].view(-1, 4)[:, 0].tolist() == [float(exs[i].pixel_values[0, 0]) for i in with_images]
    assert b.objects[:, 0].tolist() == [float(exs[i].objects[0, 0]) for i in with_images]
    assert b.sample_loss_tokens.tolist() == [exs[i].num_loss_tokens for i in placed]
    assert b.num_loss_tokens == collate(exs).num_loss_tokens == 12


MIXED = {"sources": [{"type": "synthetic", "image_size": 56, "seed": 5, "reading_size": [112, 28],
                      "tasks": ["counting", "reading", "bar_chart", "grounding"]}]}


@pytest.mark.parametrize("loss_per,micro", [("sqrt", 8), ("token", 4)])
def test_packed_training_takes_the_same_steps(tmp_path, loss_per, micro):
    """Four steps with every objective on (objects with letters, match and spell after layer 1): the losses and
    their parts match one sample per row to fp32 rounding."""
    runs = {}
    for packed in (False, True):
        out = tmp_path / f"pack_{packed}"
        train_in_process(stage_config(out, data={**MIXED, "pack": packed},
                                      optim={"max_steps": 4, "loss_per": loss_per},
                                      batch={"global_batch_size": 8, "micro_batch_size": micro},
                                      objects={"weight": 1.0, "letters": True, "letter_slots": 2},
                                      match={"weight": 1.0, "layer": 1},
                                      spell={"weight": 0.5, "layer": 1, "positions": 6}))
        runs[packed] = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(runs[True]) == len(runs[False]) == 4
    for plain, packed in zip(runs[False], runs[True]):
        for key in ("loss", "lm_loss", "objects_loss", "match_loss", "spell_loss", "tokens"):
            assert abs(plain[key] - packed[key]) <= 1e-5 * max(1.0, abs(plain[key])), (key, plain, packed)
    assert runs[False][0]["loss"] != runs[False][-1]["loss"]
