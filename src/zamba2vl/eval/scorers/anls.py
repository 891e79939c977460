"""ANLS (DocVQA, InfoVQA): one minus the normalised edit distance to the closest reference answer,
zeroed below the 0.5 threshold, averaged over questions.

As in VLMEvalKit (`vqa_eval.anls_compute` + `hit_calculate`): the distance is taken between the
lower-cased, whitespace-collapsed strings, but it is divided by the longer of the two *raw* strings
(measured after `str.upper()`, which can lengthen text such as "ß"), and the prediction is not stripped
before its length is measured.
"""

from __future__ import annotations

import numpy as np

from zamba2vl.eval.data import parse_literal_list
from zamba2vl.eval.scorers.base import Graded, ScoreReport, vlmevalkit_vqa_breakdown

THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    prev = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        cur = [j]
        for i, ca in enumerate(a, start=1):
            cur.append(prev[i - 1] if ca == cb else 1 + min(prev[i - 1], prev[i], cur[i - 1]))
        prev = cur
    return prev[-1]


def normalized_distance(reference: str, prediction: str) -> float:
    ref = " ".join(reference.strip().lower().split())
    pred = " ".join(prediction.strip().lower().split())
    length = max(len(reference.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else float(levenshtein(ref, pred)) / float(length)


def reference_answers(answer) -> list[str]:
    """A Python-literal list cell gives several answers; anything else is the one answer."""
    items = parse_literal_list(answer)
    return [str(a) for a in items] if items is not None else [str(answer)]


def anls_row(answers: list[str], prediction: str, threshold: float = THRESHOLD) -> float:
    similarity = 1 - np.min([normalized_distance(a, prediction) for a in answers])
    return 0.0 if similarity < threshold else similarity


class ANLS:
    name = "ANLS"

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits = [0.0 if g.corrupt else anls_row(reference_answers(g.sample.answer), str(g.prediction), self.threshold)
                for g in rows]
        return ScoreReport(vlmevalkit_vqa_breakdown(rows, hits), "Overall", [float(h) for h in hits])
