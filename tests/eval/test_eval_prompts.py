import pytest

from zamba2vl.eval import prompts
from zamba2vl.eval.data import EvalSample

MC = EvalSample(1, {"question": "Which?", "hint": "Look.", "A": "x", "B": "y", "C": None})


def test_letter_style():
    assert prompts.multiple_choice(MC) == ("Look.\nWhich?\nA. x\nB. y\n"
                                           "Answer with the option's letter from the given choices directly.")


def test_dataset_default_style_keeps_its_trailing_space_and_newline():
    assert prompts.multiple_choice(MC, "vlmevalkit") == (
        "Hint: Look.\nQuestion: Which?\nOptions:\nA. x\nB. y\n"
        "Please select the correct answer from the options above. \n")


def test_open_and_chinese_questions():
    assert prompts.multiple_choice(EvalSample(2, {"question": "6x7?"})) == "6x7?\nAnswer the question directly."
    chinese = EvalSample(3, {"question": "哪个?", "A": "甲"})
    assert prompts.multiple_choice(chinese).endswith("\n请直接回答选项字母。")


def test_short_answer_counting_and_suffix_override():
    s = EvalSample(4, {"question": "<image>How many cats?"})
    assert prompts.short_answer(s) == "<image>How many cats?\nAnswer the question using a single word or phrase."
    assert prompts.pixmo_count(s) == "How many cats?\nAnswer with a single number."
    assert prompts.countbench(s).endswith("cats? Note that: answer with a number directly e.g. 3. "
                                          "Do not include any additional text.")
    assert prompts.short_answer(s, "Be brief.") == "<image>How many cats?\nBe brief."


def test_unknown_style():
    with pytest.raises(ValueError, match="unknown prompt style"):
        prompts.multiple_choice(MC, "fancy")
