import argparse
import json

import pytest

from zamba2vl.eval.cli import add_eval_arguments, main, run_eval_from_args
from zamba2vl.eval.published import published_score, size_from_name


def test_synthetic_benchmark_offline_with_a_stand_in(tmp_path, capsys):
    assert main(["--model", "oracle", "--bench", "synthetic", "--synthetic-rows", "8", "--synthetic-image-size",
                 "112", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| Synthetic tasks | accuracy | 100.00 | - | - | 8 | 0 |" in out
    results = json.loads((tmp_path / "synthetic" / "results.json").read_text())
    assert results["rows"] == 8 and set(results["metrics"]) - {"Overall"} <= {"counting", "reading", "bar_chart",
                                                                               "grounding"}


def test_synthetic_scores_wrong_answers_as_wrong(tmp_path):
    answers = tmp_path / "a.json"
    answers.write_text("{}")  # every answer is "" -> nothing right
    assert main(["--model", f"answers:{answers}", "--bench", "synthetic", "--synthetic-rows", "4",
                 "--synthetic-image-size", "112", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "synthetic" / "results.json").read_text())["score"] == 0.0


def test_missing_data_says_where_to_get_it(tmp_path, capsys):
    assert main(["--model", "oracle", "--bench", "docvqa_val", "--data", str(tmp_path / "nope.tsv")]) == 2
    err = capsys.readouterr().err
    assert "nope.tsv not found" in err and "build_dataset('DocVQA_VAL')" in err


def test_unknown_benchmark_lists_the_known_ones(capsys):
    assert main(["--model", "oracle", "--bench", "docvqa"]) == 2
    assert "docvqa_val" in capsys.readouterr().err


def test_mountable_on_another_parser(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    add_eval_arguments(sub.add_parser("eval"))
    args = parser.parse_args(["eval", "--model", "oracle", "--bench", "synthetic", "--synthetic-rows", "2",
                              "--synthetic-image-size", "112", "--out", str(tmp_path), "--no-progress"])
    assert run_eval_from_args(args) == 0 and (tmp_path / "summary.md").exists()


@pytest.mark.parametrize("name,size", [("Zyphra/Zamba2-VL-1.2B", "1.2B"), ("/m/zamba2-vl-2.7b", "2.7B"),
                                       ("Zamba2-VL-7B-instruct", "7B"), ("tiny-demo", None)])
def test_size_from_name(name, size):
    assert size_from_name(name) == size


def test_published_numbers():
    assert published_score("1.2B", "PixMoCount (test)") == (62.5, "card")
    assert published_score("2.7B", "MMMU (val)") == (37.7, "3p")
    assert published_score("7B", "InfoVQA (test)") is None
    assert published_score(None, "OCRBench") is None
