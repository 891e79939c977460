"""`zamba2vl eval`: run benchmarks and print a table beside Zyphra's published numbers.

    zamba2vl eval --model Zyphra/Zamba2-VL-1.2B --bench docvqa_val --data DocVQA_VAL.tsv
    zamba2vl eval --model M --bench ai2d_test,mmmu_val --data-dir ~/LMUData
    torchrun --nproc-per-node 2 -m zamba2vl.eval --model M --bench textvqa_val --data TextVQA_VAL.tsv

`--model` is a checkpoint (path or Hub id), or a stand-in: `oracle` answers every row correctly (a
smoke test of data, prompts and scoring), `answers:FILE.json` answers from a {index: answer} file.
The main CLI mounts this with `add_eval_arguments` / `run_eval_from_args`; `python -m zamba2vl.eval`
runs it alone.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from zamba2vl.errors import InputError
from zamba2vl.eval import distributed
from zamba2vl.eval.benchmarks import BENCHMARKS, Benchmark, EvalConfig, get_benchmark, oracle_answer
from zamba2vl.eval.scorers.counting import RULES as COUNT_RULES
from zamba2vl.eval.judge import judge_from_args
from zamba2vl.eval.predictors import AnswerPredictor, ModelPredictor, Predictor, file_fingerprint
from zamba2vl.eval.prompts import PROMPT_STYLES
from zamba2vl.eval.published import SIZES, size_from_name
from zamba2vl.eval.report import markdown_table
from zamba2vl.eval.runner import RunSettings, load_samples, run_benchmark


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    names = ", ".join(sorted(set(BENCHMARKS) | {"synthetic"}))
    parser.add_argument("--model", required=True,
                        help="checkpoint path or Hub id; or `oracle`, or `answers:FILE.json` (stand-ins)")
    parser.add_argument("--bench", required=True, help=f"comma-separated benchmark names: {names}")
    parser.add_argument("--data", help="data file for a single benchmark (.tsv, .jsonl, .json, .parquet)")
    parser.add_argument("--data-dir", help="folder holding each benchmark's file under its usual name")
    parser.add_argument("--out", help="output folder (default runs/eval/<model>); one subfolder per benchmark")
    parser.add_argument("--model-size", choices=SIZES, help="size whose published numbers to compare with "
                        "(default: read from the model name)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N rows (smoke runs)")
    parser.add_argument("--prompt-style", choices=PROMPT_STYLES, default="letter", help="multiple-choice prompt")
    parser.add_argument("--prompt-suffix", help="replace the benchmark's answer instruction with this text")
    parser.add_argument("--min-pixels", type=int, help="per-image pixel floor (default: 10 tokens of 28x28)")
    parser.add_argument("--max-pixels", type=int, help="per-image pixel budget (default: 3400 tokens of 28x28)")
    parser.add_argument("--max-new-tokens", type=int, help="default: per benchmark")
    parser.add_argument("--countbench-rule", choices=COUNT_RULES, default="integer",
                        help="CountBenchQA rule: first integer (default), VLMEvalKit's substring, lmms-eval's exact")
    parser.add_argument("--judge-url", help="OpenAI-compatible base URL of an LLM judge for MathVista (off by default)")
    parser.add_argument("--judge-model", help="model name to ask the judge endpoint for")
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable with the judge's key")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="model dtype (default: the model's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--restart", action="store_true",
                        help="discard the output folder's earlier predictions and generate again (needed when they "
                             "were made by another model or with other settings; a finished or killed run of the "
                             "same model and settings resumes without it)")
    parser.add_argument("--synthetic-rows", type=int, default=64, help="rows of the synthetic benchmark")
    parser.add_argument("--synthetic-seed", type=int, default=1234)
    parser.add_argument("--synthetic-image-size", type=int, default=None,
                        help="side of the synthetic images (default: the size the model was trained at, from "
                             "train_config.yaml in its folder, as for the shipped nano model; else 224)")
    parser.add_argument("--synthetic-reading-size", type=_width_height, default=None, metavar="WxH",
                        help="canvas of the reading task, e.g. 224x28 (default: the model's training config's "
                             "eval.reading_size, as for --synthetic-image-size; else the image size)")
    return parser


def _width_height(text: str) -> list[int]:
    from zamba2vl.train.synthetic import reading_canvas

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 224x28") from None
    try:
        return list(reading_canvas([w, h]))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def _train_eval_section(model: str) -> dict:
    """The ``eval`` section of train_config.yaml in the model's folder ({} if none)."""
    if model == "oracle" or model.startswith("answers:"):
        return {}
    try:
        from zamba2vl.checkpoint import resolve_model_dir

        folder = resolve_model_dir(model)
    except Exception:  # reported properly when the model is loaded
        return {}
    cfg = Path(folder) / "train_config.yaml"
    if not cfg.is_file():
        return {}
    import yaml

    section = (yaml.safe_load(cfg.read_text()) or {}).get("eval")
    return section if isinstance(section, dict) else {}


def _synthetic_image_size(args: argparse.Namespace, trained: dict | None = None) -> int:
    """--synthetic-image-size, else the eval image size of the model's own training config (``trained``, its eval
    section, when the caller has read it already), else 224."""
    if args.synthetic_image_size:
        return args.synthetic_image_size
    size = (_train_eval_section(args.model) if trained is None else trained).get("image_size")
    return size if isinstance(size, int) else 224


def _synthetic_options(args: argparse.Namespace) -> dict:
    # The model's training config is read (and a Hub id resolved) once, and only when a flag leaves a size to it.
    both = args.synthetic_image_size and args.synthetic_reading_size
    trained = {} if both else _train_eval_section(args.model)
    options = {"rows": args.synthetic_rows, "seed": args.synthetic_seed,
               "image_size": _synthetic_image_size(args, trained)}
    reading_size = _synthetic_reading_size(args, trained)
    if reading_size:  # only when set, so runs without it keep their earlier settings (and resume)
        options["reading_size"] = reading_size
    return options


def _synthetic_reading_size(args: argparse.Namespace, trained: dict | None = None) -> list[int] | None:
    """--synthetic-reading-size, else the reading canvas of the model's own training config, else None."""
    if args.synthetic_reading_size:
        return args.synthetic_reading_size
    size = (_train_eval_section(args.model) if trained is None else trained).get("reading_size")
    return list(size) if isinstance(size, list) and len(size) == 2 else None


def _model_tag(model: str) -> str:
    tail = Path(model.split(":", 1)[-1]).name or model
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail)[:80]


def _data_for(bench: Benchmark, args: argparse.Namespace, n_benches: int) -> str | None:
    if args.data:
        if n_benches > 1:
            raise InputError("--data names one file; with several benchmarks use --data-dir")
        return args.data
    if args.data_dir and bench.default_file:
        return str(Path(args.data_dir) / bench.default_file)
    return None


def _predictor(args: argparse.Namespace, bench: Benchmark, samples) -> Predictor:
    if args.model == "oracle":
        return AnswerPredictor({s.key: oracle_answer(bench, s) for s in samples})
    if args.model.startswith("answers:"):
        return AnswerPredictor.from_file(args.model[len("answers:"):])
    return ModelPredictor(args.model, device=args.device, dtype=args.dtype)


def run_eval_from_args(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.bench.split(",") if n.strip()]
    benches = [get_benchmark(n) for n in names]
    config = EvalConfig(
        prompt_style=args.prompt_style, prompt_suffix=args.prompt_suffix, min_pixels=args.min_pixels,
        max_pixels=args.max_pixels, max_new_tokens=args.max_new_tokens, countbench_rule=args.countbench_rule,
        judge=judge_from_args(args.judge_url, args.judge_model, args.judge_key_env),
        synthetic=_synthetic_options(args))
    settings = RunSettings(model=args.model, model_size=args.model_size or size_from_name(args.model),
                           batch_size=args.batch_size, progress=not args.no_progress, restart=args.restart)
    out_root = Path(args.out) if args.out else Path("runs/eval") / _model_tag(args.model)
    rank, world = distributed.rank_and_world()
    all_results = []
    model_predictor = None
    with distributed.process_group(world):
        for bench in benches:
            data = _data_for(bench, args, len(benches))
            samples = load_samples(bench, data, config)
            if args.limit:
                samples = samples[:args.limit]
            settings.data_label = Path(data).name if data else bench.name
            settings.data_fingerprint = file_fingerprint(data) if data else ""
            if args.model in ("oracle",) or args.model.startswith("answers:"):
                predictor = _predictor(args, bench, samples)
            else:  # one model for every benchmark
                model_predictor = model_predictor or _predictor(args, bench, samples)
                predictor = model_predictor
            results = run_benchmark(bench, samples, predictor, out_root / bench.name, config, settings)
            if results is not None:
                all_results.append(results)
    if rank != 0:
        return 0
    table = markdown_table(all_results)
    (out_root / "summary.md").write_text(table + "\n", encoding="utf-8")
    (out_root / "summary.json").write_text(json.dumps(all_results, indent=1, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_eval_arguments(argparse.ArgumentParser(prog="zamba2vl eval", description=__doc__,
                                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return run_eval_from_args(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
