import pytest

from zamba2vl.eval.data import EvalSample
from zamba2vl.eval.scorers import Graded, VQAv2Accuracy
from zamba2vl.eval.scorers.normalize import CONTRACTIONS, normalize_answer, process_punctuation
from zamba2vl.eval.scorers.vqa_accuracy import textvqa_row, vqav2_row


@pytest.mark.parametrize("text,vlm,lmms", [
    ("The Cat.", "cat", "cat"), ("3.", "3.", "3"), ("3.5", "3.5", "3.5"), ("two dogs", "2 dogs", "2 dogs"),
    ("dont", "don't", "don't"), ("1,000", "1000", "1000"), ("1,,000", "1  000", "1000"),
    ("coca-cola", "coca cola", "coca cola"), ("yes!", "yes", "yes"), ("u.s.a.", "usa", "usa"),
    ("somebody'd", "somebodyd", "somebodyd"), ("an apple\n", "apple", "apple"),
])
def test_normalisation_in_both_flavours(text, vlm, lmms):
    assert normalize_answer(text, "vlmevalkit") == " ".join(vlm.split())
    assert normalize_answer(text, "lmms") == " ".join(lmms.split())


def test_at_most_32_periods_are_removed():
    assert process_punctuation("a." * 40).count(".") == 8


def test_contraction_table_has_the_official_size():
    assert len(CONTRACTIONS) == 114 and CONTRACTIONS["yall'd've"] == "y'all'd've"


def test_textvqa_leave_one_out():
    assert textvqa_row(repr(["stop"] * 10), "STOP") == 1.0
    assert textvqa_row(repr(["a b"] * 2 + ["c"] * 8), "a b") == pytest.approx(0.6)
    assert textvqa_row(repr(["x"] * 3 + ["y"] * 7), "x") == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert textvqa_row("stop", "stop") == 0.0  # a single plain answer never scores (as in VLMEvalKit)


def test_vqav2_identical_answer_dicts_leave_together():
    with_ids = [{"answer": "red", "answer_id": i} for i in range(4)] + [{"answer": "blue", "answer_id": 9}]
    without = [{"answer": "red"}] * 4 + [{"answer": "blue"}]
    assert vqav2_row(with_ids, "red") == pytest.approx((4 * 1 + 1 * 1) / 5)
    # without ids, holding out one "red" removes all four: 4 * 0 + 1 * min(1, 4/3)
    assert vqav2_row(without, "red") == pytest.approx(1 / 5)


def test_vqav2_plain_string_answers_get_distinct_ids():
    rows = [Graded(EvalSample(1, {"answers": ["red"] * 3 + ["blue"]}), "red"),
            Graded(EvalSample(2, {"answers": ["red"]}), None, corrupt=True)]
    report = VQAv2Accuracy().score(rows)
    assert report.row_scores == [pytest.approx(0.75 * 2 / 3 + 0.25), 0.0]
    assert report.score == pytest.approx((0.5 + 0.25) / 2 * 100)
