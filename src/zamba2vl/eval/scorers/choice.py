"""Multiple-choice answer extraction and accuracy (AI2D, MMMU, SEED-Bench, BLINK, RealWorldQA).

The extraction reproduces VLMEvalKit's rule-based matcher (`can_infer`, the "exact_matching" policy,
no LLM judge). In order:

1. A response containing "Failed to obtain answer via API" gives up on letters (text matching still runs).
2. A refusal phrase ("Cannot determine the answer", ...) is the special answer "Z".
3. The characters ``.()[],:;!*#{}`` become spaces and the response is split on whitespace. If exactly
   one option letter occurs as a token, and its first occurrence is among the last four tokens, it is the
   answer. ("A" as an article is not special-cased.) With no option letter but a "Z" token, "Z".
4. "answer is X" / "correct answer is **X**" (any case; X in A-D) when X is an option.
5. Otherwise, when the response is at most twice as long as all option texts together, the one option
   whose text (lower-cased) occurs in the lower-cased response.
6. Nothing found: "Z", which matches no answer.

MMMU's open questions (no option A) are first turned into a two-way choice between the reference answer
("A") and "Other Answers" ("B"), and a non-letter reference answer becomes "A", as VLMEvalKit does.
"""

from __future__ import annotations

import re
import string

from zamba2vl.eval.data import OPTION_LETTERS, EvalSample
from zamba2vl.eval.scorers.base import Graded, ScoreReport, vlmevalkit_mcq_breakdown

API_FAILURE = "Failed to obtain answer via API"
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
_SEPARATORS = ".()[],:;!*#{}"
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
NO_ANSWER = "Z"


def letter_from_tokens(response: str, choices: dict[str, str]) -> str | None:
    if API_FAILURE in response:
        return None
    if any(r in response for r in REFUSALS):
        return NO_ANSWER
    spaced = response
    for ch in _SEPARATORS:
        spaced = spaced.replace(ch, " ")
    tokens = [t.strip() for t in spaced.split()]
    present = [c for c in choices if c in tokens]
    if len(present) == 1:
        if tokens.index(present[0]) > len(tokens) - 5:
            return present[0]
    elif not present and "Z" in tokens:
        return NO_ANSWER
    m = _ANSWER_IS.search(response)
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def letter_from_text(response: str, choices: dict[str, str]) -> str | None:
    response = response.lower()
    if len(response) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    found = [c for c, text in choices.items() if str(text).lower() in response]
    return found[0] if len(found) == 1 else None


def extract_choice(response: str, choices: dict[str, str]) -> str | None:
    """The option letter a free-form response picks, "Z" for an explicit non-answer, None if unknown."""
    response = str(response)
    return letter_from_tokens(response, choices) or letter_from_text(response, choices)


def mmmu_choices_and_answer(sample: EvalSample) -> tuple[dict[str, str], str]:
    choices = sample.options
    answer = sample.answer
    if sample.fields.get("A") is None:  # an open question, re-posed as "the answer" vs "something else"
        choices = {"A": answer, "B": "Other Answers", **{k: v for k, v in choices.items() if k not in "AB"}}
        choices = {k: choices[k] for k in OPTION_LETTERS if k in choices}
    gt = answer if answer in list(string.ascii_uppercase) else "A"
    return choices, gt


def headline_key(metrics: dict[str, float]) -> str:
    """"Overall", or with a split column the validation (else the first) split's overall."""
    if "Overall" in metrics:
        return "Overall"
    if "validation/Overall" in metrics:
        return "validation/Overall"
    return next(k for k in metrics if k.endswith("/Overall"))


class ChoiceAccuracy:
    name = "accuracy"

    def __init__(self, mmmu: bool = False):
        self.mmmu = mmmu

    def extract(self, sample: EvalSample, prediction: str) -> tuple[str, str]:
        if self.mmmu:
            choices, gt = mmmu_choices_and_answer(sample)
        else:
            choices, gt = sample.options, sample.answer
        return extract_choice(prediction, choices) or NO_ANSWER, gt

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits, picked = [], []
        for g in rows:
            if g.corrupt:
                hits.append(0)
                picked.append(None)
                continue
            letter, gt = self.extract(g.sample, str(g.prediction))
            hits.append(int(letter == gt))
            picked.append(letter)
        unresolved = sum(1 for p in picked if p == NO_ANSWER)
        metrics = vlmevalkit_mcq_breakdown(rows, hits)
        return ScoreReport(metrics, headline_key(metrics), [float(h) for h in hits],
                           extras={"unresolved": unresolved, "choices": picked})
