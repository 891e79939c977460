"""Tiny data sets, one per benchmark, in each benchmark's real layout, with stand-in answers and the
scores those answers must get (worked out by hand, written here as literals).

`scripts/make_eval_fixtures.py` writes them under tests/eval/data/bench/; the test suite runs each
through the runner. Some rows are corrupt on purpose (an undecodable image, a missing answer, an
answer letter that is not an option) and must be reported, not dropped.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

_COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220), (120, 120, 120)]
BAD_IMAGE = "bm90IGFuIGltYWdl" * 6  # valid base64 of text that is not an image


def png_b64(i: int, size: int = 8) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), _COLOURS[i % len(_COLOURS)]).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _opts(*texts: str) -> dict:
    return {chr(65 + i): t for i, t in enumerate(texts)}


# bench name -> (file name, rows, stand-in answers by index, expected results)
# In rows, "image" is an int (a generated picture), a list of ints, "bad", or a string (copied as is).
FIXTURES: dict[str, tuple[str, list[dict], dict, dict]] = {
    "ai2d_test": ("AI2D_TEST.tsv", [
        {"index": 0, "image": 0, "question": "Which stage comes first?", **_opts("egg", "larva", "pupa", "adult"),
         "answer": "A", "category": "biology"},
        {"index": 1, "image": 1, "question": "What eats grass?", **_opts("hawk", "snake", "rabbit", "sun"),
         "answer": "C", "category": "biology"},
        {"index": 2, "image": 2, "question": "Which is a planet?", **_opts("Moon", "Mars", "Sun", "Comet"),
         "answer": "B", "category": "space"},
        {"index": 3, "image": 3, "question": "Which label is the root?", **_opts("W", "X", "Y", "Z"),
         "answer": "E", "category": "space"},  # corrupt: E is not an option
    ], {"0": "A", "1": "The answer is C.", "2": "D", "3": "A"},
        {"score": 50.0, "metrics": {"Overall": 50.0, "biology": 100.0, "space": 0.0}, "corrupt": [3]}),
    "chartqa_test": ("ChartQA_TEST.tsv", [
        {"index": 10, "image": 0, "question": "Sales in 2019?", "answer": "12", "split": "human"},
        {"index": 11, "image": 1, "question": "Is the trend rising?", "answer": "Yes", "split": "augmented"},
        {"index": 12, "image": 2, "question": "Peak value?", "answer": "100", "split": "augmented"},
    ], {"10": "12.5", "11": "yes", "12": "106"},
        {"score": 200 / 3, "metrics": {"human": 100.0, "augmented": 50.0, "Overall": 200 / 3}, "corrupt": []}),
    "docvqa_val": ("DocVQA_VAL.tsv", [
        {"index": 20, "image": 0, "question": "Company name?", "answer": "['Acme']"},
        {"index": 21, "image": 1, "question": "Date?", "answer": "['12 May']"},
        {"index": 22, "image": 2, "question": "Which column?", "answer": "['total']"},
        {"index": 23, "image": "bad", "question": "Signed by?", "answer": "['J. Doe']"},  # corrupt image
    ], {"20": "acme", "21": "12 Mey", "22": "none", "23": "J. Doe"},
        {"score": (1 + 5 / 6) / 4 * 100, "corrupt": [23]}),
    "docvqa_test": ("DocVQA_TEST.tsv", [
        {"index": 30, "image": 0, "question": "Invoice number?", "questionId": 5001},
        {"index": 31, "image": 1, "question": "Total due?", "questionId": 5002},
    ], {"30": "INV-7", "31": "$40"},
        {"score": None, "submission": [{"questionId": 5001, "answer": "INV-7"},
                                       {"questionId": 5002, "answer": "$40"}], "corrupt": []}),
    "infovqa_val": ("InfoVQA_VAL.tsv", [
        {"index": 40, "image": 0, "question": "Growth rate?", "answer": "['3.5%', '3.5 percent']"},
        {"index": 41, "image": 1, "question": "Which country?", "answer": "['Norway']"},
        {"index": 42, "image": 2, "question": "How many?", "answer": None},  # corrupt: no answer
    ], {"40": "3.5 %", "41": "Norway", "42": "7"},
        {"score": 60.0, "corrupt": [42]}),
    "textvqa_val": ("TextVQA_VAL.tsv", [
        {"index": 50, "image": 0, "question": "What does the sign say?", "answer": repr(["stop"] * 10)},
        {"index": 51, "image": 1, "question": "Which drink?", "answer": repr(["coca cola"] * 2 + ["coke"] * 8)},
        {"index": 52, "image": 1, "question": "Which brand?", "answer": repr(["coke"] * 10)},
    ], {"50": "Stop.", "51": "coca cola", "52": "pepsi"},
        {"score": 1.6 / 3 * 100, "corrupt": []}),
    "ocrbench": ("OCRBench.tsv", [
        {"index": 60, "image": 0, "question": "What is written?", "answer": "['STOP']",
         "category": "Regular Text Recognition"},
        {"index": 61, "image": 1, "question": "Write the formula.", "answer": "['x ^ 2']",
         "category": "Handwritten Mathematical Expression Recognition"},
        {"index": 62, "image": 2, "question": "Which year?", "answer": "['1998']", "category": "Doc-oriented VQA"},
        {"index": 63, "image": 3, "question": "Company?", "answer": "['ACME']",
         "category": "Key Information Extraction"},
    ], {"60": "stop sign", "61": "x^2", "62": "1989", "63": "acme inc"},
        {"score": 75.0, "metrics": {"Final Score": 3.0}, "corrupt": []}),
    "vqav2_val": ("vqav2_val.jsonl", [
        {"question_id": 70, "image": 0, "question": "How many dogs?",
         "answers": [{"answer": "2", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]},
        {"question_id": 71, "image": "file", "question": "What color is the car?",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                     for k, a in enumerate(["red"] * 3 + ["blue"] * 7)]},
        {"question_id": 72, "image": "bytes", "question": "What is on the table?",
         "answers": [{"answer": "apple", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]},
    ], {"70": "two", "71": "red", "72": "green"},
        {"score": 1.9 / 3 * 100, "corrupt": []}),
    "mathvista_mini": ("MathVista_MINI.tsv", [
        {"index": 80, "image": 0, "question": "Q80: How many sides? Choices: (A) 3 (B) 4 (C) 5",
         "question_type": "multi_choice", "answer_type": "text", "choices": "['3', '4', '5']", "answer": "4",
         "answer_option": "B", "task": "geometry problem solving", "skills": "['geometry reasoning']"},
        {"index": 81, "image": 1, "question": "Q81: What is the total?", "question_type": "free_form",
         "answer_type": "integer", "choices": None, "answer": "12", "answer_option": None,
         "task": "math word problem", "skills": "['arithmetic reasoning']"},
        {"index": 82, "image": 2, "question": "Q82: What is the ratio?", "question_type": "free_form",
         "answer_type": "float", "choices": None, "answer": "1.5", "answer_option": None,
         "task": "figure question answering", "skills": "['arithmetic reasoning', 'statistical reasoning']"},
        {"index": 83, "image": 3, "question": "Q83: How many birds?", "question_type": "free_form",
         "answer_type": "integer", "choices": None, "answer": "7", "answer_option": None,
         "task": "figure question answering", "skills": "['arithmetic reasoning']"},
    ], {"80": "B", "81": "12", "82": "1.50", "83": "The answer is 7"},
        {"score": 75.0, "metrics": {"arithmetic reasoning": 200 / 3, "figure question answering": 50.0},
         "details": {"resolved_by_rules": 3}, "corrupt": []}),
    "mmmu_val": ("MMMU_DEV_VAL.tsv", [
        {"index": 90, "image": [0, 1], "question": "Compare <image 1> and <image 2>. Which is larger?",
         **_opts("first", "second", "same", "unknown"), "answer": "B", "split": "validation", "category": "Math"},
        {"index": 91, "image": 2, "question": "What is 6 x 7? <image 1>", "answer": "42", "split": "validation",
         "category": "Math"},  # an open question
        {"index": 92, "image": 3, "question": "Which style? <image 1>", **_opts("Baroque", "Gothic", "Modern"),
         "answer": "A", "split": "validation", "category": "Art"},
        {"index": 93, "image": 4, "question": "Which force? <image 1>", **_opts("gravity", "friction", "lift", "drag"),
         "answer": "D", "split": "dev", "category": "Physics"},
    ], {"90": "B", "91": "42", "92": "C", "93": "(D) drag"},
        {"score": 200 / 3, "metrics": {"validation/Overall": 200 / 3, "dev/Overall": 100.0,
                                       "validation/Math": 100.0, "validation/Art": 0.0}, "corrupt": []}),
    "seedbench_img": ("SEEDBench_IMG.tsv", [
        {"index": 100, "image": 0, "question": "What is shown?", **_opts("a cat", "a dog", "a car", "a tree"),
         "answer": "A", "category": "Instance Identity"},
        {"index": 101, "image": 1, "question": "What animal?", **_opts("cow", "dog", "eel", "fox"),
         "answer": "B", "category": "Instance Identity"},
        {"index": 102, "image": "100", "question": "How many?", **_opts("1", "2", "3", "4"),  # shares row 100's
         "answer": "C", "category": "Instance Counting"},
        {"index": 103, "image": "999", "question": "Where?", **_opts("here", "there"),  # corrupt: no row 999
         "answer": "A", "category": "Instance Location"},
    ], {"100": "A", "101": "(B) dog", "102": "I cannot tell.", "103": "A"},
        {"score": 50.0, "corrupt": [103]}),
    "blink_val": ("BLINK.tsv", [
        {"index": 110, "image": [0, 1], "question": "Which image is brighter?",
         **_opts("the first image", "the second image"), "answer": "A", "category": "Relative_Reflectance"},
        {"index": 111, "image": [2, 3], "question": "Which point is closer?", **_opts("Point A", "Point B"),
         "answer": "B", "category": "Relative_Depth"},
        {"index": 112, "image": 4, "question": "Is the left object on top?", **_opts("yes", "no"),
         "answer": "A", "category": "Spatial_Relation"},
    ], {"110": "(A)", "111": "Point B", "112": "no"},
        {"score": 200 / 3, "corrupt": []}),
    "realworldqa": ("RealWorldQA.tsv", [
        {"index": 120, "image": 0, "question": "Which lane is the car in?", "hint": "Look at the road.",
         **_opts("left", "middle", "right"), "answer": "C"},
        {"index": 121, "image": 1, "question": "Is the light green?", **_opts("yes", "no"), "answer": "A"},
        {"index": 122, "image": 2, "question": "How far is the sign?", **_opts("5 m", "50 m", "500 m"),
         "answer": "B"},
    ], {"120": "The answer is (C).", "121": "B", "122": "A"},
        {"score": 100 / 3, "corrupt": []}),
    "countbenchqa": ("CountBenchQA.tsv", [
        {"index": 130, "image": 0, "question": "How many apples are there?", "answer": "3"},
        {"index": 131, "image": 1, "question": "How many dogs are there?", "answer": "5"},
        {"index": 132, "image": 2, "question": "How many cups are there?", "answer": "2"},
        {"index": 133, "image": 3, "question": "How many birds are there?", "answer": "7"},
    ], {"130": "3", "131": "There are 5 dogs.", "132": "12", "133": "seven"},
        {"score": 50.0, "score_substring": 75.0, "corrupt": []}),
    "pixmocount_test": ("pixmocount_test.jsonl", [
        {"index": 140, "image": 0, "question": "<image>How many cars are there?", "answer": "4"},
        {"index": 141, "image": 1, "question": "<image>How many people are there?", "answer": "10"},
        {"index": 142, "image": "file", "question": "<image>How many boats are there?", "answer": "6"},
    ], {"140": "4", "141": "10 people", "142": "06"},
        {"score": 200 / 3, "corrupt": []}),
}


def _image_cell(spec, row_index, folder: Path, tsv: bool):
    if spec == "bad":
        return BAD_IMAGE
    if isinstance(spec, list):
        return repr([png_b64(i) for i in spec])
    if spec == "file":
        name = f"img_{row_index}.png"
        (folder / name).write_bytes(base64.b64decode(png_b64(row_index)))
        return name
    if spec == "bytes":
        return {"bytes": png_b64(row_index)}
    if isinstance(spec, int):
        return png_b64(spec)
    return spec  # a pointer to another row's image


def write_bench_fixtures(out: Path) -> None:
    for bench, (file_name, rows, answers, expected) in FIXTURES.items():
        folder = Path(out) / bench
        folder.mkdir(parents=True, exist_ok=True)
        cooked = []
        for row in rows:
            row = dict(row)
            row["image"] = _image_cell(row["image"], row.get("index", row.get("question_id")), folder,
                                       file_name.endswith(".tsv"))
            cooked.append(row)
        if file_name.endswith(".tsv"):
            columns = list(dict.fromkeys(k for r in cooked for k in r))
            with open(folder / file_name, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, delimiter="\t", lineterminator="\n")
                w.writerow(columns)
                for r in cooked:
                    w.writerow(["" if r.get(c) is None else r[c] for c in columns])
        else:
            with open(folder / file_name, "w", encoding="utf-8", newline="\n") as f:
                for r in cooked:
                    f.write(json.dumps(r, sort_keys=True) + "\n")
        (folder / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
        (folder / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
