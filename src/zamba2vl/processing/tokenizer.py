"""Zamba2-VL's text tokenizer: the Mistral v0.1 SentencePiece BPE, run through the `tokenizers` library.

Three parts:
- `sentencepiece_to_tokenizer_json` builds a Hugging Face `tokenizer.json` from a SentencePiece `.model` file
  (the protobuf is read here, the `sentencepiece` package is not needed).
- `Tokenizer` loads `tokenizer.json` + `tokenizer_config.json` (+ `special_tokens_map.json`) with the semantics of
  transformers' `LlamaTokenizerFast`, so that token ids match what the reference stack feeds the model.
- `StreamDecoder` turns generated ids into text deltas without ever splitting a UTF-8 character.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, processors

from zamba2vl.errors import ConfigError, InputError
from zamba2vl.processing.chat import default_chat_template, find_chat_template, render_chat

DEFAULT_IMAGE_TOKEN = "<image>"
_SPACE = "\u2581"  # SentencePiece's visible space "▁"
_REPLACEMENT = "\ufffd"

# SentencePiece piece types (sentencepiece_model.proto, ModelProto.SentencePiece.Type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BPE = 2  # TrainerSpec.ModelType


# --------------------------------------------------------------------------------------------------------------
# SentencePiece .model -> tokenizer.json


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int | bytes]]:
    """Yield (field number, value) of one protobuf message: ints for varints, bytes for everything else."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i : i + size], i + size
        else:
            raise ConfigError(f"not a SentencePiece model: unsupported protobuf wire type {wire}")
        yield field, value


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value  # negative int32 are sign-extended varints


def read_sentencepiece_model(path: str | Path) -> dict[str, Any]:
    """The parts of a SentencePiece ModelProto the converter needs: pieces (piece, score, type) and the specs."""
    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read SentencePiece model {path}: {e}") from e
    pieces: list[tuple[str, float, int]] = []
    trainer = {"model_type": 1, "byte_fallback": False, "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
               "treat_whitespace_as_suffix": False}
    normalizer = {"name": "", "precompiled_charsmap": b"", "add_dummy_prefix": True,
                  "remove_extra_whitespaces": True, "escape_whitespaces": True}
    trainer_fields = {3: "model_type", 24: "treat_whitespace_as_suffix", 35: "byte_fallback",
                      40: "unk_id", 41: "bos_id", 42: "eos_id", 43: "pad_id"}
    normalizer_fields = {1: "name", 2: "precompiled_charsmap", 3: "add_dummy_prefix",
                         4: "remove_extra_whitespaces", 5: "escape_whitespaces"}
    try:
        for field, value in _proto_fields(buf):
            if field == 1:  # repeated SentencePiece pieces
                piece, score, kind = "", 0.0, _NORMAL
                for f, v in _proto_fields(value):
                    if f == 1:
                        piece = v.decode("utf-8")
                    elif f == 2:
                        score = struct.unpack("<f", v)[0]
                    elif f == 3:
                        kind = v
                pieces.append((piece, score, kind))
            elif field == 2:  # TrainerSpec
                for f, v in _proto_fields(value):
                    if f in trainer_fields:
                        name = trainer_fields[f]
                        trainer[name] = bool(v) if isinstance(trainer[name], bool) else _int32(v)
            elif field == 3:  # NormalizerSpec
                for f, v in _proto_fields(value):
                    if f in normalizer_fields:
                        name = normalizer_fields[f]
                        default = normalizer[name]
                        normalizer[name] = bool(v) if isinstance(default, bool) else (
                            v.decode("utf-8") if isinstance(default, str) else v)
    except (IndexError, UnicodeDecodeError, struct.error) as e:
        raise ConfigError(f"{path} is not a readable SentencePiece model ({e})") from e
    if not pieces:
        raise ConfigError(f"{path} holds no SentencePiece pieces; is it a SentencePiece .model file?")
    return {"pieces": pieces, "trainer": trainer, "normalizer": normalizer}


def _added_token(spec: str | Mapping[str, Any], special: bool) -> AddedToken:
    """An AddedToken from a string (with the given special flag) or from a dict in tokenizer.json/config style."""
    if isinstance(spec, str):
        return AddedToken(spec, special=special)
    fields = {k: spec[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in spec}
    if "content" not in spec:
        raise ConfigError(f"added token {dict(spec)!r} has no 'content'")
    return AddedToken(spec["content"], **fields)


def sentencepiece_to_tokenizer_json(
    model_path: str | Path, added_tokens: Sequence[str | Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Build a `tokenizers` BPE that encodes exactly like sentencepiece, returned as a tokenizer.json dict.

    Merges are every split of a normal piece into two normal pieces, ordered by the merged piece's score (highest
    first); among equal scores longer left halves come first, which reproduces sentencepiece's leftmost-first
    choice on Mistral's equal-score whitespace pieces. The normalizer prepends "▁" and turns spaces into "▁"; there
    is no pre-tokenizer. `added_tokens` are appended after the SentencePiece pieces: strings become special tokens,
    dicts are read like tokenizer.json's `added_tokens` entries (special defaults to True).
    """
    spm = read_sentencepiece_model(model_path)
    trainer, norm = spm["trainer"], spm["normalizer"]
    if trainer["model_type"] != _BPE:
        raise ConfigError(f"{model_path}: only SentencePiece BPE models are supported, "
                          f"this one has model_type={trainer['model_type']}")
    if norm["precompiled_charsmap"] or norm["remove_extra_whitespaces"] or not norm["escape_whitespaces"] \
            or trainer["treat_whitespace_as_suffix"]:
        raise ConfigError(f"{model_path}: SentencePiece normalization {norm['name']!r} with these options is not "
                          "supported; only identity normalization without whitespace collapsing is")
    pieces = spm["pieces"]
    kinds = {kind for _, _, kind in pieces}
    if kinds & {_USER_DEFINED, _UNUSED}:
        raise ConfigError(f"{model_path}: user-defined and unused pieces are not supported by this converter")
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    mergeable = {piece for piece, _, kind in pieces if kind == _NORMAL}
    candidates = []
    for piece_id, (piece, score, kind) in enumerate(pieces):
        if kind != _NORMAL:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                candidates.append((-score, -len(left), -len(right), piece_id, left, right))
    candidates.sort()
    merges = [(left, right) for *_, left, right in candidates]

    unk = pieces[trainer["unk_id"]][0] if 0 <= trainer["unk_id"] < len(pieces) else None
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                          byte_fallback=trainer["byte_fallback"]))
    steps = [normalizers.Prepend(_SPACE)] if norm["add_dummy_prefix"] else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", _SPACE)])
    dec = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if norm["add_dummy_prefix"] else []))
    tok.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                            for piece, _, kind in pieces if kind in (_UNKNOWN, _CONTROL)])
    if 0 <= trainer["bos_id"] < len(pieces):
        bos = pieces[trainer["bos_id"]][0]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, trainer["bos_id"])])
    for spec in added_tokens:
        token = _added_token(spec, special=True) if isinstance(spec, str) else \
            _added_token({"special": True, **spec}, special=True)
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
    return json.loads(tok.to_str())


# --------------------------------------------------------------------------------------------------------------
# Tokenizer

_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _content(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f"special token {value!r} is neither a string nor a dict with 'content'")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization_spaces`: drop the space before some punctuation and English clitics."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the tokenizer_config.json semantics of transformers' LlamaTokenizerFast.

    Loading follows transformers 4.52: the added tokens of `added_tokens_decoder` and every special token named in
    the config that tokenizer.json lacks are added to the backend (special ones are split out of the text before
    the BPE, honouring the lstrip/rstrip/normalized/single_word flags); `special_tokens_map.json` is read only when
    the config has no `added_tokens_decoder`, and then overrides it. BOS/EOS are added per `add_bos_token`
    (default True) / `add_eos_token` (default False), except for `tokenizer_class: PreTrainedTokenizerFast`, which
    keeps tokenizer.json's own post-processor.
    """

    def __init__(self, backend: tokenizers.Tokenizer, config: Mapping[str, Any] | None = None,
                 chat_template: str | None = None, processor_config: Mapping[str, Any] | None = None):
        self.backend = backend
        self.config = dict(config or {})
        cfg = self.config
        # transformers picks the class from tokenizer_class; Zamba2 maps to LlamaTokenizerFast when it is absent.
        self.llama_semantics = cfg.get("tokenizer_class") != "PreTrainedTokenizerFast"
        self._defaults = _LLAMA_DEFAULTS if self.llama_semantics else {}
        for key in _SPECIAL_ATTRIBUTES:
            setattr(self, key, _content(cfg.get(key, self._defaults.get(key))))
        self.additional_special_tokens = [_content(t) for t in cfg.get("additional_special_tokens") or []]
        self.extra_special_tokens = {k: _content(v) for k, v in (cfg.get("extra_special_tokens") or {}).items()}
        self.add_bos_token = bool(cfg.get("add_bos_token", True))
        self.add_eos_token = bool(cfg.get("add_eos_token", False))
        self.clean_up_tokenization_spaces = bool(cfg.get("clean_up_tokenization_spaces", False))
        self.model_max_length = int(cfg.get("model_max_length") or int(1e30))
        self.chat_template = chat_template
        # HF sets `tokenizer.image_token` only from extra_special_tokens; the other sources are our fallbacks.
        self.image_token: str = (self.extra_special_tokens.get("image_token") or _content(cfg.get("image_token"))
                                 or _content((processor_config or {}).get("image_token")) or DEFAULT_IMAGE_TOKEN)

        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(cfg.get("split_special_tokens", False))
        self._add_config_tokens(cfg)
        if self.llama_semantics:
            self._set_bos_eos_post_processor()

    def _add_config_tokens(self, cfg: Mapping[str, Any]) -> None:
        # Same calls as transformers' PreTrainedTokenizerFast.__init__: every added_tokens_decoder entry (by id),
        # then each special token the backend does not know yet; all through the backend's add_tokens.
        raw = cfg.get("added_tokens_decoder") or {}
        try:
            to_add = [_added_token(raw[k], special=False) for k in sorted(raw, key=int)]
        except ValueError as e:
            raise ConfigError(f"added_tokens_decoder has a non-integer id: {e}") from e
        special_specs = [cfg.get(k, self._defaults.get(k)) for k in _SPECIAL_ATTRIBUTES]
        special_specs += list(cfg.get("additional_special_tokens") or [])
        special_specs += list((cfg.get("extra_special_tokens") or {}).values())
        special_specs = [s for s in special_specs if s]
        specials = {_content(s) for s in special_specs}
        known = {t.content for t in self.backend.get_added_tokens_decoder().values()} | {t.content for t in to_add}
        for spec in special_specs:
            if _content(spec) not in known:
                to_add.append(_added_token(spec, special=True))
                known.add(_content(spec))
        for token in to_add:
            token.special = token.special or token.content in specials
        if to_add:
            self.backend.add_tokens(to_add)

    def _set_bos_eos_post_processor(self) -> None:
        special = []
        for use, token in ((self.add_bos_token, self.bos_token), (self.add_eos_token, self.eos_token)):
            if use:
                if token is None or self.backend.token_to_id(token) is None:
                    raise ConfigError(f"tokenizer config asks to add {token!r} to every sequence but the token is "
                                      "not defined; set add_bos_token/add_eos_token to false or define the token")
                special.append((token, self.backend.token_to_id(token)))
        def template(seq: str, type_id: int) -> str:
            bos = f"{self.bos_token}:{type_id} " if self.add_bos_token else ""
            eos = f" {self.eos_token}:{type_id}" if self.add_eos_token else ""
            return f"{bos}{seq}:{type_id}{eos}"

        single = template("$A", 0)
        pair = f"{single} {template('$B', 1)}"
        self.backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                    special_tokens=special)

    # ---- loading and saving ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load from a checkpoint folder holding tokenizer.json (or only a SentencePiece tokenizer.model)."""
        folder = Path(folder)
        cfg_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
        cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
        if "added_tokens_decoder" not in cfg and map_path.is_file():  # transformers' legacy path
            for key, value in _read_json(map_path).items():
                if key == "additional_special_tokens" and isinstance(value, list):
                    old = list(cfg.get("additional_special_tokens") or [])
                    value = old + [t for t in value if _content(t) not in {_content(o) for o in old}]
                cfg[key] = value
        if (folder / "tokenizer.json").is_file():
            try:
                backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust parser raises plain Exception
                raise ConfigError(f"cannot parse {folder / 'tokenizer.json'}: {e}") from e
        elif (folder / "tokenizer.model").is_file():
            tokenizer_json = sentencepiece_to_tokenizer_json(folder / "tokenizer.model")
            backend = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
        else:
            raise ConfigError(f"{folder} has neither tokenizer.json nor tokenizer.model; "
                              "point at the checkpoint folder")
        found = find_chat_template(folder)
        proc_path = folder / "processor_config.json"
        proc = _read_json(proc_path) if proc_path.is_file() else None
        return cls(backend, cfg, chat_template=found[0] if found else None, processor_config=proc)

    @classmethod
    def from_sentencepiece(cls, model_path: str | Path, added_tokens: Sequence[str | Mapping[str, Any]] = (),
                           config: Mapping[str, Any] | None = None) -> Tokenizer:
        """Build from a SentencePiece .model file (see `sentencepiece_to_tokenizer_json`)."""
        tokenizer_json = sentencepiece_to_tokenizer_json(model_path, added_tokens)
        return cls(tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json)), config)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (loadable by transformers too)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        specials = {k: getattr(self, k) for k in _SPECIAL_ATTRIBUTES if getattr(self, k) is not None}
        if self.additional_special_tokens:
            specials["additional_special_tokens"] = list(self.additional_special_tokens)
        cfg = dict(self.config)
        cfg.update(specials)
        cfg.update(
            add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token,
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces, model_max_length=self.model_max_length,
            tokenizer_class=cfg.get("tokenizer_class", "LlamaTokenizer"),
            added_tokens_decoder={str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                                           "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
                                  for i, t in sorted(self.backend.get_added_tokens_decoder().items())},
        )
        if self.extra_special_tokens:
            cfg["extra_special_tokens"] = dict(self.extra_special_tokens)
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                       encoding="utf-8")
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                         encoding="utf-8")

    # ---- encoding and decoding -------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"can only tokenize a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("encode_batch takes a list of str")
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int] | None:
        """Token string(s) to id(s); unknown strings give the unk id (None if there is no unk token)."""
        if isinstance(tokens, str):
            found = self.backend.token_to_id(tokens)
            return found if found is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str] | None:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def image_token_id(self) -> int | None:
        return self._id(self.image_token)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (32000 for Mistral v0.1), as in transformers."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size including added tokens (32005 for Zamba2-VL); the embedding matrix may be larger still."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """Special token strings by attribute name; what transformers passes to chat templates."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _SPECIAL_ATTRIBUTES if getattr(self, k) is not None}
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        out.update(self.extra_special_tokens)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the tokens named in special_tokens_map (as transformers' `all_special_ids`), sorted."""
        tokens = [t for v in self.special_tokens_map.values() for t in (v if isinstance(v, list) else [v])]
        return sorted({i for i in map(self._id, tokens) if i is not None})

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **variables: Any) -> str:
        """Render messages with the checkpoint's template (or our default, with a one-time warning) to a prompt."""
        template = self.chat_template if self.chat_template is not None else default_chat_template()
        merged = {**self.special_tokens_map, "image_token": self.image_token, **variables}
        return render_chat(template, messages, add_generation_prompt=add_generation_prompt, **merged)


# --------------------------------------------------------------------------------------------------------------
# Streaming detokenization

_CLEANUP_HOLDBACK = 40  # chars; a change at the end of the text moves clean_up_tokenization's output at most ~33 back


class StreamDecoder:
    """Incremental detokenizer: `put(id)` returns the text that id completes, `flush()` the rest.

    Each call decodes a short window of recent ids twice (with and without the new id) and returns the difference.
    The window always begins with visible text (or at the start of the stream), so the SentencePiece decoder's
    leading-space strip falls inside the window's common prefix, except at the very start of the stream. Text ending in
    U+FFFD (an incomplete byte-fallback character) is held back until more ids arrive or `flush()` is called.
    The deltas concatenate to `tokenizer.decode(all ids)`, for any ids that decode to valid UTF-8. (If the model
    emits byte tokens that are not valid UTF-8 after a complete character of the same byte run, the `tokenizers`
    decoder turns the whole run into U+FFFD; the stream has already emitted the character and cannot take it back.)
    `context_ids` (e.g. the prompt) set where the stream starts: their text is not emitted, but a first generated
    "▁word" then yields " word", as in `decode(context + generated)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False, context_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = [int(i) for i in context_ids]
        self._read = len(self.ids)
        self._prefix = max(0, self._read - 8)
        self._cleanup = tokenizer.clean_up_tokenization_spaces
        self._raw = ""  # cleanup mode only: all raw text so far, and how much of its cleaned form was emitted
        self._emitted = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.backend.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        while self._prefix > 0 and not prefix_text:
            # The window must start with visible text: if it started with, say, skipped special tokens, the
            # decoder's leading-space strip would hit the new token, which it does not in the full decode.
            self._prefix -= 1
            prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if not final and new_text.endswith(_REPLACEMENT):
            return ""
        if new_text.startswith(prefix_text):
            delta = new_text[len(prefix_text) :]
        else:  # only after invalid UTF-8 (see class docstring): emit what differs
            common = next((i for i, (a, b) in enumerate(zip(prefix_text, new_text)) if a != b),
                          min(len(prefix_text), len(new_text)))
            delta = new_text[common:]
        self._prefix, self._read = self._read, len(self.ids)
        if not self._cleanup:
            return delta
        self._raw += delta
        clean = clean_up_tokenization(self._raw)
        stable = len(clean) if final else max(self._emitted, len(clean) - _CLEANUP_HOLDBACK)
        out, self._emitted = clean[self._emitted : stable], stable
        return out

    def put(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit everything held back (an incomplete character decodes to U+FFFD, as in `decode`)."""
        return self._advance(final=True)
