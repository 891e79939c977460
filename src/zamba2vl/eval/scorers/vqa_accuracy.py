"""VQA accuracy over ten human answers (TextVQA, VQAv2): min(1, matches / 3) against each leave-one-out
subset of the references, averaged; answers and prediction pass the VQA normalisation first.

Two reference implementations, reproduced separately because they disagree on edge cases:

* `TextVQAAccuracy` follows VLMEvalKit (`vqa_eval.process_line`, method "vqa_score"): references come
  from a Python-literal list in the `answer` cell; the leave-one-out subset drops one *position*; a
  single (non-list) answer therefore never scores. Mean with numpy, times 100.
* `VQAv2Accuracy` follows lmms-eval's `vqav2_process_results`: references are the `answers` dicts; the
  leave-one-out subset drops every dict *equal* to the held-out one (so identical dicts leave together);
  normalisation uses the lmms-eval period/comma rules; the per-question mean is `statistics.mean`, the
  benchmark mean is sum / len. Plain-string answers are given distinct ids (`answer_id` 1..n) first, so
  identical strings still count separately, as they do in the real data.
"""

from __future__ import annotations

import statistics

import numpy as np

from zamba2vl.eval.data import parse_literal_list
from zamba2vl.eval.scorers.base import Graded, ScoreReport, plain_mean_percent, vlmevalkit_vqa_breakdown
from zamba2vl.eval.scorers.normalize import normalize_answer


def textvqa_row(answer, prediction: str) -> float:
    items = parse_literal_list(answer)
    answers = [str(a) for a in items] if items is not None else [str(answer)]
    gts = [normalize_answer(a, "vlmevalkit") for a in answers]
    pred = normalize_answer(prediction, "vlmevalkit")
    match = []
    for held_out in range(len(gts)):
        hits = sum(1 for j, gt in enumerate(gts) if j != held_out and gt == pred)
        match.append(min(1, float(hits) / 3))
    return float(np.mean(match))


class TextVQAAccuracy:
    name = "VQA accuracy"

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits = [0.0 if g.corrupt else textvqa_row(g.sample.answer, str(g.prediction)) for g in rows]
        return ScoreReport(vlmevalkit_vqa_breakdown(rows, hits), "Overall", hits)


def answer_dicts(sample_fields: dict) -> list[dict]:
    raw = sample_fields.get("answers")
    if raw is None:
        raw = parse_literal_list(sample_fields.get("answer")) or [sample_fields.get("answer")]
    if isinstance(raw, str):
        raw = parse_literal_list(raw) or [raw]
    out = []
    for pos, item in enumerate(raw, start=1):
        out.append(dict(item) if isinstance(item, dict) else {"answer": str(item), "answer_id": pos})
    return out


def vqav2_row(answers: list[dict], prediction: str) -> float:
    refs = []
    for a in answers:
        a = dict(a)
        a["answer"] = normalize_answer(a["answer"], "lmms")
        refs.append(a)
    pred = normalize_answer(prediction, "lmms")
    per_ref = []
    for held_out in refs:
        others = [a for a in refs if a != held_out]
        per_ref.append(min(1, float(sum(1 for a in others if a["answer"] == pred)) / 3))
    return statistics.mean(per_ref)


class VQAv2Accuracy:
    name = "VQA accuracy"

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits = [0.0 if g.corrupt else vqav2_row(answer_dicts(g.sample.fields), str(g.prediction)) for g in rows]
        return ScoreReport({"Overall": plain_mean_percent(hits)}, "Overall", [float(h) for h in hits])
