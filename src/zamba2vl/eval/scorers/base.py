"""What every scorer takes and returns, and the breakdowns the reference harnesses print.

A scorer sees every row of the benchmark, including corrupt ones (`Graded.corrupt`), which it scores as
wrong so that the denominator stays the size of the benchmark. Metrics are percentages. The arithmetic
of each breakdown (numpy mean, plain sum / len, hit / total * 100) follows the harness it reproduces, so
the numbers agree to the last bit rather than to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from zamba2vl.eval.data import EvalSample


@dataclass(frozen=True)
class Graded:
    sample: EvalSample
    prediction: str | None  # None when nothing was generated (a corrupt row)
    corrupt: bool = False


@dataclass
class ScoreReport:
    metrics: dict[str, float]  # percentages; "Overall", a category name, or "<split>/<name>"
    primary: str  # the key of `metrics` that is the benchmark's headline number
    row_scores: list[float]  # one value in [0, 1] per row, in row order
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.metrics[self.primary]


class Scorer(Protocol):
    name: str  # what the number is called ("ANLS", "VQA accuracy", ...)

    def score(self, rows: list[Graded]) -> ScoreReport: ...


def has_column(rows: list[Graded], name: str) -> bool:
    return any(name in g.sample.fields for g in rows)


def vlmevalkit_vqa_breakdown(rows: list[Graded], hits: list[float]) -> dict[str, float]:
    """ImageVQADataset's table: per split plus Overall when there is a split column, else Overall plus
    one entry per category (sorted). Each value is numpy's mean of the row hits, times 100."""
    def mean_where(column: str, value: str) -> float:
        return float(np.mean([h for g, h in zip(rows, hits) if str(g.sample.fields.get(column)) == value]) * 100)

    out: dict[str, float] = {}
    if has_column(rows, "split"):
        for sp in sorted({str(g.sample.fields.get("split")) for g in rows}):
            out[sp] = mean_where("split", sp)
        out["Overall"] = float(np.mean(hits) * 100)
    else:
        out["Overall"] = float(np.mean(hits) * 100)
        if has_column(rows, "category"):
            for c in sorted({str(g.sample.fields.get("category")) for g in rows}):
                out[c] = mean_where("category", c)
    return out


def vlmevalkit_mcq_breakdown(rows: list[Graded], hits: list[int]) -> dict[str, float]:
    """multiple_choice.report_acc: for each split (or one unnamed split) Overall, then each l2-category and
    category, each numpy's mean of 0/1 hits; reported here times 100. With a split column keys are
    "<split>/<name>"."""
    with_split = has_column(rows, "split")
    splits = sorted({str(g.sample.fields.get("split")) for g in rows}) if with_split else [None]
    out: dict[str, float] = {}
    for sp in splits:
        in_split = [(g, h) for g, h in zip(rows, hits) if sp is None or str(g.sample.fields.get("split")) == sp]
        prefix = "" if sp is None else f"{sp}/"
        out[prefix + "Overall"] = float(np.mean([h for _, h in in_split]) * 100)
        for group in ("l2-category", "category"):
            if not has_column(rows, group):
                continue
            for ab in sorted({str(g.sample.fields.get(group)) for g in rows}):
                sub = [h for g, h in in_split if str(g.sample.fields.get(group)) == ab]
                if sub:  # the reference prints nan (numpy's mean of nothing) for an empty cell
                    out[prefix + ab] = float(np.mean(sub) * 100)
    return out


def plain_mean_percent(values: list[float]) -> float:
    """lmms-eval's `mean` aggregation (sum / len), as a percentage."""
    return sum(values) / len(values) * 100 if values else 0.0
