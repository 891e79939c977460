"""MathVista (testmini): rule-based answer extraction, an optional LLM judge for what the rules miss,
then a type-aware comparison; accuracy overall, per task and per skill.

Rules (VLMEvalKit's `post_check(prefetch=True)`): a multiple-choice response is resolved when the
multiple-choice matcher finds an option letter in it (right or wrong); a free-form response is resolved
when the *whole* response parses with `int` / `float` (by `answer_type`) and equals the reference. A
resolved value that is falsy (an integer answer of 0) counts as unresolved, and "text" / "list" answers
are never resolved by rules; these quirks are kept so that scores match the reference.

Everything unresolved goes to the judge when one is configured (off by default); without a judge it
scores as wrong, which is what VLMEvalKit computes when its judge fails every retry.

The final check (`post_check(prefetch=False)`) runs in the reference on values read back from the
spreadsheet it stores them in, where "", "None", "NA", "null", ... become NaN: an extracted value spelled
like that is therefore compared as the string "nan" (which the option matcher can still map to an option
whose text occurs in "nan", such as "A"). For "text" and "list" answers the check compares the string
"None" with the stored answer, and a stored "None" reads back as NaN, so those answers are never scored
right by the reference; kept, so that scores match.
"""

from __future__ import annotations

from typing import Any, Callable

from zamba2vl.eval.data import PANDAS_NA, EvalSample, parse_literal_list
from zamba2vl.eval.scorers.base import Graded, ScoreReport
from zamba2vl.eval.scorers.choice import extract_choice


def mc_choices(sample: EvalSample) -> dict[str, str]:
    items = parse_literal_list(sample.fields.get("choices")) or []
    return {chr(65 + i): v for i, v in enumerate(items)}


def _read_back(value: Any) -> Any:
    """A value after the reference's spreadsheet round trip: missing-value spellings become NaN."""
    return "nan" if isinstance(value, str) and value in PANDAS_NA else value


def check(sample: EvalSample, response: Any, prefetch: bool) -> Any:
    """VLMEvalKit's post_check: with prefetch, the extracted value (or False); else whether it is right."""
    f = sample.fields
    res: Any = None
    ans: Any = f.get("answer") if prefetch else _read_back(f.get("answer"))
    if not prefetch:
        response = _read_back(response)
    try:
        if f.get("question_type") == "multi_choice":
            ans = f.get("answer_option")
            res = extract_choice(response, mc_choices(sample)) or False
            if prefetch:
                return res
        elif f.get("answer_type") == "integer":
            res = int(response)
            ans = int(f.get("answer"))
        elif f.get("answer_type") == "float":
            res = float(response)
            ans = float(f.get("answer"))
        else:
            res, ans = str(res), str(ans)
    except ValueError:
        pass
    if res == ans:
        return res if prefetch else True
    return False


def skills_of(sample: EvalSample) -> list[str]:
    raw = sample.fields.get("skills")
    items = parse_literal_list(raw)
    return [str(s) for s in items] if items is not None else ([] if raw is None else [str(raw)])


Judge = Callable[[EvalSample, str], "str | None"]  # (row, response) -> extracted answer, None on failure


class MathVistaAccuracy:
    name = "accuracy"

    def __init__(self, judge: Judge | None = None):
        self.judge = judge

    def score(self, rows: list[Graded]) -> ScoreReport:
        tot: dict[str, int] = {"Overall": 0}
        hit: dict[str, int] = {"Overall": 0}
        by_rules = by_judge = 0
        row_scores = []
        for g in rows:
            s = g.sample
            keys = ["Overall"] + skills_of(s) + [str(s.fields.get("task"))]  # counted independently, as there
            for k in keys:
                tot[k] = tot.get(k, 0) + 1
            ok = False
            if not g.corrupt:
                res = check(s, str(g.prediction), prefetch=True)
                if res:
                    by_rules += 1
                elif self.judge is not None:
                    res = self.judge(s, str(g.prediction))
                    by_judge += res is not None
                    res = "" if res is None else res
                else:
                    res = ""
                ok = bool(check(s, res, prefetch=False))
            row_scores.append(float(ok))
            if ok:
                for k in keys:
                    hit[k] = hit.get(k, 0) + 1
        metrics = {k: hit.get(k, 0) / n * 100 for k, n in tot.items()}
        extras = {"resolved_by_rules": by_rules, "resolved_by_judge": by_judge, "rows": len(rows),
                  "totals": tot}
        return ScoreReport(metrics, "Overall", row_scores, extras)
