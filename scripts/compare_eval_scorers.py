"""Score the edge-case prediction files with our scorers and with the reference harnesses' own scoring
code, print both side by side, and optionally freeze the reference numbers for the test suite.

The reference code is never part of this project: point the script at fetched checkouts and at a
separate virtualenv that has what they import (pandas, numpy, pillow, validators, sty, huggingface_hub,
tabulate, tqdm, python-dotenv, rich, portalocker, filelock, openpyxl, xlsxwriter, loguru):

    python3 -m venv .eval-ref-venv && .eval-ref-venv/bin/pip install pandas numpy pillow validators sty \\
        huggingface_hub tabulate tqdm python-dotenv rich portalocker filelock openpyxl xlsxwriter loguru
    .venv/bin/python scripts/compare_eval_scorers.py --vlmevalkit /tmp/ref/VLMEvalKit \\
        --lmms-eval /tmp/ref/lmms-eval --ref-python .eval-ref-venv/bin/python \\
        [--freeze tests/eval/data/reference_scores.json]

What runs on the reference side (in a subprocess under --ref-python, the packages imported as bare
namespaces so that their heavy `__init__` files are skipped):
  VLMEvalKit  ImageVQADataset.evaluate_heuristic (DocVQA_VAL, InfoVQA_VAL, ChartQA_TEST, TextVQA_VAL),
              OCRBench.evaluate, ImageMCQDataset.evaluate with exact matching (AI2D_TEST, SEEDBench_IMG,
              BLINK, RealWorldQA, MMMU_DEV_VAL), CountBenchQA.evaluate, MathVista.evaluate_heuristic
              (with a stand-in judge: one that always fails = rules only, one that replays the canned
              `judge_output` column).
  lmms-eval   vqav2_process_results_val, pixmo_count_process_results, countbenchqa_process_results and
              the `mean` aggregation.
The prediction files are handed to VLMEvalKit as pickled DataFrames of strings (its `load` returns them
unchanged), so both sides see exactly the same cells.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGE = ROOT / "tests/eval/data/edge"

# (comparison name, edge file, our scorer spec, reference runner, reference metric keys -> our keys)
CASES = [
    ("DocVQA_VAL/ANLS", "anls", "anls", "vlm_vqa:DocVQA_VAL"),
    ("InfoVQA_VAL/ANLS", "anls", "anls", "vlm_vqa:InfoVQA_VAL"),
    ("ChartQA_TEST/relaxed", "relaxed", "relaxed", "vlm_vqa:ChartQA_TEST"),
    ("TextVQA_VAL/vqa_score", "textvqa", "textvqa", "vlm_vqa:TextVQA_VAL"),
    ("VQAv2_val/lmms", "vqav2", "vqav2", "lmms_vqav2"),
    ("OCRBench", "ocrbench", "ocrbench", "vlm_ocrbench"),
    ("AI2D_TEST/mcq", "choice", "choice", "vlm_mcq:AI2D_TEST"),
    ("SEEDBench_IMG/mcq", "choice", "choice", "vlm_mcq:SEEDBench_IMG"),
    ("BLINK/mcq", "choice", "choice", "vlm_mcq:BLINK"),
    ("RealWorldQA/mcq", "choice", "choice", "vlm_mcq:RealWorldQA"),
    ("MMMU_DEV_VAL/mcq", "mmmu", "mmmu", "vlm_mcq:MMMU_DEV_VAL"),
    ("CountBenchQA/vlmevalkit-substring", "count", "count:substring", "vlm_countbench"),
    ("CountBenchQA/lmms-exact", "count", "count:exact", "lmms_countbenchqa"),
    ("PixMoCount/lmms-integer", "count", "count:integer", "lmms_pixmo"),
    ("MathVista_MINI/rules-only", "mathvista", "mathvista:rules", "vlm_mathvista:rules"),
    ("MathVista_MINI/canned-judge", "mathvista", "mathvista:judge", "vlm_mathvista:judge"),
]
# Keys we report that the reference does not: OCRBench's right answers / rows (equal to its "Final Score
# Norm" on the full 1000 rows).
OURS_ONLY = {"Accuracy"}
# The deliberate difference: our CountBenchQA default is the integer rule, VLMEvalKit's is substring.
DELIBERATE = [("CountBenchQA (ours: integer rule) vs VLMEvalKit substring", "count:integer", "vlm_countbench")]


# ------------------------------------------------------------------------------------------------------
# our side


def our_scores(spec: str, rows: list[dict]) -> dict[str, float]:
    from zamba2vl.eval.rescore import rescore
    return rescore(spec, rows)


# ------------------------------------------------------------------------------------------------------
# reference side (runs under --ref-python; imports only the reference checkouts and their dependencies)


def _bare_package(name: str, path: Path, **attrs) -> None:
    import types
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod


def _function_from(path: Path, func: str):
    import ast
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    node.decorator_list = []  # the registry decorators pull in the whole harness
    ns: dict = {}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), ns)
    return ns[func]


class _FailingJudge:
    def working(self):
        return True

    def generate(self, prompt, **kw):
        return "Failed to obtain answer via API."


class _CannedJudge(_FailingJudge):
    def __init__(self, canned):
        self.canned = canned  # "Q<index>:" marker in the prompt -> canned extraction (None = failure)

    def generate(self, prompt, **kw):
        for marker, out in self.canned.items():
            if marker in prompt:
                return "Failed to obtain answer via API." if out is None else out
        raise AssertionError("prompt without a known question marker")


def reference_scores(runner: str, rows: list[dict], vlm: Path, lmms: Path, work: Path) -> dict[str, float]:
    import pandas as pd
    kind, _, arg = runner.partition(":")
    sys.path.insert(0, str(vlm))
    sys.path.insert(0, str(lmms))
    if "vlmeval.dataset" not in sys.modules:
        _bare_package("vlmeval", vlm / "vlmeval")
        _bare_package("vlmeval.dataset", vlm / "vlmeval/dataset")
        _bare_package("vlmeval.dataset.utils", vlm / "vlmeval/dataset/utils", DEBUG_MESSAGE="", build_judge=None)
        _bare_package("lmms_eval", lmms / "lmms_eval")
        _bare_package("lmms_eval.tasks", lmms / "lmms_eval/tasks")
    frame = pd.DataFrame(rows)
    eval_file = str(work / f"{runner.replace(':', '_')}.pkl")
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob(f"{runner.replace(':', '_')}*"):
        stale.unlink()

    if kind == "vlm_vqa":
        from vlmeval.dataset.image_vqa import ImageVQADataset
        ds = object.__new__(ImageVQADataset)
        ds.dataset_name = arg
        frame.drop(columns=["judge_output"], errors="ignore").to_pickle(eval_file)
        out = ds.evaluate_heuristic(eval_file)
        return {k: float(out[k][0]) for k in out.columns}
    if kind == "vlm_ocrbench":
        from vlmeval.dataset.image_vqa import OCRBench
        frame.to_pickle(eval_file)
        return {k: float(v) for k, v in OCRBench.evaluate(eval_file).items()}
    if kind == "vlm_mcq":
        from vlmeval.dataset.image_mcq import ImageMCQDataset, MMMUDataset
        ds = object.__new__(MMMUDataset if arg.startswith("MMMU") else ImageMCQDataset)
        ds.dataset_name = arg
        ds.data = frame.drop(columns=["prediction"])
        frame.to_pickle(eval_file)
        acc = ds.evaluate_heuristic(eval_file, model="exact_matching", nproc=1)
        out = {}
        for _, row in acc.iterrows():
            prefix = "" if row["split"] == "none" else f"{row['split']}/"
            out.update({prefix + k: float(row[k]) * 100 for k in acc.columns if k != "split" and pd.notna(row[k])})
        return out
    if kind == "vlm_countbench":
        from vlmeval.dataset.image_vqa import CountBenchQA
        ds = object.__new__(CountBenchQA)
        ds.dataset_name = "CountBenchQA"
        frame.to_pickle(eval_file)
        return {"Overall": float(ds.evaluate(eval_file)["accuracy"])}
    if kind == "vlm_mathvista":
        import vlmeval.dataset.image_vqa as iv
        canned = {f"Q{r['index']}:": r["judge_output"] for r in rows}
        judge = _FailingJudge() if arg == "rules" else _CannedJudge(canned)
        iv.build_judge = lambda **kw: judge
        frame.drop(columns=["judge_output"]).to_pickle(eval_file)
        acc = iv.MathVista.evaluate_heuristic(eval_file, model=f"stub{arg}", nproc=1)
        out = {row["Task&Skill"]: float(row["acc"]) for _, row in acc.iterrows()}
        out["resolved_by_rules"] = float(acc[acc["Task&Skill"] == "Overall"]["prefetch"].iloc[0])
        return out
    mean = _function_from(lmms / "lmms_eval/api/metrics.py", "mean")
    if kind == "lmms_vqav2":
        from lmms_eval.tasks.vqav2.utils import vqav2_process_results_val
        accs = [vqav2_process_results_val(json.loads(json.dumps(r)), [r["prediction"]])["exact_match"] for r in rows]
        return {"Overall": mean(accs) * 100}
    if kind == "lmms_pixmo":
        from lmms_eval.tasks.pixmo_count.utils import pixmo_count_process_results
        return {"Overall": mean([pixmo_count_process_results(r, [r["prediction"]])["acc"] for r in rows]) * 100}
    if kind == "lmms_countbenchqa":
        from lmms_eval.tasks.countbenchqa.utils import countbenchqa_process_results
        accs = [countbenchqa_process_results({**r, "number": r["answer"]}, [r["prediction"]])["acc"] for r in rows]
        return {"Overall": mean(accs) * 100}
    raise ValueError(runner)


def _reference_main(args) -> None:
    results = {}
    for runner, edge in json.loads(args.reference_side):
        rows = [json.loads(line) for line in open(EDGE / f"{edge}.jsonl", encoding="utf-8")]
        results[runner] = reference_scores(runner, rows, Path(args.vlmevalkit), Path(args.lmms_eval),
                                           Path(args.work))
    print("@@JSON@@" + json.dumps(results))


# ------------------------------------------------------------------------------------------------------


def _git_head(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%H %cs"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vlmevalkit", required=True)
    ap.add_argument("--lmms-eval", required=True)
    ap.add_argument("--ref-python", default=str(ROOT / ".eval-ref-venv/bin/python"))
    ap.add_argument("--work", default="/tmp/zamba2vl-compare-work")
    ap.add_argument("--freeze", type=Path, help="write the reference numbers to this JSON file")
    ap.add_argument("--reference-side", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_side:
        return _reference_main(args)

    runners = sorted({(c[3], c[1]) for c in CASES} | {(d[2], "count") for d in DELIBERATE})
    proc = subprocess.run([args.ref_python, __file__, "--vlmevalkit", args.vlmevalkit, "--lmms-eval", args.lmms_eval,
                           "--work", args.work, "--reference-side", json.dumps(runners)],
                          capture_output=True, text=True, cwd=args.work if Path(args.work).is_dir() else None)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@JSON@@")]
    if proc.returncode != 0 or not marker:
        sys.exit(f"reference side failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    ref = json.loads(marker[0][len("@@JSON@@"):])

    all_equal = True
    print(f"{'comparison':40s} {'metric':34s} {'ours':>22s} {'reference':>22s}  equal")
    for label, edge, spec, runner in CASES:
        rows = [json.loads(line) for line in open(EDGE / f"{edge}.jsonl", encoding="utf-8")]
        ours = our_scores(spec, rows)
        for key, ref_value in ref[runner].items():
            equal = key in ours and ours[key] == ref_value
            all_equal &= equal
            print(f"{label:40s} {key[:34]:34s} {ours.get(key, float('nan'))!r:>22} {ref_value!r:>22}  {equal}")
        missing = set(ours) - set(ref[runner]) - OURS_ONLY
        if missing:
            all_equal = False
            print(f"{label:40s} keys only we report: {sorted(missing)}")
    print("\ndeliberate differences:")
    for label, spec, runner in DELIBERATE:
        ours = our_scores(spec, [json.loads(line) for line in open(EDGE / "count.jsonl", encoding="utf-8")])
        print(f"  {label}: ours {ours['Overall']!r}, reference {ref[runner]['Overall']!r}")
    print("\nALL EQUAL" if all_equal else "\nMISMATCH")

    if args.freeze:
        frozen = {
            "how": "scripts/compare_eval_scorers.py run on tests/eval/data/edge/*.jsonl; the reference numbers "
                   "come from the harnesses' own scoring code (see the script's docstring).",
            "produced": datetime.date.today().isoformat(),
            "vlmevalkit_commit": _git_head(Path(args.vlmevalkit)),
            "lmms_eval_commit": _git_head(Path(args.lmms_eval)),
            "cases": [{"name": c[0], "edge": c[1], "ours": c[2], "reference": c[3]} for c in CASES],
            "deliberate": [{"name": d[0], "ours": d[1], "reference": d[2]} for d in DELIBERATE],
            "reference_scores": ref,
        }
        args.freeze.write_text(json.dumps(frozen, indent=1, sort_keys=True) + "\n")
        print(f"froze reference numbers into {args.freeze}")
    sys.exit(0 if all_equal else 1)


if __name__ == "__main__":
    main()
