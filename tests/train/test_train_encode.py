"""Encoding conversations for training: token ids as at inference, answer spans, LLaVA layout, batching."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from trainkit import IMAGE_TOKEN_ID, processor

from zamba2vl.errors import InputError
from zamba2vl.processing.chat import normalize_messages
from zamba2vl.train.encode import IGNORE, ConversationEncoder, assistant_spans, collate, label_mask
from zamba2vl.train.sources import llava_to_messages, record_messages


RED = Image.new("RGB", (56, 56), (220, 30, 30))
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": [{"type": "image", "image": RED}, {"type": "text", "text": "Colour?"}]},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": [{"type": "text", "text": "And  this one?"}, {"type": "image", "image": RED}]},
    {"role": "assistant", "content": [{"type": "text", "text": "Also red, 100%."}]},
]


@pytest.fixture(scope="module")
def proc():
    return processor()


def test_segments_starting_at_special_tokens_tokenize_like_the_whole_text(proc):
    """The default template opens every message with a special token ("<image>" or "<s>"), and special tokens
    split the text before the BPE runs, so per-message pieces concatenate to the whole conversation's ids."""
    tok = proc.tokenizer
    normalized, _ = normalize_messages(CONVERSATION)
    render = lambda msgs, gen=False: tok.apply_chat_template(msgs, add_generation_prompt=gen)  # noqa: E731
    pieces = [render(normalized[: k + 1])[len(render(normalized[:k])):] for k in range(len(normalized))]
    assert all(p.startswith(("<s>", "<image>")) for p in pieces)
    whole = tok.encode(render(normalized), add_special_tokens=True)
    assert [tok.bos_token_id] + [i for p in pieces for i in tok.encode(p, add_special_tokens=False)] == whole
    # ... and each generation prompt is a prefix of the whole: training sees the tokens inference will see.
    for k, m in enumerate(normalized):
        if m["role"] == "assistant":
            prompt = tok.encode(render(normalized[:k], True), add_special_tokens=True)
            assert whole[: len(prompt)] == prompt


def test_encoded_ids_are_the_processor_ids_and_answers_are_labelled(proc):
    ex = ConversationEncoder(proc)(CONVERSATION)
    text, spans = assistant_spans(proc, CONVERSATION)
    assert [text[a:b] for a, b in spans] == ["red</s>", "Also red, 100%.</s>"]
    expected = proc([text], [RED, RED]).input_ids[0]
    assert torch.equal(ex.input_ids, expected)
    assert ex.input_ids.tolist().count(IMAGE_TOKEN_ID) == 8  # two 56x56 images, 4 merged tokens each
    assert torch.equal(ex.image_grid_thw, torch.tensor([[1, 4, 4], [1, 4, 4]]))
    labelled = ex.labels[ex.labels != IGNORE].tolist()
    assert proc.tokenizer.decode(labelled) == "red</s>Also red, 100%.</s>"
    assert ex.num_loss_tokens == len(labelled)


def test_encoded_images_are_the_processors_with_each_parts_own_budget(proc):
    # The encoder tokenizes once and prepares the images itself (Processor.encode_images): ids, pixels and grids
    # are what the processor gives for the same text and images, a part's own min_pixels included.
    big = [dict(m) for m in CONVERSATION]
    big[3] = {"role": "user", "content": [{"type": "text", "text": "And  this one?"},
                                          {"type": "image", "image": RED, "min_pixels": 112 * 112}]}
    ex = ConversationEncoder(proc)(big)
    text, _ = assistant_spans(proc, big)
    expected = proc([text], [RED, RED], image_budgets=[{}, {"min_pixels": 112 * 112}])
    assert torch.equal(ex.input_ids, expected.input_ids[0])
    assert torch.equal(ex.pixel_values, expected.pixel_values)
    assert ex.image_grid_thw.tolist() == expected.image_grid_thw.tolist() == [[1, 4, 4], [1, 8, 8]]
    assert ex.input_ids.tolist().count(IMAGE_TOKEN_ID) == 4 + 16


def test_a_template_that_drops_image_placeholders_is_refused(proc):
    default = proc.tokenizer.chat_template
    proc.tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
                                    "{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}\n"
                                    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    try:
        with pytest.raises(InputError, match="2 images were given but the prompt has only 0 image placeholders"):
            ConversationEncoder(proc)(CONVERSATION)
    finally:
        proc.tokenizer.chat_template = default


def test_a_sample_over_max_length_names_the_limit(proc):
    ex = ConversationEncoder(proc)(CONVERSATION)
    with pytest.raises(InputError, match=f"is {len(ex.input_ids)} tokens long .* over data.max_length=10"):
        ConversationEncoder(proc, max_length=10)(CONVERSATION)


def test_label_mask_takes_tokens_that_overlap_a_span():
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 9), (9, 12), (12, 13)]
    assert label_mask(offsets, [(4, 9), (12, 20)]) == [False, False, True, True, False, False, True]


def test_template_that_rewrites_earlier_turns_is_refused(proc):
    default = proc.tokenizer.chat_template
    proc.tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}{{ messages | length }}: "
                                    "{{ m['content'][0]['text'] }}\n{% endfor %}")
    try:
        with pytest.raises(InputError, match="not a prefix of the whole"):
            assistant_spans(proc, [CONVERSATION[0], CONVERSATION[2]])  # renders the count in every turn
    finally:
        proc.tokenizer.chat_template = default


def test_conversation_without_an_answer_is_refused(proc):
    with pytest.raises(InputError, match="no assistant answer"):
        ConversationEncoder(proc)(CONVERSATION[:2])


def test_llava_layout_becomes_messages():
    record = {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Black."}]}
    assert llava_to_messages(record) == [
        {"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Black."}]},
    ]
    no_marker = {"image": "b.png", "conversations": [{"from": "human", "value": "Describe."},
                                                     {"from": "gpt", "value": "A dog."}]}
    assert record_messages(no_marker)[0]["content"] == [{"type": "image", "image": "b.png"},
                                                         {"type": "text", "text": "Describe."}]
    with pytest.raises(ValueError, match="more <image> markers"):
        llava_to_messages({"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]})


def test_collate_pads_on_the_right_and_keeps_image_order(proc):
    enc = ConversationEncoder(proc)
    blue = Image.new("RGB", (56, 112), (30, 30, 220))
    short = enc([{"role": "user", "content": [{"type": "image", "image": blue}, {"type": "text", "text": "?"}]},
                 {"role": "assistant", "content": "blue"}])
    long = enc(CONVERSATION)
    batch = collate([short, long], pad_token_id=0)
    n = len(short.input_ids)
    assert batch.input_ids.shape == (2, len(long.input_ids))
    assert torch.equal(batch.input_ids[0, :n], short.input_ids) and (batch.input_ids[0, n:] == 0).all()
    assert (batch.labels[0, n:] == IGNORE).all()
    assert torch.equal(batch.image_grid_thw, torch.tensor([[1, 8, 4], [1, 4, 4], [1, 4, 4]]))
    assert torch.equal(batch.pixel_values, torch.cat([short.pixel_values, long.pixel_values]))
    assert batch.num_loss_tokens == short.num_loss_tokens + long.num_loss_tokens
