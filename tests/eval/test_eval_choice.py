import pytest

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import ChoiceAccuracy, Graded, extract_choice

ABCD = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("response,letter", [
    ("B", "B"), ("(C)", "C"), ("D.", "D"), ("The answer is (B).", "B"), ("answer is **c**", "C"),
    ("**A**", "A"), ("Answer: D", "D"), ("dog", "B"), ("A dog.", "A"),  # the article "A" is read as option A
    ("a bird", "C"), ("B and C", None), ("cat or dog", None), ("Z", "Z"), ("Cannot determine the answer", "Z"),
    ("", None), ("b", None), ("E", None), ("I think A. No wait, it is clearly a fish in this image, D", None),
    ("A is right because the picture shows a fish on the table near a window", None),
    ("Failed to obtain answer via API", None),
])
def test_extraction(response, letter):
    assert extract_choice(response, dict(ABCD)) == letter


def test_a_letter_far_from_the_end_is_not_taken():
    # one option letter, but 5+ tokens after it: falls through to text matching, which finds "fish"
    assert extract_choice("B, no, it is a fish", dict(ABCD)) == "D"
    assert extract_choice("no, it is B", dict(ABCD)) == "B"


def test_long_responses_skip_text_matching():
    assert extract_choice("dog " * 30, dict(ABCD)) is None


def test_mmmu_open_questions_and_non_letter_answers():
    open_q = Graded(EvalSample(0, {"answer": "42", "split": "validation"}), "It is 42")
    mc = Graded(EvalSample(1, {"answer": "C", "A": "x", "B": "y", "C": "z", "split": "validation"}), "C")
    dev = Graded(EvalSample(2, {"answer": "A", "A": "x", "B": "y", "split": "dev"}), "B")
    report = ChoiceAccuracy(mmmu=True).score([open_q, mc, dev])
    assert report.metrics == {"dev/Overall": 0.0, "validation/Overall": 100.0}
    assert report.primary == "validation/Overall"


def test_breakdown_by_l2_category_then_category_and_unresolved_count():
    rows = [Graded(EvalSample(i, {"answer": "A", "A": "x", "B": "y", "category": c, "l2-category": "p"}), p)
            for i, (c, p) in enumerate([("k", "A"), ("k", "?"), ("m", "A"), ("m", "A")])]
    report = ChoiceAccuracy().score(rows)
    assert report.metrics == {"Overall": 75.0, "p": 75.0, "k": 50.0, "m": 100.0}
    assert report.extras["unresolved"] == 1
