"""Only the assistant's tokens (answer + end of turn) carry loss."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from trainkit import IMAGE_TOKEN_ID, one_thread, processor, tiny_vl_config

from zamba2vl.train.build import random_model
from zamba2vl.train.encode import IGNORE, ConversationEncoder, collate
from zamba2vl.train.loss import CausalLMLoss, token_losses

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def setup():
    proc = processor()
    config = tiny_vl_config()
    model = random_model(config, seed=3).train()
    messages = [
        {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (56, 84), (200, 30, 30))},
                                     {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": "Are you sure?"},
        {"role": "assistant", "content": "Yes, it is red."},
    ]
    example = ConversationEncoder(proc)(messages)
    return proc, model, example


def test_labels_are_exactly_the_answers_and_their_end_of_turn(setup):
    proc, _, ex = setup
    tok = proc.tokenizer
    ids, labels = ex.input_ids.tolist(), ex.labels.tolist()
    runs, current = [], []
    for i, label in enumerate(labels):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == ids[i]
            current.append(label)
    runs.append(current) if current else None
    assert [tok.decode(r) for r in runs] == ["red</s>", "Yes, it is red.</s>"]
    assert labels.count(IGNORE) == len(labels) - sum(map(len, runs))
    assert ids.count(IMAGE_TOKEN_ID) == 6  # 56x84 pixels -> 2x3 merged tokens, none labelled
    assert all(labels[i] == IGNORE for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID)


def test_only_assistant_targets_change_the_loss(setup):
    proc, model, ex = setup
    batch = collate([ex])
    loss_model = CausalLMLoss(model)
    base, count = loss_model(batch.input_ids, batch.labels, batch.pixel_values, batch.image_grid_thw)
    assert int(count) == ex.num_loss_tokens == len(proc.tokenizer.encode("red</s>Yes, it is red.</s>", False))

    assistant = (batch.labels[0] != IGNORE).nonzero().flatten().tolist()
    user = [i for i in range(1, batch.labels.shape[1]) if i not in assistant
            and batch.input_ids[0, i] != IMAGE_TOKEN_ID]

    def loss_with_targets(position: int) -> torch.Tensor:
        """Loss when the token at `position` is replaced by another id in the target stream, masked as the
        encoder masks it: a user position stays unlabelled, an assistant position takes the new id."""
        targets = batch.input_ids.clone()
        targets[0, position] = (targets[0, position] + 1) % 32000
        labels = torch.where(batch.labels != IGNORE, targets, torch.full_like(targets, IGNORE))
        return loss_model(batch.input_ids, labels, batch.pixel_values, batch.image_grid_thw)[0]

    with torch.no_grad():
        for i in user:
            assert torch.equal(loss_with_targets(i), base)
        for i in assistant:
            assert not torch.allclose(loss_with_targets(i), base)


def test_no_gradient_reaches_unlabelled_positions(setup):
    _, model, ex = setup
    batch = collate([ex])
    logits = model(batch.input_ids, pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw).logits
    logits.retain_grad()
    loss, count = token_losses(logits, batch.labels)
    loss.backward()
    grad_rows = logits.grad[0].abs().sum(-1)  # [L]
    predicts_answer = torch.zeros_like(grad_rows, dtype=torch.bool)
    predicts_answer[:-1] = batch.labels[0, 1:] != IGNORE
    assert bool((grad_rows[~predicts_answer] == 0).all())
    assert bool((grad_rows[predicts_answer] > 0).all())

    # The trainer's loss (projecting only labelled positions) is the same number.
    fast, fast_count = CausalLMLoss(model)(batch.input_ids, batch.labels, batch.pixel_values, batch.image_grid_thw)
    assert int(fast_count) == int(count)
    assert abs(fast.item() - loss.item()) <= 1e-4 * abs(loss.item())


def _long_and_short(setup):
    """A batch of the setup's long example and a one-word answer, the labelled tokens of each, the loss, and each
    sample's own mean loss (computed alone)."""
    proc, model, long_example = setup
    short = ConversationEncoder(proc)([
        {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (56, 56), (0, 90, 200))},
                                     {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "blue"}])
    batch = collate([long_example, short], pad_token_id=0)
    counts = [int((e.labels[1:] != IGNORE).sum()) for e in (long_example, short)]
    loss_fn = CausalLMLoss(model)
    with torch.no_grad():
        means = []
        for e in (long_example, short):
            b = collate([e])
            s, n = loss_fn(b.input_ids, b.labels, b.pixel_values, b.image_grid_thw)
            means.append((s / n).item())
    return batch, counts, loss_fn, means


def test_per_sample_weights_make_every_sample_weigh_the_same(setup):
    # optim.loss_per: sample -> each sample's tokens share a weight of 1, so a 1-token answer counts as much as a
    # 20-token one. The weighted sum over the batch / number of samples = mean over samples of each one's mean.
    from zamba2vl.train.trainer import _row_weights

    batch, counts, loss_fn, per_sample = _long_and_short(setup)
    weights, total = _row_weights(batch)
    assert counts[0] > 3 * counts[1] > 0
    assert weights.tolist() == pytest.approx([1 / counts[0], 1 / counts[1]])
    assert total == 2.0  # an exact count of samples, whatever their lengths
    with torch.no_grad():
        weighted, n_tokens = loss_fn(batch.input_ids, batch.labels, batch.pixel_values, batch.image_grid_thw,
                                     weights)
    assert int(n_tokens) == sum(counts)
    assert weighted.item() / 2 == pytest.approx(sum(per_sample) / 2, rel=1e-5)
    # ... and differs from the token mean, which the long answer dominates.
    token_mean = (per_sample[0] * counts[0] + per_sample[1] * counts[1]) / sum(counts)
    assert abs(weighted.item() / 2 - token_mean) > 1e-3


def test_sqrt_weights_weigh_a_sample_by_the_root_of_its_labelled_tokens(setup):
    # optim.loss_per: sqrt -> each of a sample's n tokens weighs 1 / sqrt(n), the sample sqrt(n), and the step's
    # loss is the sqrt(n)-weighted mean of the samples' mean losses: between the token and the sample means.
    from zamba2vl.train.trainer import _row_weights

    batch, counts, loss_fn, means = _long_and_short(setup)
    weights, total = _row_weights(batch, "sqrt")
    assert weights.tolist() == pytest.approx([counts[0] ** -0.5, counts[1] ** -0.5])
    assert total == pytest.approx(counts[0] ** 0.5 + counts[1] ** 0.5)
    with torch.no_grad():
        weighted, _ = loss_fn(batch.input_ids, batch.labels, batch.pixel_values, batch.image_grid_thw, weights)
    expected = (means[0] * counts[0] ** 0.5 + means[1] * counts[1] ** 0.5) / total
    assert weighted.item() / total == pytest.approx(expected, rel=1e-5)
    token_mean = (means[0] * counts[0] + means[1] * counts[1]) / sum(counts)
    sample_mean = sum(means) / 2
    assert min(token_mean, sample_mean) + 1e-4 < expected < max(token_mean, sample_mean) - 1e-4
