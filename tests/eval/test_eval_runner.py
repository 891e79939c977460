"""The runner end to end on the tiny fixture of every benchmark, with a stand-in predictor."""

import json
from pathlib import Path

import pytest

from zamba2vl.eval.benchmarks import EvalConfig, get_benchmark
from zamba2vl.eval.fixtures import FIXTURES
from zamba2vl.eval.predictors import AnswerPredictor
from zamba2vl.eval.runner import RunSettings, load_samples, run_benchmark

BENCH = Path(__file__).parent / "data" / "bench"


def run(name, out, config=None, **settings):
    file_name, _, _, _ = FIXTURES[name]
    bench = get_benchmark(name)
    samples = load_samples(bench, BENCH / name / file_name, config or EvalConfig())
    answers = AnswerPredictor.from_file(BENCH / name / "answers.json")
    settings = RunSettings(model="stand-in", model_size="1.2B", progress=False, **settings)
    return run_benchmark(bench, samples, answers, out, config, settings), answers


def test_every_report_benchmark_has_a_fixture():
    assert len(FIXTURES) == 15  # the 14 of the report plus DocVQA's hidden-answer test split


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_scores(name, tmp_path):
    expected = json.loads((BENCH / name / "expected.json").read_text())
    results, answers = run(name, tmp_path, batch_size=2)
    assert results["corrupt"]["count"] == len(expected["corrupt"])
    assert [c["index"] for c in results["corrupt"]["rows"]] == expected["corrupt"]
    assert answers.calls == results["rows"] - len(expected["corrupt"])  # corrupt rows are not generated
    if expected["score"] is None:
        assert results["score"] is None
        assert json.loads((tmp_path / "submission.json").read_text()) == expected["submission"]
        return
    assert results["score"] == pytest.approx(expected["score"], rel=1e-12)
    for key, value in expected.get("metrics", {}).items():
        assert results["metrics"][key] == pytest.approx(value, rel=1e-12), key
    for key, value in expected.get("details", {}).items():
        assert results["details"][key] == value
    merged = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert len(merged) == results["rows"]


def test_countbench_substring_rule_gives_the_documented_number(tmp_path):
    results, _ = run("countbenchqa", tmp_path, EvalConfig(countbench_rule="substring"))
    assert results["score"] == 75.0 and results["settings"]["countbench_rule"] == "substring"


def test_corrupt_rows_are_reported_with_index_and_reason(tmp_path):
    results, _ = run("docvqa_val", tmp_path / "d")
    assert results["corrupt"]["rows"] == [{"index": 23, "reason": results["corrupt"]["rows"][0]["reason"]}]
    assert results["corrupt"]["rows"][0]["reason"].startswith("cannot decode image")
    results, _ = run("ai2d_test", tmp_path / "a")
    assert results["corrupt"]["rows"] == [{"index": 3, "reason": "answer 'E' is not one of the options ABCD"}]
    results, _ = run("infovqa_val", tmp_path / "i")
    assert results["corrupt"]["rows"] == [{"index": 42, "reason": "missing answer"}]
    assert "| DocVQA (val) | ANLS | 45.83 |" in (tmp_path / "d" / "results.md").read_text()


def test_published_number_sits_beside_the_score(tmp_path):
    results, _ = run("ai2d_test", tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert results["published"] == {"score": 81.5, "source": "card", "benchmark": "AI2D (test)"}
    assert "| AI2D (test) | accuracy | 50.00 | 81.5 | -31.50 | 4 | 1 |" in table


def test_prompts_and_image_budget_reach_the_predictor(tmp_path):
    seen = []
    bench = get_benchmark("realworldqa")
    samples = load_samples(bench, BENCH / "realworldqa" / "RealWorldQA.tsv", EvalConfig())
    config = EvalConfig(min_pixels=100, max_pixels=5000, max_new_tokens=3)
    predictor = AnswerPredictor(lambda r: seen.append(r) or "A")
    run_benchmark(bench, samples, predictor, tmp_path, config, RunSettings(model="m", progress=False))
    first = seen[0]
    assert first.prompt == ("Look at the road.\nWhich lane is the car in?\nA. left\nB. middle\nC. right\n"
                            "Answer with the option's letter from the given choices directly.")
    assert (first.min_pixels, first.max_pixels, first.max_new_tokens) == (100, 5000, 3)
    assert first.images[0].size == (8, 8) and first.images[0].mode == "RGB"
