"""Tokenizer tests: against sentencepiece (the original Mistral v0.1 model) and transformers (added tokens, config)."""

import json
import random
from pathlib import Path

import mistral_common
import pytest
import sentencepiece
import tokenizers
from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

from zamba2vl.errors import ConfigError, InputError
from zamba2vl.processing.tokenizer import (
    StreamDecoder,
    Tokenizer,
    read_sentencepiece_model,
    sentencepiece_to_tokenizer_json,
)

SPM_PATH = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"

# Five additions like Zamba2-VL's (their real strings are unknown), exercising every AddedToken flag.
ADDED = [
    "<image>",
    "<video>",
    {"content": "<|vision_start|>", "special": True, "lstrip": True},
    {"content": "<|vision_end|>", "special": True, "rstrip": True},
    {"content": "<box>", "special": False, "normalized": True},
]

FRAGMENTS = [
    "hello", "Hello, world!", "the quick brown fox", "don't", "I'm", "naïve café", "Ünïcödé", "e\u0301",
    "日本語のテキスト", "中文测试", "한국어 ㅋㅋ", "Привет мир", "مرحبا", "שלום", "ελληνικά", "हिन्दी",
    "😀", "🦜🦜", "👍🏽", "🇫🇷", "𠀀", "龘", "∑∫√", "€100", "3.14159", "1,000,000", "0x1F",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "<div class=\"a\">", "SELECT * FROM t;",
    "\x00", "a\x00b", "\u200b", "zero\u200bwidth", "\u200d", "\ufeff", "\u00a0", "\u3000", "\r\n", "\x7f",
    "<0x0A>", "▁", "▁▁x", "http://example.com/a?b=c", "@user #tag", "~!@#$%^&*()_+",
]
WHITESPACE = [" ", "  ", "   ", " " * 7, " " * 16, " " * 17, " " * 33, "\t", "\t\t", "\n", "\n\n", " \n ", "\n    "]


def make_texts(n: int, seed: int = 0, specials: tuple = ()) -> list[str]:
    rng = random.Random(seed)
    texts = ["", " ", "  ", "a", " a", "a ", "  a  b  ", "\n", "\t", " " * 40, "x" + " " * 40 + "y"]
    while len(texts) < n:
        pieces = []
        for _ in range(rng.randint(1, 8)):
            pool = rng.choice((FRAGMENTS, FRAGMENTS, WHITESPACE) + ((specials,) if specials else ()))
            pieces.append(rng.choice(pool))
        sep = rng.choice(["", " ", "  "])
        text = sep.join(pieces)
        if rng.random() < 0.2:
            text = " " * rng.randint(1, 3) + text
        texts.append(text)
    return texts[:n]


@pytest.fixture(scope="module")
def sp():
    return sentencepiece.SentencePieceProcessor(model_file=str(SPM_PATH))


@pytest.fixture(scope="module")
def mistral_json():
    """Mistral v0.1 plus five added tokens like Zamba2-VL's (the texts of the sentencepiece test contain none)."""
    return sentencepiece_to_tokenizer_json(SPM_PATH, ADDED)


def _backend(tokenizer_json):
    return tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))


@pytest.fixture(scope="module")
def zamba_folder(tmp_path_factory, mistral_json):
    """A Zamba2-VL-like tokenizer folder (32000 pieces + 5 added tokens) written by our save_pretrained."""
    folder = tmp_path_factory.mktemp("zamba_tok")
    Tokenizer(_backend(mistral_json), {"extra_special_tokens": {"image_token": "<image>"}}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def zamba_tok(zamba_folder):
    return Tokenizer.from_pretrained(zamba_folder)


def test_read_sentencepiece_model():
    spm = read_sentencepiece_model(SPM_PATH)
    pieces = spm["pieces"]
    assert len(pieces) == 32000
    assert [p for p, _, _ in pieces[:3]] == ["<unk>", "<s>", "</s>"]
    assert pieces[3] == ("<0x00>", 0.0, 6)  # byte piece
    assert pieces[28705] == ("▁", -1e9, 1)
    assert spm["trainer"] | {} == spm["trainer"] and spm["trainer"]["model_type"] == 2
    assert spm["trainer"]["byte_fallback"] is True
    assert (spm["trainer"]["unk_id"], spm["trainer"]["bos_id"], spm["trainer"]["eos_id"]) == (0, 1, 2)
    assert spm["trainer"]["pad_id"] == -1
    assert spm["normalizer"]["name"] == "identity"
    assert spm["normalizer"]["add_dummy_prefix"] is True
    assert spm["normalizer"]["remove_extra_whitespaces"] is False


def test_converter_layout(mistral_json):
    assert len(mistral_json["model"]["vocab"]) == 32000
    assert len(mistral_json["model"]["merges"]) == 58980
    assert mistral_json["model"]["byte_fallback"] is True
    assert mistral_json["pre_tokenizer"] is None
    assert [(t["id"], t["content"], t["special"], t["lstrip"], t["rstrip"], t["normalized"])
            for t in mistral_json["added_tokens"]] == [
        (0, "<unk>", True, False, False, False), (1, "<s>", True, False, False, False),
        (2, "</s>", True, False, False, False), (32000, "<image>", True, False, False, False),
        (32001, "<video>", True, False, False, False), (32002, "<|vision_start|>", True, True, False, False),
        (32003, "<|vision_end|>", True, False, True, False), (32004, "<box>", False, False, False, True)]


def test_matches_sentencepiece(sp, mistral_json):
    tok = Tokenizer(_backend(mistral_json))
    texts = make_texts(200)
    assert len(set(texts)) > 190
    for text in texts:
        expected = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False) == expected, repr(text)
        assert tok.encode(text) == [1] + expected, repr(text)
        assert tok.decode(expected) == sp.decode(expected), repr(text)
        # A literal "▁" decodes to a space in both; everything else round-trips.
        assert tok.decode(expected) == text.replace("▁", " "), repr(text)
    # The texts really exercise byte fallback and the equal-score whitespace pieces.
    all_ids = {i for t in texts for i in sp.encode(t)}
    assert {3 + 0xF0, 3 + 0x00, 259, 359} <= all_ids


def test_not_bpe_rejected(tmp_path):
    bad = tmp_path / "x.model"
    bad.write_bytes(b"\x12\x02\x18\x01")  # trainer_spec { model_type: UNIGRAM }, no pieces
    with pytest.raises(ConfigError):
        sentencepiece_to_tokenizer_json(bad)


def test_zamba_like_vocabulary(zamba_tok):
    tok = zamba_tok
    assert tok.vocab_size == 32000 and len(tok) == 32005
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, None)
    assert tok.image_token == "<image>" and tok.image_token_id == 32000
    assert tok.convert_tokens_to_ids(["<video>", "<box>", "not-a-piece"]) == [32001, 32004, 0]
    assert tok.convert_ids_to_tokens([1, 28705, 32002]) == ["<s>", "▁", "<|vision_start|>"]
    assert tok.all_special_ids == [0, 1, 2, 32000]  # the special_tokens_map ones, as in transformers
    assert tok.encode("<image>\nHi") == [1, 32000, 28705, 13, 23809]


def _special_texts() -> list[str]:
    fixed = ["<image>", "<image><image>", "<image>\nDescribe this.", " <image> x", "a<image>b", "<s>hi</s>",
             "<image> <video>", "x <|vision_start|> y", "x <|vision_end|> y", "<|vision_start|><image><|vision_end|>",
             "a <box> b", "a<box>b", "  <image>  ", "<s><s>", "</s>\n<s>user\n"]
    tokens = ["<image>", "<video>", "<|vision_start|>", "<|vision_end|>", "<box>", "<s>", "</s>", "<unk>"]
    return fixed + make_texts(60, seed=1, specials=tuple(tokens))


@pytest.mark.parametrize("hf_class", [LlamaTokenizerFast, PreTrainedTokenizerFast])
def test_added_tokens_match_transformers(zamba_folder, zamba_tok, hf_class):
    ours = zamba_tok
    hf = hf_class.from_pretrained(zamba_folder)
    assert len(hf) == len(ours)
    for text in _special_texts():
        for add in (True, False):
            ids = ours.encode(text, add_special_tokens=add)
            assert ids == hf.encode(text, add_special_tokens=add), repr(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.encode_batch(["a<image>", " b"]) == hf(["a<image>", " b"])["input_ids"]
    assert ours.all_special_ids == sorted(hf.all_special_ids)


def _write_folder(folder: Path, tokenizer_json: dict, config: dict | None, special_map: dict | None = None):
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if special_map is not None:
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    return folder


CONFIGS = {
    # Legacy layout: no added_tokens_decoder, special_tokens_map.json overrides; "<pad>" and an additional
    # special token are new and get appended as special tokens.
    "legacy": ({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "pad_token": None},
               {"pad_token": "<pad>", "additional_special_tokens": ["<extra>"]}),
    "bos_off_eos_on": ({"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": True}, None),
    "generic_class": ({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}, None),
    "extra_special": ({"tokenizer_class": "LlamaTokenizer", "added_tokens_decoder": {
        "32000": {"content": "<image>", "lstrip": False, "normalized": False, "rstrip": False,
                  "single_word": False, "special": True},
        "32004": {"content": "<box>", "lstrip": False, "normalized": True, "rstrip": False,
                  "single_word": False, "special": False}},
        "extra_special_tokens": {"image_token": "<image>", "video_token": "<vid>"}}, None),
    "cleanup": ({"tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": True}, None),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_semantics_match_transformers(tmp_path, mistral_json, name):
    config, special_map = CONFIGS[name]
    folder = _write_folder(tmp_path / name, mistral_json, config, special_map)
    ours = Tokenizer.from_pretrained(folder)
    hf = LlamaTokenizerFast.from_pretrained(folder) if config.get("tokenizer_class") == "LlamaTokenizer" \
        else PreTrainedTokenizerFast.from_pretrained(folder)
    assert len(ours) == len(hf)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (hf.bos_token_id, hf.eos_token_id,
                                                                         hf.pad_token_id)
    assert ours.all_special_ids == sorted(set(hf.all_special_ids))
    texts = ["Hello , world ! I do n't know . It 's fine", "x <pad> y<extra>", "<image> <vid>", "a<s>b"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text), (name, text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    if name == "legacy":
        assert ours.pad_token_id == 32005 and ours.additional_special_tokens == ["<extra>"]
    if name == "bos_off_eos_on":
        assert ours.encode("hi") == [12014, 2]
    if name == "generic_class":  # keeps tokenizer.json's post-processor, which adds <s>
        assert ours.encode("hi") == [1, 12014]
    if name == "extra_special":
        assert (ours.image_token, ours.image_token_id, hf.image_token) == ("<image>", 32000, "<image>")
        assert ours.convert_tokens_to_ids("<vid>") == hf.convert_tokens_to_ids("<vid>") == 32005
    if name == "cleanup":
        assert ours.decode(ours.encode(texts[0]), skip_special_tokens=True) == "Hello, world! I don't know. It's fine"


def test_save_pretrained_round_trip(tmp_path, zamba_folder):
    tok = Tokenizer.from_pretrained(zamba_folder)
    tok.chat_template = "{{ messages[0]['content'] }}"
    tok.save_pretrained(tmp_path / "copy")
    again = Tokenizer.from_pretrained(tmp_path / "copy")
    hf = LlamaTokenizerFast.from_pretrained(tmp_path / "copy")
    for text in _special_texts()[:20]:
        assert again.encode(text) == tok.encode(text) == hf.encode(text)
    assert again.chat_template == hf.chat_template == "{{ messages[0]['content'] }}"
    saved = json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text())
    assert saved["added_tokens_decoder"]["32002"]["lstrip"] is True
    assert json.loads((tmp_path / "copy" / "special_tokens_map.json").read_text()) == {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def test_from_pretrained_sentencepiece_only_and_errors(tmp_path, sp):
    folder = tmp_path / "spm"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(SPM_PATH.read_bytes())
    (folder / "processor_config.json").write_text(json.dumps({"image_token": "<img>"}))
    tok = Tokenizer.from_pretrained(folder)
    assert tok.encode("Hi there") == [1] + sp.encode("Hi there")
    assert tok.image_token == "<img>" and tok.image_token_id is None
    with pytest.raises(ConfigError, match="neither tokenizer.json nor tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(InputError):
        tok.encode(["not", "a", "string"])


def test_apply_chat_template_uses_tokenizer_variables(zamba_folder):
    tok = Tokenizer.from_pretrained(zamba_folder)
    assert tok.chat_template is None
    tok.chat_template = "{{ bos_token }}|{{ image_token }}|{{ messages[0]['content'] }}|{{ add_generation_prompt }}"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s>|<image>|hi|True"


# ---- streaming --------------------------------------------------------------------------------------------


def _stream(tok, ids, skip=False, context=()):
    decoder = StreamDecoder(tok, skip_special_tokens=skip, context_ids=context)
    deltas = [decoder.put(i) for i in ids]
    deltas.append(decoder.flush())
    return deltas


def test_stream_decoder_matches_decode(zamba_tok):
    tok = zamba_tok
    texts = ["🦜 parrots 𠀀 and 龘龘, 한국어 ㅋㅋ", " leading space", "  two", "<image>\n🦜x", "a\n\n  b\tc",
             "end with emoji 🦜"] + make_texts(40, seed=2, specials=("<image>", "<s>", "</s>"))
    held = 0
    for text in texts:
        ids = tok.encode(text)
        for skip in (False, True):
            deltas = _stream(tok, ids, skip)
            assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip), repr(text)
            assert not any("\ufffd" in d for d in deltas)
            held += sum(1 for d, i in zip(deltas, ids) if d == "" and 3 <= i < 259)
    assert held > 20  # incomplete byte-fallback characters were held back


def test_stream_decoder_first_space_and_context(zamba_tok):
    tok = zamba_tok
    ids = tok.encode("Hello world", add_special_tokens=False)  # ▁Hello ▁world
    assert _stream(tok, ids) == ["Hello", " world", ""]
    prompt = tok.encode("<image>\nSay 🦜")
    generated = tok.encode("Hello 🦜 world", add_special_tokens=False)
    full = tok.decode(prompt + generated)
    deltas = _stream(tok, generated, context=prompt)
    assert "".join(deltas) == full[len(tok.decode(prompt)):] == " Hello 🦜 world"
    assert deltas[0] == " Hello"


def test_stream_decoder_incomplete_bytes_and_cleanup(tmp_path, mistral_json):
    tok = Tokenizer(_backend(mistral_json))
    decoder = StreamDecoder(tok)
    assert [decoder.put(3 + 0xE2), decoder.put(3 + 0x82)] == ["", ""]
    assert decoder.flush() == "\ufffd\ufffd" == tok.decode([3 + 0xE2, 3 + 0x82])

    cleaning = Tokenizer(_backend(mistral_json), {"clean_up_tokenization_spaces": True})
    text = "Hello , world ! I do n't know . It 's a ' quoted ' thing , right ? " * 3
    ids = cleaning.encode(text)
    deltas = _stream(cleaning, ids, skip=True)
    expected = text
    for before, after in ((" ,", ","), (" !", "!"), (" .", "."), (" ?", "?"), (" ' ", "'"), (" n't", "n't"),
                          (" 's", "'s")):
        expected = expected.replace(before, after)
    assert "".join(deltas) == cleaning.decode(ids, skip_special_tokens=True) == expected
    assert sum(1 for d in deltas if d) > 5  # it streamed, not everything at the end
