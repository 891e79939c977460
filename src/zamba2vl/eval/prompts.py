"""Prompts, built the way the reference harness builds them for each benchmark.

Images are passed separately (the chat template puts them in front of the user turn), so these are the
text parts only. Instruction strings are the benchmarks' conventional ones:

* short-answer VQA (DocVQA, InfoVQA, ChartQA, TextVQA in VLMEvalKit; VQAv2 in lmms-eval): the question,
  a newline, "Answer the question using a single word or phrase."
* multiple choice, style "letter" (VLMEvalKit's prompt for InternVL/LLaVA-family models): hint, question,
  one "X. option" line per option, "Answer with the option's letter from the given choices directly.";
  style "vlmevalkit" (the data set's own default): "Hint: ...", "Question: ...", "Options:" and the
  lines, "Please select the correct answer from the options above." (with its trailing " \\n").
* counting: CountBenchQA as VLMEvalKit asks ("... answer with a number directly e.g. 3 ..."),
  PixMoCount as lmms-eval asks ("<image>" removed, then "Answer with a single number.").
* OCRBench and MathVista: the question as stored (MathVista's already carries its own instruction).
"""

from __future__ import annotations

import re

from zamba2vl.eval.data import EvalSample

SHORT_ANSWER = "Answer the question using a single word or phrase."
MCQ_LETTER = "Answer with the option's letter from the given choices directly."
MCQ_DATASET_DEFAULT = "Please select the correct answer from the options above. \n"
OPEN_DIRECT = "Answer the question directly."
COUNT_VLMEVALKIT = " Note that: answer with a number directly e.g. 3. Do not include any additional text."
COUNT_LMMS = "\nAnswer with a single number."
PROMPT_STYLES = ("letter", "vlmevalkit")

_CJK = re.compile("[\u4e00-\u9fff]")


def short_answer(sample: EvalSample, suffix: str | None = None) -> str:
    return f"{sample.question}\n{SHORT_ANSWER if suffix is None else suffix}"


def as_stored(sample: EvalSample, suffix: str | None = None) -> str:
    return sample.question + (suffix or "")


def multiple_choice(sample: EvalSample, style: str = "letter", suffix: str | None = None) -> str:
    options = sample.options
    hint = sample.hint
    if style == "vlmevalkit":
        text = (f"Hint: {hint}\n" if hint is not None else "") + f"Question: {sample.question}\n"
        if options:
            text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
            text += MCQ_DATASET_DEFAULT if suffix is None else suffix
        return text
    if style != "letter":
        raise ValueError(f"unknown prompt style {style!r}; choose one of {PROMPT_STYLES}")
    text = (f"{hint}\n" if hint is not None else "") + sample.question
    text += "".join(f"\n{k}. {v}" for k, v in options.items())
    if suffix is not None:
        return text + "\n" + suffix
    if _CJK.search(text):  # the reference switches to a Chinese instruction for Chinese questions
        return text + ("\n请直接回答选项字母。" if options else "\n请直接回答问题。")
    return text + "\n" + (MCQ_LETTER if options else OPEN_DIRECT)


def countbench(sample: EvalSample, suffix: str | None = None) -> str:
    return sample.question + (COUNT_VLMEVALKIT if suffix is None else suffix)


def pixmo_count(sample: EvalSample, suffix: str | None = None) -> str:
    return sample.question.replace("<image>", "").strip() + (COUNT_LMMS if suffix is None else suffix)
