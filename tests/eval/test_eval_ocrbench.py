from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import Graded, OCRBenchScore
from zamba2vl.eval.scorers.ocrbench import HME, ocrbench_row


def test_substring_rules():
    assert ocrbench_row("Regular Text Recognition", ["STOP"], "the sign says stop")
    assert ocrbench_row("Doc-oriented VQA", ["line1\nline2"], "LINE1 LINE2")  # newline matches a space
    assert not ocrbench_row("Doc-oriented VQA", ["line1 line2"], "line1\n\nline2")
    assert ocrbench_row("Doc-oriented VQA", [""], "anything")  # an empty answer is in every string
    assert ocrbench_row(HME, ["x ^ { 2 }"], "x^{2}")  # spaces removed on both sides
    assert not ocrbench_row(HME, ["X^2"], "x^2")  # case kept for formulas
    assert ocrbench_row("Key Information Extraction", ["  acme "], "ACME inc")


def test_groups_and_final_score():
    cats = ["Regular Text Recognition", "Digit String Recognition", "Scene Text-centric VQA", HME, "Bogus"]
    rows = [Graded(EvalSample(i, {"answer": "['1']", "category": c}), "1") for i, c in enumerate(cats)]
    rows.append(Graded(EvalSample(9, {"answer": "['1']", "category": HME}), None, corrupt=True))
    report = OCRBenchScore().score(rows)
    assert report.metrics["Text Recognition"] == 2.0 and report.metrics[HME] == 1.0
    assert report.metrics["Final Score"] == 4.0 and report.metrics["Final Score Norm"] == 0.4
    assert report.score == 4 * 100 / 6  # unknown category and corrupt row count as wrong
