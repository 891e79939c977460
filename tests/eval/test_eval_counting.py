import pytest

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import CountingAccuracy, Graded
from zamba2vl.eval.scorers.counting import count_correct


@pytest.mark.parametrize("answer,pred,integer,substring,exact", [
    ("3", "3", True, True, True), ("3", " 3\n", True, True, True), ("3", "There are 3.", True, True, False),
    ("2", "12", False, True, False), ("7", "07", False, True, False), ("3", "three", False, False, False),
    ("4", "-4", True, True, False), ("3", "٣", False, False, False), ("5", "5 or 6", True, True, False),
    ("6", "5 or 6", False, True, False), ("10 cars", "10", True, False, False), (" 4", "4", True, False, False),
])
def test_rules(answer, pred, integer, substring, exact):
    assert count_correct("integer", answer, pred) is integer
    assert count_correct("substring", answer, pred) is substring
    assert count_correct("exact", answer, pred) is exact


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown counting rule"):
        CountingAccuracy("fuzzy")


def test_mean_and_corrupt_rows():
    rows = [Graded(EvalSample(0, {"answer": "2"}), "2"), Graded(EvalSample(1, {"answer": "2"}), None, corrupt=True),
            Graded(EvalSample(2, {"answer": "5"}), "15")]
    assert CountingAccuracy("integer").score(rows).score == pytest.approx(100 / 3)
    assert CountingAccuracy("substring").score(rows).score == pytest.approx(200 / 3)
