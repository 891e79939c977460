"""OCRBench: a question is right when one of its reference answers occurs as a substring of the
prediction. Handwritten mathematical expressions compare with every space and newline removed (case
kept); all other categories compare lower-cased, stripped, with newlines turned into spaces (a
reference "a\\nb" therefore matches "a b"). The score is the number right out of 1000; the ten
categories are summed into five reported groups, as in VLMEvalKit's `OCRBench.evaluate`.
"""

from __future__ import annotations

from zamba2vl.eval.data import parse_literal_list
from zamba2vl.eval.scorers.base import Graded, ScoreReport

HME = "Handwritten Mathematical Expression Recognition"
TEXT_RECOGNITION = [
    "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
]
CATEGORIES = TEXT_RECOGNITION + ["Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction", HME]
GROUPS = ["Text Recognition", "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction", HME]


def ocrbench_row(category: str, answers: list[str], prediction: str) -> bool:
    if category == HME:
        squash = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
        return any(squash(a) in squash(prediction) for a in answers)
    flat = lambda s: s.lower().strip().replace("\n", " ")  # noqa: E731
    return any(flat(a) in flat(prediction) for a in answers)


def answers_of(answer) -> list[str] | None:
    items = parse_literal_list(answer)
    return None if items is None else [str(a) for a in items]


class OCRBenchScore:
    name = "OCRBench score"

    def score(self, rows: list[Graded]) -> ScoreReport:
        per_category = {c: 0 for c in CATEGORIES}
        row_scores = []
        for g in rows:
            cat = g.sample.fields.get("category")
            answers = answers_of(g.sample.answer)
            ok = (not g.corrupt and cat in per_category and answers is not None
                  and ocrbench_row(cat, answers, str(g.prediction)))
            if ok:
                per_category[cat] += 1
            row_scores.append(float(ok))
        groups = {"Text Recognition": sum(per_category[c] for c in TEXT_RECOGNITION)}
        groups.update({k: per_category[k] for k in GROUPS[1:]})
        final = sum(groups.values())
        metrics = {k: float(v) for k, v in groups.items()}
        metrics["Final Score"] = float(final)
        metrics["Final Score Norm"] = float(final) / 10  # the reference's headline: right answers out of 1000
        metrics["Accuracy"] = float(final * 100) / len(rows) if rows else 0.0  # equals the Norm at 1000 rows
        return ScoreReport(metrics, "Accuracy", row_scores, extras={"per_category": per_category})
