import pytest

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import ANLS, Graded
from zamba2vl.eval.scorers.anls import anls_row, levenshtein, normalized_distance, reference_answers


@pytest.mark.parametrize("a,b,d", [("", "", 0), ("kitten", "sitting", 3), ("abc", "", 3), ("flaw", "lawn", 2),
                                   ("ß", "ss", 2)])
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_case_and_inner_whitespace_are_ignored_but_length_uses_the_raw_strings():
    assert normalized_distance("Acme  Corp", "acme corp") == 0.0
    # distance 1 ("ab" vs "abc") over the longer *raw* length 5 ("  abc"), not 3
    assert normalized_distance("ab", "  abc") == pytest.approx(1 / 5)
    # "ß".upper() is "SS": the length counts 2 for it
    assert normalized_distance("ß", "s") == pytest.approx(1 / 2)


def test_threshold_zeroes_low_similarity_and_keeps_exactly_half():
    assert anls_row(["abcd"], "abxy") == 0.5  # distance 2 of 4: similarity 0.5 is kept
    assert anls_row(["abcde"], "axyze") == 0.0  # distance 3 of 5: 0.4 < 0.5
    assert anls_row(["no", "twelve"], "twelve!") == pytest.approx(1 - 1 / 7)  # best of several answers


def test_answers_cell_forms():
    assert reference_answers("['a', 'b']") == ["a", "b"]
    assert reference_answers("[unbalanced") == ["[unbalanced"]
    assert reference_answers("plain") == ["plain"]


def test_corrupt_rows_count_as_zero_and_categories_are_sorted():
    rows = [Graded(EvalSample(0, {"answer": "['x']", "category": "b"}), "x"),
            Graded(EvalSample(1, {"answer": "['y']", "category": "a"}), None, corrupt=True)]
    report = ANLS().score(rows)
    assert report.metrics == {"Overall": 50.0, "a": 0.0, "b": 100.0}
    assert list(report.metrics) == ["Overall", "a", "b"]
