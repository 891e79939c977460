"""Score a table of rows that already carry a `prediction` column, by scorer name.

Used to compare our scorers with the reference harnesses on the same predictions file
(scripts/compare_eval_scorers.py and tests/eval/test_eval_reference_scores.py).

Scorer names: anls, relaxed, textvqa, vqav2, ocrbench, choice, mmmu, count:<rule>,
mathvista:rules, mathvista:judge (the judge's answers read from a `judge_output` column).
"""

from __future__ import annotations

import json
from pathlib import Path

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import (ANLS, ChoiceAccuracy, CountingAccuracy, Graded, MathVistaAccuracy, OCRBenchScore,
                                   RelaxedAccuracy, TextVQAAccuracy, VQAv2Accuracy)

_PLAIN = {"anls": ANLS, "relaxed": RelaxedAccuracy, "textvqa": TextVQAAccuracy, "vqav2": VQAv2Accuracy,
          "ocrbench": OCRBenchScore, "choice": ChoiceAccuracy, "mmmu": lambda: ChoiceAccuracy(mmmu=True)}


def read_table(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rescore(spec: str, rows: list[dict]) -> dict[str, float]:
    graded = [Graded(EvalSample(index=r.get("index", r.get("question_id")),
                                fields={k: v for k, v in r.items() if k not in ("prediction", "judge_output")}),
                     r["prediction"]) for r in rows]
    name, _, arg = spec.partition(":")
    if name == "mathvista":
        canned = {str(r["index"]): r.get("judge_output") for r in rows}
        judge = (lambda s, p: canned[s.key]) if arg == "judge" else None
        report = MathVistaAccuracy(judge=judge).score(graded)
        return {**report.metrics, "resolved_by_rules": report.extras["resolved_by_rules"]}
    scorer = CountingAccuracy(arg) if name == "count" else _PLAIN[name]()
    return dict(scorer.score(graded).metrics)
