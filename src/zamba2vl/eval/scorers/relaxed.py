"""Relaxed accuracy (ChartQA): a numeric answer is right within 5% of the reference, anything else
needs a case-insensitive exact match; a question is right if any of its reference answers accepts it.

Details that decide edge cases (as in pix2struct's metric that VLMEvalKit uses): the prediction is
stripped, the reference is not; "12%" reads as 0.12 (all trailing "%" are dropped); numbers are parsed
with Python's `float`, so "1e3", " 7 ", "1_000", "inf" and "nan" are numbers while "1,000" and "$5" are
not; a reference of zero can only be matched exactly (the tolerance is relative).
"""

from __future__ import annotations

import numpy as np

from zamba2vl.eval.scorers.anls import reference_answers
from zamba2vl.eval.scorers.base import Graded, ScoreReport, vlmevalkit_vqa_breakdown

MAX_RELATIVE_CHANGE = 0.05


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(target: str, prediction: str, max_relative_change: float = MAX_RELATIVE_CHANGE) -> bool:
    pred_value, target_value = _to_float(prediction), _to_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


class RelaxedAccuracy:
    name = "relaxed accuracy"

    def __init__(self, max_relative_change: float = MAX_RELATIVE_CHANGE):
        self.max_relative_change = max_relative_change

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits = []
        for g in rows:
            if g.corrupt:
                hits.append(0.0)
                continue
            pred = str(g.prediction).strip()
            hits.append(float(np.max([relaxed_correct(a, pred, self.max_relative_change)
                                      for a in reference_answers(g.sample.answer)])))
        return ScoreReport(vlmevalkit_vqa_breakdown(rows, hits), "Overall", hits)
