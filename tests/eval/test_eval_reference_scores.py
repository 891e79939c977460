"""Our scorers against the numbers the reference harnesses' own scoring code produced on the same
edge-case predictions files (frozen by scripts/compare_eval_scorers.py into reference_scores.json)."""

import json
from pathlib import Path

import pytest

from zamba2vl.eval.rescore import read_table, rescore

DATA = Path(__file__).parent / "data"
FROZEN = json.loads((DATA / "reference_scores.json").read_text())
OURS_ONLY = {"Accuracy"}  # OCRBench right/rows, which the reference does not print


@pytest.mark.parametrize("case", FROZEN["cases"], ids=lambda c: c["name"])
def test_scores_equal_reference_to_the_last_bit(case):
    rows = read_table(DATA / "edge" / f"{case['edge']}.jsonl")
    assert len(rows) >= 200
    ours = rescore(case["ours"], rows)
    ref = FROZEN["reference_scores"][case["reference"]]
    assert set(ours) - OURS_ONLY == set(ref)
    for key, value in ref.items():
        assert ours[key] == value, key  # exact float equality, not approx


def test_deliberate_countbench_difference_is_what_the_docs_say():
    rows = read_table(DATA / "edge" / "count.jsonl")
    ours = rescore("count:integer", rows)["Overall"]
    vlmevalkit = FROZEN["reference_scores"]["vlm_countbench"]["Overall"]
    assert (ours, vlmevalkit) == (52.083333333333336, 71.66666666666667)
    assert ours == FROZEN["reference_scores"]["lmms_pixmo"]["Overall"]  # same rule as lmms-eval's PixMoCount


def test_frozen_file_says_how_it_was_made():
    assert "compare_eval_scorers.py" in FROZEN["how"]
    assert len(FROZEN["vlmevalkit_commit"].split()[0]) == 40 and len(FROZEN["lmms_eval_commit"].split()[0]) == 40
