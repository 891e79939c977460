"""The benchmarks of the Zamba2-VL report: how each is read, prompted, checked and scored.

A `Benchmark` ties together a data layout, a prompt builder, a scorer and the published number it is
compared with. `BENCHMARKS` maps CLI names (`docvqa_val`, `mmmu_val`, ...) to them; `synthetic` is
added by `zamba2vl.eval.synthetic`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable

from zamba2vl.errors import InputError
from zamba2vl.eval import prompts
from zamba2vl.eval.data import OPTION_LETTERS, EvalSample, parse_literal_list
from zamba2vl.eval.scorers import (ANLS, ChoiceAccuracy, CountingAccuracy, MathVistaAccuracy, OCRBenchScore,
                                   RelaxedAccuracy, Scorer, TextVQAAccuracy, VQAv2Accuracy)
from zamba2vl.eval.scorers.ocrbench import CATEGORIES as OCRBENCH_CATEGORIES
from zamba2vl.eval.scorers.vqa_accuracy import answer_dicts

# The model card's image budget: at least 10 and at most 3400 merged 28x28 tokens per image.
DEFAULT_MIN_PIXELS = 10 * 28 * 28
DEFAULT_MAX_PIXELS = 3400 * 28 * 28


@dataclass
class EvalConfig:
    """Run-time choices that change prompts or scores; the defaults reproduce the reference harnesses."""

    prompt_style: str = "letter"
    prompt_suffix: str | None = None  # replaces the benchmark's instruction when set
    min_pixels: int | None = None  # None: the benchmark's default
    max_pixels: int | None = None
    max_new_tokens: int | None = None
    countbench_rule: str = "integer"  # "integer" | "substring" (VLMEvalKit) | "exact" (lmms-eval)
    judge: Callable | None = None  # MathVista's LLM judge, off by default
    synthetic: dict = field(default_factory=dict)  # options of the synthetic benchmark


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    published_key: str | None  # row of zamba2vl.eval.published; the split may differ (see title)
    default_file: str | None
    source: str  # where to get the data, shown when the file is missing
    kind: str  # "vqa" | "mcq" | "count" | "ocrbench" | "mathvista" | "vqav2" | "synthetic"
    make_scorer: Callable[[EvalConfig], Scorer]
    make_prompt: Callable[[EvalSample, EvalConfig], str]
    max_new_tokens: int = 64
    min_pixels: int | None = DEFAULT_MIN_PIXELS  # None: the model's own processor's
    max_pixels: int = DEFAULT_MAX_PIXELS
    hidden_answers: bool = False  # test splits whose answers are private: write a submission file
    load: Callable[[str, EvalConfig], list[EvalSample]] | None = None  # custom loader (synthetic)

    def check(self, sample: EvalSample) -> list[str]:
        """Problems that make a row unscorable, found before anything is generated."""
        return sample.problems + CHECKS[self.kind](self, sample)

    def prompt(self, sample: EvalSample, config: EvalConfig) -> str:
        return self.make_prompt(sample, config)


# ---- load-time checks -------------------------------------------------------------------------------


def _common(bench: Benchmark, s: EvalSample) -> list[str]:
    out = [] if s.question else ["no question"]
    if not bench.hidden_answers and s.answer is None and bench.kind != "vqav2":
        out.append("missing answer")
    return out


def _check_mcq(bench: Benchmark, s: EvalSample) -> list[str]:
    out = _common(bench, s)
    options, answer = s.options, s.answer
    if bench.name.startswith("mmmu"):  # open questions have no options; a non-letter answer counts as "A"
        if options and answer in list(OPTION_LETTERS) and answer not in options:
            out.append(f"answer {answer!r} is not one of the options {''.join(options)}")
        return out
    if not options:
        out.append("no options")
    elif answer is not None and answer not in options:
        out.append(f"answer {answer!r} is not one of the options {''.join(options)}")
    return out


def _check_ocrbench(bench: Benchmark, s: EvalSample) -> list[str]:
    out = _common(bench, s)
    if s.answer is not None and parse_literal_list(s.answer) is None:
        out.append("answer is not a list of strings")
    if s.fields.get("category") not in OCRBENCH_CATEGORIES:
        out.append(f"unknown OCRBench category {s.fields.get('category')!r}")
    return out


def _check_mathvista(bench: Benchmark, s: EvalSample) -> list[str]:
    out = _common(bench, s)
    if s.fields.get("question_type") == "multi_choice":
        n = len(parse_literal_list(s.fields.get("choices")) or [])
        if s.fields.get("answer_option") not in OPTION_LETTERS[:n]:
            out.append(f"answer_option {s.fields.get('answer_option')!r} is not one of {n} choices")
    return out


def _check_vqav2(bench: Benchmark, s: EvalSample) -> list[str]:
    out = [] if s.question else ["no question"]
    if s.fields.get("answers") is None and s.answer is None:
        out.append("missing answers")
    elif any("answer" not in a or a["answer"] is None for a in answer_dicts(s.fields)):
        out.append("an entry of answers has no 'answer'")
    return out


CHECKS: dict[str, Callable[[Benchmark, EvalSample], list[str]]] = {
    "vqa": _common, "count": _common, "mcq": _check_mcq, "ocrbench": _check_ocrbench,
    "mathvista": _check_mathvista, "vqav2": _check_vqav2, "synthetic": lambda b, s: [],
}


def oracle_answer(bench: Benchmark, s: EvalSample) -> str:
    """The answer a perfect model would give; drives `--model oracle` smoke runs."""
    if bench.kind == "mcq":
        return str(s.answer)
    if bench.kind == "mathvista":
        return str(s.fields.get("answer_option") if s.fields.get("question_type") == "multi_choice" else s.answer)
    if bench.kind == "vqav2":
        counts = collections.Counter(a["answer"] for a in answer_dicts(s.fields))
        return counts.most_common(1)[0][0]
    if bench.kind == "synthetic":
        return str(s.fields.get("answer"))
    items = parse_literal_list(s.answer)
    return str(items[0]) if items else str(s.answer)


# ---- the registry -------------------------------------------------------------------------------------


def _vlmevalkit_source(name: str) -> str:
    return (f"It is VLMEvalKit's {name} data set: in a VLMEvalKit install run "
            f"`python -c \"from vlmeval.dataset import build_dataset; build_dataset('{name}')\"`, which saves "
            f"{name}.tsv under $LMUData (default ~/LMUData); pass that file with --data.")


def _suffix(config: EvalConfig) -> str | None:
    return config.prompt_suffix


def _vqa(name, title, key, file, scorer, **kw) -> Benchmark:
    return Benchmark(name, title, key, file, _vlmevalkit_source(file[:-4]), "vqa", scorer,
                     lambda s, c: prompts.short_answer(s, _suffix(c)), **kw)


def _mcq(name, title, key, file, mmmu=False, **kw) -> Benchmark:
    return Benchmark(name, title, key, file, _vlmevalkit_source(file[:-4]), "mcq",
                     lambda c: ChoiceAccuracy(mmmu=mmmu),
                     lambda s, c: prompts.multiple_choice(s, c.prompt_style, _suffix(c)), **kw)


_HF_LAYOUT = ("Give the split as JSON lines (one object per row: the fields of the Hugging Face data set, "
              "with `image` as a file path, a base64 string or {{\"bytes\": ...}}) or as its Parquet files "
              "(needs pyarrow). It is the Hugging Face data set {repo}, split {split}, as read by lmms-eval's "
              "`{task}` task.")

_ALL = [
    _mcq("ai2d_test", "AI2D (test)", "AI2D (test)", "AI2D_TEST.tsv", max_new_tokens=16),
    _vqa("chartqa_test", "ChartQA (test)", "ChartQA (test)", "ChartQA_TEST.tsv", lambda c: RelaxedAccuracy()),
    _vqa("docvqa_val", "DocVQA (val)", "DocVQA (test)", "DocVQA_VAL.tsv", lambda c: ANLS()),
    _vqa("docvqa_test", "DocVQA (test)", "DocVQA (test)", "DocVQA_TEST.tsv", lambda c: ANLS(), hidden_answers=True),
    _vqa("infovqa_val", "InfoVQA (val)", "InfoVQA (test)", "InfoVQA_VAL.tsv", lambda c: ANLS()),
    _vqa("infovqa_test", "InfoVQA (test)", "InfoVQA (test)", "InfoVQA_TEST.tsv", lambda c: ANLS(),
         hidden_answers=True),
    _vqa("textvqa_val", "TextVQA (val)", "TextVQA (val)", "TextVQA_VAL.tsv", lambda c: TextVQAAccuracy()),
    Benchmark("ocrbench", "OCRBench", "OCRBench", "OCRBench.tsv", _vlmevalkit_source("OCRBench"), "ocrbench",
              lambda c: OCRBenchScore(), lambda s, c: prompts.as_stored(s, _suffix(c)), max_new_tokens=128),
    Benchmark("vqav2_val", "VQA v2.0 (val)", "VQA v2.0 (val)", "vqav2_val.jsonl",
              _HF_LAYOUT.format(repo="lmms-lab-encoder/VQAv2 (formerly lmms-lab/VQAv2)", split="validation",
                                task="vqav2_val"), "vqav2",
              lambda c: VQAv2Accuracy(), lambda s, c: prompts.short_answer(s, _suffix(c)), max_new_tokens=16),
    Benchmark("mathvista_mini", "MathVista (mini)", "MathVista (mini)", "MathVista_MINI.tsv",
              _vlmevalkit_source("MathVista_MINI"), "mathvista", lambda c: MathVistaAccuracy(judge=c.judge),
              lambda s, c: prompts.as_stored(s, _suffix(c)), max_new_tokens=512),
    _mcq("mmmu_val", "MMMU (val)", "MMMU (val)", "MMMU_DEV_VAL.tsv", mmmu=True, max_new_tokens=64),
    _mcq("seedbench_img", "SEED (image)", "SEED (image)", "SEEDBench_IMG.tsv", max_new_tokens=16),
    _mcq("blink_val", "BLINK (val)", "BLINK (val)", "BLINK.tsv", max_new_tokens=16),
    _mcq("realworldqa", "RealWorldQA", "RealWorldQA", "RealWorldQA.tsv", max_new_tokens=16),
    Benchmark("countbenchqa", "CountBenchQA", "CountBenchQA", "CountBenchQA.tsv", _vlmevalkit_source("CountBenchQA"),
              "count", lambda c: CountingAccuracy(c.countbench_rule),
              lambda s, c: prompts.countbench(s, _suffix(c)), max_new_tokens=16),
    Benchmark("pixmocount_test", "PixMoCount (test)", "PixMoCount (test)", "pixmocount_test.jsonl",
              _HF_LAYOUT.format(repo="kcz358/pixmo-count", split="test", task="pixmo_count"), "count",
              lambda c: CountingAccuracy("integer"), lambda s, c: prompts.pixmo_count(s, _suffix(c)),
              max_new_tokens=16),
]
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ALL}


def register(bench: Benchmark) -> None:
    BENCHMARKS[bench.name] = bench


def get_benchmark(name: str) -> Benchmark:
    if name == "synthetic" and name not in BENCHMARKS:
        from zamba2vl.eval import synthetic  # noqa: F401  (registers itself; needs the training tasks)
    if name not in BENCHMARKS:
        names = sorted(set(BENCHMARKS) | {"synthetic"})
        raise InputError(f"unknown benchmark {name!r}; choose from {', '.join(names)}")
    return BENCHMARKS[name]
