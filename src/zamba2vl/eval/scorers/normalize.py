"""The VQA answer normalisation (the official VQA evaluation's rules), in the two variants in use.

Both harnesses strip punctuation, drop articles, spell small numbers as digits and restore the
apostrophes of common contractions. They differ only in two regular expressions:

* VLMEvalKit (TextVQA): a period is removed unless a digit stands on *either* side ("3.5" and "3."
  keep theirs); "a digit, a comma, a digit" decides whether punctuation is deleted or spaced out.
* lmms-eval (VQAv2): the look-behind of the period rule is misspelled as a look-ahead, so a period is
  kept only when a digit *follows* it ("3." loses its period); runs of commas between digits count.

Both pass `re.UNICODE` (= 32) as the `count` argument of `re.sub`, so at most 32 periods are removed
from one answer; that is reproduced here.
"""

from __future__ import annotations

import re

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_MAX_PERIODS_REMOVED = 32  # re.UNICODE's value, passed as `count` by both reference implementations

_PERIOD = {
    "vlmevalkit": re.compile(r"(?<!\d)\.(?!\d)"),
    "lmms": re.compile(r"(?!<=\d)(\.)(?!\d)"),
}
_DIGIT_COMMA = {
    "vlmevalkit": re.compile(r"(\d)(,)(\d)"),
    "lmms": re.compile(r"(?<=\d)(\,)+(?=\d)"),
}

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(["a", "an", "the"])

# Contractions written with their apostrophe; the same word without it is mapped back.
_ONE_APOSTROPHE = """
ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll how's
isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't should've
shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll that's there'd
there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're what's what've
when's where'd where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all
you'd you'll you're you've
""".split()
# Contractions with two or more apostrophes: only the listed partial spellings are mapped back.
_SEVERAL_APOSTROPHES = {
    "couldn't've": ["couldn'tve", "couldnt've"], "hadn't've": ["hadnt've", "hadn'tve"],
    "he'd've": ["hed've", "he'dve"], "it'd've": ["itd've", "it'dve"],
    "mightn't've": ["mightnt've", "mightn'tve"], "'ow's'at": ["ow's'at", "'ows'at", "'ow'sat"],
    "she'd've": ["shed've", "she'dve"], "shouldn't've": ["shouldnt've", "shouldn'tve"],
    "somebody'd've": ["somebodyd've", "somebody'dve"], "someone'd've": ["someoned've", "someone'dve"],
    "something'd've": ["somethingd've", "something'dve"], "there'd've": ["thered've", "there'dve"],
    "they'd've": ["theyd've", "they'dve"], "we'd've": ["wed've", "we'dve"], "who'd've": ["whod've", "who'dve"],
    "wouldn't've": ["wouldnt've", "wouldn'tve"], "y'all'll": ["yall'll", "y'allll"],
    "y'all'd've": ["yall'd've", "y'alld've", "y'all'dve"], "you'd've": ["youd've", "you'dve"],
}


def _build_contractions() -> dict[str, str]:
    table = {word.replace("'", ""): word for word in _ONE_APOSTROPHE}
    for word, spellings in _SEVERAL_APOSTROPHES.items():
        table.update({s: word for s in spellings})
    table["somebody'd"] = "somebodyd"  # the official table maps this one the wrong way round; kept
    return table


CONTRACTIONS = _build_contractions()


def process_punctuation(text: str, flavour: str = "vlmevalkit") -> str:
    out = text
    digit_comma = _DIGIT_COMMA[flavour].search(text) is not None
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD[flavour].sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str, flavour: str = "vlmevalkit") -> str:
    """Whitespace, punctuation, digits/articles/contractions: the full VQA answer normalisation."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, flavour))
