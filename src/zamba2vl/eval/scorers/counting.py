"""Counting accuracy (CountBenchQA, PixMoCount).

Three rules, because the reference harnesses disagree:

* "integer" (our default for both benchmarks; lmms-eval's PixMoCount rule): the first run of digits in
  the stripped prediction must equal the first run of digits in the reference, as strings ("07" is not
  "7"; any Unicode decimal digit counts, as with Python's `\\d`). A prediction without digits is
  compared whole.
* "substring" (VLMEvalKit's CountBenchQA): right when the reference string occurs anywhere in the
  prediction, so "12" is accepted for a reference of "2" and "1, 2, 3, 4" for any of those numbers.
* "exact" (lmms-eval's CountBenchQA): the stripped prediction must equal the reference.

The mean is sum / len (lmms-eval) for "integer" and "exact", correct / total (VLMEvalKit) for
"substring"; all reported as percentages.
"""

from __future__ import annotations

import re

from zamba2vl.eval.scorers.base import Graded, ScoreReport

RULES = ("integer", "substring", "exact")
_DIGITS = re.compile(r"\d+")


def first_integer(text: str) -> str | None:
    m = _DIGITS.search(text)
    return m.group() if m else None


def count_correct(rule: str, answer: str, prediction: str) -> bool:
    if rule == "integer":
        pred = prediction.strip()
        truth = answer.strip()
        truth = first_integer(truth) or truth
        return (first_integer(pred) or pred) == truth
    if rule == "substring":
        return answer in prediction
    if rule == "exact":
        return prediction.strip() == answer
    raise ValueError(f"unknown counting rule {rule!r}; choose one of {RULES}")


class CountingAccuracy:
    name = "accuracy"

    def __init__(self, rule: str = "integer"):
        if rule not in RULES:
            raise ValueError(f"unknown counting rule {rule!r}; choose one of {RULES}")
        self.rule = rule

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits = [0.0 if g.corrupt else float(count_correct(self.rule, str(g.sample.answer), str(g.prediction)))
                for g in rows]
        if self.rule == "substring":
            overall = (sum(1 for h in hits if h) / len(hits) if hits else 0) * 100
        else:
            overall = sum(hits) / len(hits) * 100 if hits else 0.0
        return ScoreReport({"Overall": overall}, "Overall", hits, extras={"rule": self.rule})
