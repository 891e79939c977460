import pytest

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import Graded, RelaxedAccuracy
from zamba2vl.eval.scorers.relaxed import relaxed_correct


@pytest.mark.parametrize("target,pred,ok", [
    ("100", "105", True), ("100", "95", True), ("100", "105.01", False), ("100", "94.9", False),
    ("12%", "0.12", True), ("0.12", "12%", True), ("50%%", "0.5", True),  # every trailing % goes
    ("0", "0.0", False), ("0", "0", True),  # a zero target needs an exact string match
    ("1,000", "1000", False), ("1_000", "1000", True), ("1e3", "1000", True),  # Python float() rules
    ("Yes", "yes", True), ("Blue", "blue ", False),  # the caller strips predictions, not targets
    ("nan", "nan", False), ("inf", "inf", False), ("-40", "-41", True),
])
def test_relaxed_correct(target, pred, ok):
    assert relaxed_correct(target, pred) is ok


def test_any_answer_counts_and_prediction_is_stripped():
    rows = [Graded(EvalSample(0, {"answer": "['7', 'seven']", "split": "human"}), " seven "),
            Graded(EvalSample(1, {"answer": "3", "split": "augmented"}), "4")]
    assert RelaxedAccuracy().score(rows).metrics == {"augmented": 0.0, "human": 100.0, "Overall": 50.0}
