"""A character-level tokenizer for small models trained from scratch (the nano demo model).

A 32k-token vocabulary such as Mistral's makes most English words one token, so a tiny model would have to
learn every word of the reading task as a separate class from a handful of examples. With one token per
character it learns letters instead, and any word it can see it can spell. The vocabulary is

    <unk> <s> </s>  then every printable ASCII character (space .. ~) and newline, then <image>

so 100 tokens, built in code (no files to ship) and saved with each checkpoint as an ordinary tokenizer.json
(a BPE model without merges), loadable by ``Tokenizer.from_pretrained`` and by transformers.

Optionally, a list of whole words (``words``) become one token each after those 100 (ids 100, 101, ...): the
fixed words of the prompts ("How", "many", "circles", ...), so a question costs a token per word instead of
one per letter. They are added tokens that only match a whole word (``single_word``): "red" is one token in
"the red circle" and in the answer "red", while "redeem" stays seven letters, so anything else is still spelled
and every text still encodes one way. Spaces and punctuation stay characters, so a prompt that ends in ``A: ``
(the generation prompt) tokenizes the same as the start of a training answer.

Optionally too (``numbers``), every whole number from 10 up to ``numbers`` is one token, after the words
(session 17). A box ``[39, 11, 56, 26]`` then costs one token a coordinate, and the output head picks a
coordinate as one class of ~100 instead of spelling it: the units digit of a position is a sawtooth of that
position, a hard function for a small model to compute, while "the class nearest to x" is close to linear.
Numbers are whole-word tokens like the words: "139" is one token, "1000" (past ``numbers``) four characters,
and "a12" three characters. 0 to 9 are characters already.

At one token per character every character of the prompt costs compute, so it comes with a terse chat
template (``CHAT_TEMPLATE``): a user turn is ``Q: <text>``, a newline, then its images; the assistant's turn
starts with ``A: `` and ends with ``</s>`` and a newline; a system message is a plain line. The images come
after the question so that a causal model reads them knowing what is asked, and the answer starts right after
them (for a state-space model, whose memory of distant tokens fades, this matters).
"""

from __future__ import annotations

import json
from typing import Sequence

import tokenizers
from tokenizers import AddedToken, decoders

from zamba2vl.processing.tokenizer import Tokenizer

SPECIAL = ("<unk>", "<s>", "</s>")
CHARACTERS = "".join(chr(c) for c in range(32, 127)) + "\n"
IMAGE_TOKEN = "<image>"

CHAT_TEMPLATE = (
    "{%- set marker = image_token if image_token is defined else '<image>' -%}\n"
    "{%- for message in messages -%}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {%- set parts = [{'type': 'text', 'text': message['content']}] -%}\n"
    "    {%- else -%}\n"
    "        {%- set parts = message['content'] or [] -%}\n"
    "    {%- endif -%}\n"
    "    {%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}\n"
    "    {%- if message['role'] == 'user' -%}\n"
    "        {{- 'Q: ' ~ text ~ '\\n' -}}\n"
    "        {%- for part in parts if part['type'] in ['image', 'image_url'] -%}{{- marker -}}{%- endfor -%}\n"
    "    {%- elif message['role'] == 'assistant' -%}\n"
    "        {{- 'A: ' ~ text ~ '</s>\\n' -}}\n"
    "    {%- else -%}\n"
    "        {{- text ~ '\\n' -}}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- 'A: ' -}}{%- endif -%}\n"
)


def char_tokenizer(image_token: str = IMAGE_TOKEN, words: Sequence[str] = (), numbers: int = 0) -> Tokenizer:
    """The character tokenizer: ids 0-2 special, 3-98 the characters in ``CHARACTERS`` order, 99 the image,
    then one id per entry of ``words`` in order (each a run of letters), then, with ``numbers`` >= 10, one id per
    whole number 10, 11, .., ``numbers`` (see the module docstring)."""
    words = list(words)
    if isinstance(numbers, bool) or not isinstance(numbers, int) or numbers < 0 or 0 < numbers < 10:
        raise ValueError(f"numbers {numbers!r}: give 0 (no number tokens) or the largest whole number that is one "
                         f"token (10 or more; 0-9 are characters already)")
    for w in words:
        if not isinstance(w, str) or len(w) < 2 or not w.isascii() or not w.isalpha():
            raise ValueError(f"tokenizer word {w!r}: a whole-word token must be two or more ASCII letters")
    if len(set(words)) != len(words):
        raise ValueError(f"tokenizer words repeat: {sorted({w for w in words if words.count(w) > 1})}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()  # characters are concatenated, not joined with spaces
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIAL, image_token)])
    backend.add_tokens([AddedToken(w, single_word=True, normalized=False)
                        for w in words + [str(n) for n in range(10, numbers + 1)]])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
              "add_bos_token": False, "add_eos_token": False, "tokenizer_class": "LlamaTokenizerFast",
              "extra_special_tokens": {"image_token": image_token}}
    # Round-trip through JSON so the object is exactly what a saved checkpoint loads back.
    return Tokenizer(tokenizers.Tokenizer.from_str(backend.to_str()), json.loads(json.dumps(config)),
                     chat_template=CHAT_TEMPLATE)
