"""The character tokenizer of models trained from scratch (the nano demo model)."""

from __future__ import annotations

import json

import pytest

from zamba2vl.processing.image import ImageProcessor
from zamba2vl.processing.processor import Processor
from zamba2vl.processing.tokenizer import Tokenizer
from zamba2vl.train.char_tokenizer import CHARACTERS, char_tokenizer
from zamba2vl.train.encode import assistant_spans


def test_ids_are_fixed():
    tok = char_tokenizer()
    assert len(tok) == 100 and len(CHARACTERS) == 96
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.image_token_id) == (0, 1, 2, 99)
    assert tok.encode("a", add_special_tokens=False) == [3 + CHARACTERS.index("a")]
    assert tok.encode(" ~\n", add_special_tokens=False) == [3, 97, 98]


def test_every_character_round_trips():
    tok = char_tokenizer()
    text = "".join(CHARACTERS) + ' [{"bbox_2d": [1, 22, 333, 4], "label": "red circle"}]'
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    # Specials are single tokens; an unknown character becomes <unk>.
    assert tok.encode("<image>x</s>", add_special_tokens=False) == [99, tok.encode("x", False)[0], 2]
    assert tok.encode("é", add_special_tokens=False) == [0]


def test_chat_template_and_assistant_spans():
    tok = char_tokenizer()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "7"}]},
                {"role": "user", "content": "And red?"}, {"role": "assistant", "content": "2"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=False)
    assert text == "Q: How many?\n<image>A: 7</s>\nQ: And red?\nA: 2</s>\n"
    assert tok.apply_chat_template(messages[:1]) == "Q: How many?\n<image>A: "
    processor = Processor(tok, ImageProcessor(), image_token=tok.image_token)
    rendered, spans = assistant_spans(processor, messages)
    assert [rendered[a:b] for a, b in spans] == ["7</s>\n", "2</s>\n"]


def test_save_and_load_round_trip(tmp_path):
    tok = char_tokenizer()
    tok.save_pretrained(tmp_path)
    back = Tokenizer.from_pretrained(tmp_path)
    text = "<image>Q: What word is written in the image?\nA: window</s>\n"
    assert back.encode(text) == tok.encode(text)
    assert back.chat_template == tok.chat_template
    assert back.image_token_id == 99 and back.eos_token_id == 2
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "BPE"


def test_run_config_selects_it():
    from zamba2vl.errors import ConfigError
    from zamba2vl.train.build import load_processor
    from zamba2vl.train.config import ModelSection, TokenizerSection

    processor = load_processor(ModelSection(), TokenizerSection(characters=True), 99, 100)
    assert processor.tokenizer.image_token_id == 99 and len(processor.tokenizer) == 100
    with pytest.raises(ConfigError, match="vocabulary has 64"):
        load_processor(ModelSection(), TokenizerSection(characters=True), 99, 64)
    with pytest.raises(ConfigError, match="not several"):
        load_processor(ModelSection(), TokenizerSection(characters=True, path="x"), 99, 100)


WORDS = ["How", "many", "red", "circles", "are", "there", "green"]


def test_whole_words_are_one_token_only_as_whole_words():
    tok = char_tokenizer(words=WORDS)
    assert len(tok) == 100 + len(WORDS) and tok.image_token_id == 99
    assert tok.convert_tokens_to_ids(WORDS) == list(range(100, 100 + len(WORDS)))
    text = "Q: How many red circles are there?\n<image>A: 3</s>\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids)[:12] == ["Q", ":", " ", "How", " ", "many", " ", "red", " ", "circles",
                                                   " ", "are"]
    assert tok.decode(ids) == text
    # Inside a longer word the letters stay letters; an answer that is a listed word is that word's token.
    assert tok.encode("redeem", add_special_tokens=False) == char_tokenizer().encode("redeem", False)
    assert tok.encode("thereby", add_special_tokens=False) == char_tokenizer().encode("thereby", False)
    assert tok.convert_ids_to_tokens(tok.encode("A: green</s>", add_special_tokens=False)) == \
        ["A", ":", " ", "green", "</s>"]
    # The generation prompt ends in the same tokens as the start of a training answer.
    prompt = tok.apply_chat_template([{"role": "user", "content": "How many?"}])
    full = tok.apply_chat_template([{"role": "user", "content": "How many?"},
                                    {"role": "assistant", "content": "green"}], add_generation_prompt=False)
    p, f = tok.encode(prompt, add_special_tokens=False), tok.encode(full, add_special_tokens=False)
    assert f[:len(p)] == p and tok.decode(f[len(p):]) == "green</s>\n"


def test_whole_words_save_and_load(tmp_path):
    tok = char_tokenizer(words=WORDS)
    tok.save_pretrained(tmp_path)
    back = Tokenizer.from_pretrained(tmp_path)
    text = "Q: How many green circles are there?\n<image>A: 2</s>\n"
    assert back.encode(text) == tok.encode(text) and len(back) == len(tok)
    assert back.decode(back.encode(text)) == text


@pytest.mark.parametrize("bad", [["a"], ["two words"], ["x1"], ["héllo"], ["red", "red"]])
def test_bad_whole_words_are_refused(bad):
    from zamba2vl.errors import ConfigError
    from zamba2vl.train.build import load_processor
    from zamba2vl.train.config import ModelSection, TokenizerSection

    with pytest.raises(ValueError, match="whole-word token|repeat"):
        char_tokenizer(words=bad)
    with pytest.raises(ConfigError, match="tokenizer.words"):
        load_processor(ModelSection(), TokenizerSection(characters=True, words=bad), 99, 200)


def test_whole_words_need_the_character_tokenizer_and_room_in_the_vocabulary():
    from zamba2vl.errors import ConfigError
    from zamba2vl.train.build import load_processor
    from zamba2vl.train.config import ModelSection, TokenizerSection

    processor = load_processor(ModelSection(), TokenizerSection(characters=True, words=WORDS), 99, 107)
    assert len(processor.tokenizer) == 107
    with pytest.raises(ConfigError, match="vocabulary has 100"):
        load_processor(ModelSection(), TokenizerSection(characters=True, words=WORDS), 99, 100)
    with pytest.raises(ConfigError, match="characters: true"):
        load_processor(ModelSection(), TokenizerSection(words=WORDS, path="x"), 99, 200)


def test_whole_numbers_are_one_token_each_after_the_words(tmp_path):
    tok = char_tokenizer(words=WORDS, numbers=112)
    assert len(tok) == 100 + len(WORDS) + 103
    assert tok.convert_tokens_to_ids(["10", "56", "112"]) == [100 + len(WORDS), 146 + len(WORDS), 202 + len(WORDS)]
    box = "A: [39, 5, 110, 100]</s>\n"
    ids = tok.encode(box, add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["A", ":", " ", "[", "39", ",", " ", "5", ",", " ", "110", ",", " ",
                                              "100", "]", "</s>", "\n"]
    assert tok.decode(ids) == box
    # Past `numbers`, or inside a word, digits stay characters; spelled digits decode to the same text.
    assert tok.convert_ids_to_tokens(tok.encode("1000 113 a12", add_special_tokens=False)) == \
        ["1", "0", "0", "0", " ", "1", "1", "3", " ", "a", "1", "2"]
    assert tok.decode(tok.encode("3", add_special_tokens=False) + tok.encode("9", add_special_tokens=False)) == "39"
    tok.save_pretrained(tmp_path)
    back = Tokenizer.from_pretrained(tmp_path)
    assert back.encode(box) == tok.encode(box) and len(back) == len(tok)


@pytest.mark.parametrize("bad", [5, -1, 2.5, True])
def test_bad_numbers_are_refused(bad):
    from zamba2vl.errors import ConfigError
    from zamba2vl.train.build import load_processor
    from zamba2vl.train.config import ModelSection, TokenizerSection

    with pytest.raises(ValueError, match="numbers"):
        char_tokenizer(numbers=bad)
    with pytest.raises(ConfigError, match="tokenizer.numbers"):
        load_processor(ModelSection(), TokenizerSection(characters=True, numbers=bad), 99, 300)
    with pytest.raises(ConfigError, match="characters: true"):
        load_processor(ModelSection(), TokenizerSection(numbers=20, path="x"), 99, 300)
