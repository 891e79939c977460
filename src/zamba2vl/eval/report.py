"""Results JSON, the markdown table that sets each score beside Zyphra's published one, and submission
files for test splits whose answers are private."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zamba2vl.eval.published import published_score
from zamba2vl.eval.scorers import Graded, ScoreReport

if TYPE_CHECKING:
    from zamba2vl.eval.benchmarks import Benchmark, EvalConfig
    from zamba2vl.eval.runner import RunSettings


def build_results(bench: "Benchmark", settings: "RunSettings", config: "EvalConfig", graded: list[Graded],
                  report: ScoreReport | None, corrupt: list[dict], metric: str | None = None) -> dict[str, Any]:
    published = published_score(settings.model_size, bench.published_key)
    results: dict[str, Any] = {
        "benchmark": bench.name,
        "title": bench.title,
        "model": settings.model,
        "model_size": settings.model_size,
        "data": settings.data_label,
        "rows": len(graded),
        "corrupt": {"count": len(corrupt), "rows": corrupt},
        "settings": {
            "prompt_style": config.prompt_style, "prompt_suffix": config.prompt_suffix,
            "min_pixels": config.min_pixels or bench.min_pixels, "max_pixels": config.max_pixels or bench.max_pixels,
            "max_new_tokens": config.max_new_tokens or bench.max_new_tokens,
            "countbench_rule": config.countbench_rule if bench.name == "countbenchqa" else None,
            "judge": config.judge is not None if bench.kind == "mathvista" else None,
        },
        "published": None if published is None else {
            "score": published[0], "source": published[1], "benchmark": bench.published_key},
    }
    if report is None:
        results.update(metric=None, score=None, metrics={}, submission="submission.json")
        return results
    extras = {k: v for k, v in report.extras.items() if k != "choices"}
    results.update(metric=metric, primary=report.primary, score=report.score,
                   metrics=dict(report.metrics), details=extras)
    return results


MAX_CATEGORIES_SHOWN = 12


def markdown_table(all_results: list[dict[str, Any]]) -> str:
    size = next((r["model_size"] for r in all_results if r.get("model_size")), None)
    head = f"Zyphra {size}" if size else "Zyphra (size unknown)"
    lines = [f"| Benchmark | Metric | Score | {head} | Delta | Rows | Not scored |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in all_results:
        pub = r.get("published")
        score = r.get("score")
        score_txt = "submission" if score is None else f"{score:.2f}"
        pub_txt = "-" if pub is None else f"{pub['score']:.1f}" + (" (3p)" if pub["source"] == "3p" else "")
        if pub is not None and pub["benchmark"] != r["title"]:
            pub_txt += f" [{pub['benchmark']}]"
        delta = "-" if (pub is None or score is None) else f"{score - pub['score']:+.2f}"
        lines.append(f"| {r['title']} | {r.get('metric') or '-'} | {score_txt} | {pub_txt} | {delta} | "
                     f"{r['rows']} | {r['corrupt']['count']} |")
    # Per-category scores under the table, where a benchmark has a few (all of them are in the results JSON).
    for r in all_results:
        cats = {k: v for k, v in (r.get("metrics") or {}).items()
                if k != r.get("primary") and isinstance(v, (int, float))}
        if 0 < len(cats) <= MAX_CATEGORIES_SHOWN:
            lines.append("")
            lines.append(f"{r['title']} by category: " + ", ".join(f"{k} {v:.2f}" for k, v in cats.items()))
    return "\n".join(lines)


def write_submission(path: Path, graded: list[Graded]) -> None:
    """DocVQA / InfoVQA test server format: a JSON list of {"questionId", "answer"}."""
    out = []
    for g in graded:
        qid = g.sample.fields.get("questionId", g.sample.fields.get("question_id", g.sample.index))
        out.append({"questionId": int(qid) if str(qid).isdigit() else qid, "answer": g.prediction or ""})
    path.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
