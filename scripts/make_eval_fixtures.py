"""Write the evaluation fixtures under tests/eval/data/ (deterministic: same bytes on every run).

  edge/*.jsonl    one predictions file per scorer, >= 200 rows of hand-made edge cases combined at
                  random (seeded): benchmark fields plus a `prediction` column. These are what
                  scripts/compare_eval_scorers.py runs through the reference harnesses.
  bench/*         a tiny data set per benchmark in its real layout (VLMEvalKit TSV with base64 images,
                  or JSON lines for VQAv2 / PixMoCount), a few rows each, plus `answers.json` with the
                  stand-in predictions and the scores they must produce.

    python scripts/make_eval_fixtures.py [--out tests/eval/data]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from zamba2vl.eval.fixtures import write_bench_fixtures


def _pick(rng: random.Random, pool: list):
    return pool[rng.randrange(len(pool))]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


# ---- ANLS (DocVQA / InfoVQA) -----------------------------------------------------------------------
ANLS_ANSWERS = [
    ["Acme Corp"], ["12/05/1998", "12 May 1998"], ["$1,250.00"], ["Straße"], ["  padded answer  "], [""],
    ["HELLO world"], ["a"], ["Dr. J. Smith", "John Smith"], ["line one\nline two"], ["ﬁnance"], ["42"],
    ["Università di Bologna"], ["tab\tseparated"], ["cost of goods sold", "COGS"],
]
ANLS_PERTURB = [
    lambda a: a, lambda a: a.upper(), lambda a: a.lower(), lambda a: "  " + a + "  ", lambda a: a[:-1],
    lambda a: a[1:], lambda a: a + "s", lambda a: a.replace(" ", "  "), lambda a: a[: len(a) // 2],
    lambda a: a[::-1], lambda a: "", lambda a: "The answer is " + a, lambda a: a + "\n", lambda a: "x" * len(a),
    lambda a: a.replace("a", "e"), lambda a: a + a, lambda a: a.title(), lambda a: "ß" + a,
]


def anls_rows(rng: random.Random, n: int = 220) -> list[dict]:
    rows = []
    for i in range(n):
        answers = _pick(rng, ANLS_ANSWERS)
        base = _pick(rng, answers)
        pred = _pick(rng, ANLS_PERTURB)(base)
        answer = repr(answers) if rng.random() < 0.85 else answers[0]  # some rows hold one plain answer
        rows.append({"index": i, "question": f"q{i}", "answer": answer, "prediction": pred,
                     "category": _pick(rng, ["form", "table", "figure"])})
    return rows


# ---- relaxed accuracy (ChartQA) --------------------------------------------------------------------
RELAXED_TARGETS = ["100", "0", "0.1", "12%", "-40", "1.5", "2019", "Yes", "Blue", "0.05", "1e3", "3/4",
                   "1,000", "nan", "inf", " 7 ", "50%", "-0.0", "1_000", "20", "0.3", " Blue "]
RELAXED_PERTURB = [
    lambda t, v: t, lambda t, v: t.strip(), lambda t, v: repr(v * 1.05), lambda t, v: repr(v * 1.0500001),
    lambda t, v: repr(v * 0.95), lambda t, v: repr(v * 0.9499), lambda t, v: repr(v * 1.049),
    lambda t, v: f"{v * 100:g}%",
    lambda t, v: f" {v:g} ", lambda t, v: t.upper(), lambda t, v: t.lower() + " ", lambda t, v: f"${v:g}",
    lambda t, v: f"{v:,.0f}", lambda t, v: "", lambda t, v: "0", lambda t, v: "0.0", lambda t, v: "Infinity",
    lambda t, v: f"{v:g}.", lambda t, v: f"{v:e}", lambda t, v: t + "%", lambda t, v: "1E3",
]


def _as_number(t: str) -> float:
    try:
        return float(t.rstrip("%")) / (100 if t.endswith("%") else 1)
    except ValueError:
        return 1.0


def relaxed_rows(rng: random.Random, n: int = 230) -> list[dict]:
    rows = []
    for i in range(n):
        k = rng.choice([1, 1, 1, 2])
        targets = [_pick(rng, RELAXED_TARGETS) for _ in range(k)]
        answer = repr(targets) if (k > 1 or rng.random() < 0.3) else targets[0]
        base = targets[0]
        pred = _pick(rng, RELAXED_PERTURB)(base, _as_number(base))
        rows.append({"index": i, "question": f"q{i}", "answer": answer, "prediction": pred,
                     "split": _pick(rng, ["human", "augmented"])})
    return rows


# ---- VQA accuracy (TextVQA, VQAv2) -----------------------------------------------------------------
VQA_WORDS = ["two", "2", "the cat", "cat", "a cat", "cats", "dont", "don't", "3.", "3.5", "e.g.", "1,000",
             "1000", "yes", "Yes!", "no", "coca-cola", "coca cola", "(left)", "left", "ten", "10", "a/b",
             "a b", "it's", "its", "1,,000", "...", "u.s.a.", "U.S.A", "none", "0", "nine 9", "3.14.15",
             "end.", "New\nYork", "new york", "tab\there", "the"]
MANY_PERIODS = "a." * 40  # more periods than the 32 the references remove
NO_PERIODS = "a" * 40  # equal to MANY_PERIODS only if every period were removed


def vqa_answer_set(rng: random.Random) -> list[str]:
    focus = _pick(rng, VQA_WORDS)
    k = rng.randrange(0, 11)
    answers = [focus] * k + [_pick(rng, VQA_WORDS) for _ in range(10 - k)]
    rng.shuffle(answers)
    return answers


def textvqa_rows(rng: random.Random, n: int = 230) -> list[dict]:
    rows = []
    for i in range(n):
        answers = vqa_answer_set(rng)
        pred = _pick(rng, answers + VQA_WORDS[:6] + [MANY_PERIODS, NO_PERIODS, "The " + answers[0], answers[0].upper()])
        if i % 20 == 7:
            answers = [MANY_PERIODS] * 4 + answers[:6]
            pred = NO_PERIODS if i % 40 == 7 else MANY_PERIODS
        answer = repr(answers) if i % 25 != 3 else answers[0]  # a plain answer never scores (reference)
        rows.append({"index": i, "question": f"q{i}", "answer": answer, "prediction": pred})
    return rows


def vqav2_rows(rng: random.Random, n: int = 220) -> list[dict]:
    rows = []
    for i in range(n):
        answers = vqa_answer_set(rng)
        if i % 4 == 1:  # no answer_id: identical dicts leave the leave-one-out subset together
            dicts = [{"answer": a, "answer_confidence": "yes"} for a in answers]
        else:
            dicts = [{"answer": a, "answer_confidence": _pick(rng, ["yes", "no"]), "answer_id": j + 1}
                     for j, a in enumerate(answers)]
        if i % 20 == 9:
            dicts = [dict(d, answer=MANY_PERIODS) for d in dicts[:5]] + dicts[5:]
        pred = _pick(rng, answers + VQA_WORDS[:8] + [MANY_PERIODS, NO_PERIODS, answers[0] + ".", " " + answers[0]])
        rows.append({"question_id": 1000 + i, "question": f"q{i}", "answers": dicts, "prediction": pred})
    return rows


# ---- OCRBench ---------------------------------------------------------------------------------------
OCR_CATEGORIES = ["Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                  "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
                  "Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
                  "Handwritten Mathematical Expression Recognition"]
OCR_ANSWERS = [["STOP"], ["coffee", "Coffee Shop"], ["x^{2} + y^{2}"], ["\\frac { 1 } { 2 }"], ["  Main St "],
               ["line1\nline2"], ["12345"], [""], ["ÉCOLE"], ["a b"], ["$ 5.00"], ["x"]]
OCR_PREDS = [lambda a: a, lambda a: a.lower(), lambda a: a.upper(), lambda a: "It says " + a + ".",
             lambda a: a.replace(" ", ""), lambda a: a.replace("\n", " "), lambda a: a[:-1], lambda a: "",
             lambda a: " " + a + "\n", lambda a: a.replace(" ", "\n"), lambda a: "nothing here",
             lambda a: a.replace("{", "( ")]


def ocrbench_rows(rng: random.Random, n: int = 240) -> list[dict]:
    rows = []
    for i in range(n):
        answers = _pick(rng, OCR_ANSWERS)
        pred = _pick(rng, OCR_PREDS)(_pick(rng, answers))
        rows.append({"index": i, "question": f"q{i}", "answer": repr(answers), "prediction": pred,
                     "category": OCR_CATEGORIES[i % len(OCR_CATEGORIES)]})
    return rows


# ---- multiple choice ---------------------------------------------------------------------------------
MC_OPTION_SETS = [["cat", "dog", "bird", "fish"], ["cats", "cat", "a cat"], ["yes", "no"],
                  ["Point A", "Point B"], ["left", "right", "up", "down", "none of these"],
                  ["1", "2", "3", "4", "5", "6"], ["red car", "blue car", "car"], ["A", "B", "C", "D"],
                  ["the first image", "the second image"], ["北京", "上海", "广州"]]
MC_PRED_TEMPLATES = [
    "{L}", "({L})", "{L}.", "{L}) {T}", "The answer is {L}", "The correct answer is **{L}**.",
    "answer is {l}", "{T}", "{t}", "Answer: {L}", "**{L}**", "[{L}]", "{L} and {M}", "I think {M}. No, {L}",
    "{L} is the answer because the picture shows clearly a {T} on the left side of the image", "Z",
    "Cannot determine the answer", "Failed to obtain answer via API", "", "nan", "Option {L}: {T}",
    "{l}", "The answer is ({L}) {T}", "Both {T} and {U}", "{T} {T} {T} {T} {T} {T} {T} {T}",
    "I'm sorry, but without the image provided I cannot tell", "A", "The answer is a {t}",
    "{L}\n\nExplanation: {T}", "E", "{L}, {M}, and {L}", "Best option: ({L})",
]


def _mc_prediction(rng: random.Random, options: list[str], right: int) -> str:
    letters = [chr(65 + i) for i in range(len(options))]
    j = right if rng.random() < 0.6 else rng.randrange(len(options))
    m, u = rng.randrange(len(options)), rng.randrange(len(options))
    return _pick(rng, MC_PRED_TEMPLATES).format(L=letters[j], l=letters[j].lower(), M=letters[m], T=options[j],
                                                 t=options[j].upper(), U=options[u])


def choice_rows(rng: random.Random, n: int = 260) -> list[dict]:
    rows = []
    for i in range(n):
        options = _pick(rng, MC_OPTION_SETS)
        right = rng.randrange(len(options))
        row = {"index": i, "question": f"q{i}", "answer": chr(65 + right),
               "hint": _pick(rng, [None, "Look at the picture."]),
               "category": _pick(rng, ["counting", "spatial", "ocr"]),
               "l2-category": _pick(rng, ["perception", "reasoning"]),
               "prediction": _mc_prediction(rng, options, right)}
        row.update({chr(65 + k): o for k, o in enumerate(options)})
        rows.append(row)
    return rows


def mmmu_rows(rng: random.Random, n: int = 220) -> list[dict]:
    rows = []
    for i in range(n):
        split = "dev" if i % 6 == 0 else "validation"
        cat = _pick(rng, ["Art", "Math", "Physics"])
        if i % 5 == 2:  # an open question: no options, a free-form reference answer
            answer = _pick(rng, ["42", "1.5", "photosynthesis", "B", "x = 2"])
            pred = _pick(rng, [answer, "The answer is " + answer, "B", "Other Answers", "41", "", "A"])
            rows.append({"index": i, "question": f"q{i} <image 1>", "answer": answer, "split": split,
                         "category": cat, "prediction": pred})
            continue
        options = _pick(rng, MC_OPTION_SETS)
        right = rng.randrange(len(options))
        row = {"index": i, "question": f"q{i} <image 1>", "answer": chr(65 + right),
               "split": split, "category": cat, "prediction": _mc_prediction(rng, options, right)}
        row.update({chr(65 + k): o for k, o in enumerate(options)})
        rows.append(row)
    return rows


# ---- counting ------------------------------------------------------------------------------------------
COUNT_PREDS = ["{n}", " {n} ", "{n}.", "There are {n} objects.", "{m}", "{n}{n}", "0{n}", "{n} or {m}",
               "three", "", "about {n}", "-{n}", "{n}.0", "1, 2, 3, 4", "{m} rows of {n}", "٣", "{n}%",
               "The count is {m}, not {n}", "{n}\n"]


def count_rows(rng: random.Random, n: int = 240) -> list[dict]:
    rows = []
    for i in range(n):
        k = rng.randrange(0, 21)
        m = rng.randrange(0, 21)
        answer = str(k) if i % 15 else _pick(rng, [f" {k}", f"{k} objects", "3", "three "])
        pred = _pick(rng, COUNT_PREDS).format(n=k, m=m)
        if answer == "three ":  # no digits: the stripped reference is compared whole
            pred = _pick(rng, ["three", " three", "three "])
        rows.append({"index": i, "question": f"How many things? q{i}", "answer": answer, "prediction": pred})
    return rows


# ---- MathVista ----------------------------------------------------------------------------------------
def mathvista_rows(rng: random.Random, n: int = 240) -> list[dict]:
    rows = []
    tasks = ["figure question answering", "math word problem", "geometry problem solving"]
    skills = ["arithmetic reasoning", "statistical reasoning", "algebraic reasoning"]
    for i in range(n):
        kind = _pick(rng, ["mc", "int", "int", "float", "text", "list"])
        row = {"index": i, "question": f"Q{i}: solve it.", "task": _pick(rng, tasks),
               "skills": repr(rng.sample(skills, rng.randrange(1, 3)))}
        if kind == "mc":
            options = _pick(rng, MC_OPTION_SETS)
            j = rng.randrange(len(options))
            row.update(question_type="multi_choice", answer_type="text", choices=repr(options),
                       answer=options[j], answer_option=chr(65 + j), prediction=_mc_prediction(rng, options, j))
            judge = _pick(rng, [chr(65 + j), chr(65 + (j + 1) % len(options)), options[j], None, ""])
        elif kind == "int":
            k = _pick(rng, [0, 3, 12, 2019, -4])
            row.update(question_type="free_form", answer_type="integer", answer=str(k), choices=None,
                       prediction=_pick(rng, [str(k), f" {k} ", f"{k}.0", f"The answer is {k}", str(k + 1), "",
                                              f"+{k}", "zero", f"{k}_0"]))
            judge = _pick(rng, [str(k), str(k + 1), f"{k}.0", None, "The answer is"])
        elif kind == "float":
            x = _pick(rng, ["1.5", "0.25", "3.0", "-2.75", "0"])
            row.update(question_type="free_form", answer_type="float", answer=x, choices=None,
                       prediction=_pick(rng, [x, x + "0", f"{x} cm", str(float(x) + 0.01), "1e-1", "nan", ""]))
            judge = _pick(rng, [x, str(float(x) * 2), None, "approximately " + x])
        else:
            ans = "None" if rng.random() < 0.2 else ("[1, 2]" if kind == "list" else "pi")
            row.update(question_type="free_form", answer_type=kind, answer=ans, choices=None,
                       prediction=_pick(rng, [ans, "None", "something"]))
            judge = _pick(rng, [ans, "None", None])
        row["judge_output"] = judge
        rows.append(row)
    return rows


EDGE_FILES = {
    "anls": anls_rows, "relaxed": relaxed_rows, "textvqa": textvqa_rows, "vqav2": vqav2_rows,
    "ocrbench": ocrbench_rows, "choice": choice_rows, "mmmu": mmmu_rows, "count": count_rows,
    "mathvista": mathvista_rows,
}


def write_edge_files(out: Path) -> None:
    for name, make in EDGE_FILES.items():
        _write_jsonl(out / "edge" / f"{name}.jsonl", make(random.Random(f"zamba2vl-eval-{name}")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/eval/data")
    args = ap.parse_args()
    write_edge_files(args.out)
    write_bench_fixtures(args.out / "bench")
    print(f"wrote fixtures under {args.out}")


if __name__ == "__main__":
    main()
