"""Run a benchmark: generate in batches, append each answer to disk as it comes, resume, shard, merge, score.

Layout of an output directory (one per benchmark):

    predictions.part000.jsonl   what rank 0 generated, one {"index", "prediction", "error"} per line,
                                appended and fsynced after every batch
    predictions.jsonl           all parts merged in data-set order, with each row's score
    results.json / results.md   the scores (deterministic: no times or host names)
    submission.json             for test splits whose answers are private

    run.json                    who made the predictions: the predictor's identity (for a model, a fingerprint
                                of its files) and the settings that change answers (see `run_identity`)

A run first reads every part already there, so a killed run picks up where it stopped and re-generates
nothing that was written (a half-written last line is dropped). It refuses to resume a folder whose run.json
names another model or other settings (a checkpoint retrained in place, a new synthetic seed, ...): it says so
and changes nothing; ``RunSettings.restart`` (``zamba2vl eval --restart``) discards the old predictions instead.

Rows that cannot be scored (bad image, missing answer, unknown option letter, ...) are written with their
reason, reported by index, and count as wrong.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zamba2vl.errors import ImageError, InputError
from zamba2vl.eval import distributed
from zamba2vl.eval.benchmarks import Benchmark, EvalConfig
from zamba2vl.eval.data import EvalSample, iter_chunks, read_rows
from zamba2vl.eval.predictors import EvalRequest, Predictor
from zamba2vl.eval.report import build_results, markdown_table, write_submission
from zamba2vl.eval.scorers import Graded

PART = "predictions.part{rank:03d}.jsonl"
MERGED = "predictions.jsonl"
RUN_FILE = "run.json"
_OUTPUTS = (MERGED, "results.json", "results.md", "submission.json")


@dataclass
class RunSettings:
    model: str
    model_size: str | None = None
    batch_size: int = 8
    progress: bool = True
    data_label: str = ""
    data_fingerprint: str = ""  # of the data file's bytes (predictors.file_fingerprint); "" for built-in data
    restart: bool = False  # discard predictions that another model or other settings wrote to the folder


def load_samples(bench: Benchmark, data: str | os.PathLike | None, config: EvalConfig) -> list[EvalSample]:
    if bench.load is not None:
        return bench.load(str(data) if data else "", config)
    if data is None:
        raise InputError(f"{bench.title}: no data file given (--data). {bench.source}")
    path = Path(data)
    if not path.exists():
        raise InputError(f"{bench.title}: data file {path} not found. {bench.source}")
    return read_rows(path)


# ---- the predictions files ------------------------------------------------------------------------------


def read_records(out_dir: Path) -> dict[str, dict]:
    """Every finished row in the parts and the merged file, by index; unreadable lines are skipped."""
    done: dict[str, dict] = {}
    for path in sorted(out_dir.glob("predictions.part*.jsonl")) + [out_dir / MERGED]:
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the tail of a killed run
                if isinstance(rec, dict) and "index" in rec:
                    done.setdefault(str(rec["index"]), rec)
    return done


def _open_for_append(path: Path):
    """Append mode, after cutting a half-written last line left by a kill."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def _append(f, records: list[dict]) -> None:
    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


# ---- generation -------------------------------------------------------------------------------------------


def _request(bench: Benchmark, s: EvalSample, config: EvalConfig) -> EvalRequest:
    images = [ref.load() for ref in s.images]
    return EvalRequest(
        index=s.index, images=images, prompt=bench.prompt(s, config),
        min_pixels=config.min_pixels or bench.min_pixels, max_pixels=config.max_pixels or bench.max_pixels,
        max_new_tokens=config.max_new_tokens or bench.max_new_tokens)


def generate(bench: Benchmark, samples: list[EvalSample], predictor: Predictor, out_dir: Path,
             config: EvalConfig, settings: RunSettings, rank: int = 0, world: int = 1) -> int:
    """Generate this rank's unfinished rows; return how many were sent to the predictor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = read_records(out_dir)
    todo = [s for s in distributed.shard(samples, rank, world) if s.key not in done]
    bar = None
    if settings.progress and rank == 0 and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=bench.name, unit="row", file=sys.stderr)
    generated = 0
    with _open_for_append(out_dir / PART.format(rank=rank)) as f:
        for batch in iter_chunks(todo, settings.batch_size):
            records: dict[str, dict] = {}
            requests = []
            for s in batch:
                problems = bench.check(s)
                if not problems:
                    try:
                        requests.append(_request(bench, s, config))
                        continue
                    except ImageError as exc:
                        problems = [str(exc)]
                records[s.key] = {"index": s.index, "prediction": None, "error": "; ".join(problems)}
            if requests:
                answers = predictor.generate(requests)
                if len(answers) != len(requests):
                    raise RuntimeError(f"predictor returned {len(answers)} answers for {len(requests)} requests")
                for req, ans in zip(requests, answers):
                    records[str(req.index)] = {"index": req.index, "prediction": str(ans), "error": None}
                generated += len(requests)
            _append(f, [records[s.key] for s in batch])
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return generated


# ---- merge and score ---------------------------------------------------------------------------------------


def merge_and_score(bench: Benchmark, samples: list[EvalSample], out_dir: Path, config: EvalConfig,
                    settings: RunSettings) -> dict[str, Any]:
    records = read_records(out_dir)
    missing = [s.key for s in samples if s.key not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} rows have no prediction yet (first: {missing[:5]}); run again to finish")
    graded = []
    for s in samples:
        rec = records[s.key]
        graded.append(Graded(s, rec.get("prediction"), corrupt=rec.get("error") is not None))
    corrupt = [{"index": g.sample.index, "reason": records[g.sample.key]["error"]} for g in graded if g.corrupt]

    report, metric = None, None
    if bench.hidden_answers:
        write_submission(out_dir / "submission.json", graded)
    else:
        scorer = bench.make_scorer(config)
        report, metric = scorer.score(graded), scorer.name
    with open(out_dir / MERGED, "w", encoding="utf-8") as f:
        for i, g in enumerate(graded):
            rec = {"index": g.sample.index, "prediction": g.prediction, "error": records[g.sample.key].get("error")}
            if report is not None:
                rec["score"] = report.row_scores[i]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    results = build_results(bench, settings, config, graded, report, corrupt, metric)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(markdown_table([results]) + "\n", encoding="utf-8")
    return results


def run_identity(bench: Benchmark, predictor: Predictor, config: EvalConfig, settings: RunSettings) -> dict:
    """What the answers depend on: the predictor, the benchmark and its data file (name and bytes), and the settings
    that change a prompt, an image or a generation. Not the row count, --limit or the batch size (they only add or
    split rows), nor the judge or the scoring rules (applied again to every row at each run)."""
    identity = getattr(predictor, "identity", None)
    synthetic = {k: v for k, v in config.synthetic.items() if k != "rows"} if bench.kind == "synthetic" else None
    ident = {
        "benchmark": bench.name, "data": settings.data_label,
        "predictor": identity() if callable(identity) else type(predictor).__name__,
        "prompt_style": config.prompt_style, "prompt_suffix": config.prompt_suffix, "min_pixels": config.min_pixels,
        "max_pixels": config.max_pixels, "max_new_tokens": config.max_new_tokens, "synthetic": synthetic,
    }
    if settings.data_fingerprint:  # by name alone, an edited file (or another of that name) would be resumed
        ident["data_fingerprint"] = settings.data_fingerprint
    return json.loads(json.dumps(ident, default=str))  # as it reads back from run.json


def prepare_out_dir(out_dir: Path, identity: dict, settings: RunSettings, rank: int = 0) -> None:
    """Check that the folder's earlier predictions (if any) were made by the same identity; rank 0 then records it.

    Raises InputError, changing nothing, when they were not and ``settings.restart`` is off; with it, rank 0
    deletes them (the parts and what was merged from them)."""
    parts = sorted(out_dir.glob("predictions.part*.jsonl")) if out_dir.is_dir() else []
    run_file = out_dir / RUN_FILE
    try:
        before = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    except (OSError, json.JSONDecodeError):
        before = {}  # unreadable: treat as a different run
    if parts and before is not None and before != identity and not settings.restart:
        changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        raise InputError(
            f"{out_dir} holds predictions made by another model or with other settings (different: "
            f"{', '.join(changed) or 'run.json'}); nothing was changed. Write elsewhere with --out, or pass --restart "
            "to discard those predictions and generate again.")
    if rank != 0:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    if parts and settings.restart:
        for path in parts + [out_dir / name for name in _OUTPUTS]:
            path.unlink(missing_ok=True)
    elif parts and before is None and settings.progress:
        print(f"zamba2vl eval: resuming {out_dir}, whose predictions do not say which model made them (no "
              f"{RUN_FILE}); pass --restart if the model or settings changed since", file=sys.stderr)
    tmp = run_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(identity, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, run_file)


def run_benchmark(bench: Benchmark, samples: list[EvalSample], predictor: Predictor, out_dir: str | os.PathLike,
                  config: EvalConfig | None = None, settings: RunSettings | None = None) -> dict[str, Any] | None:
    """Generate (this process's shard under torchrun), wait for the others, and on rank 0 merge and score.
    Returns the results on rank 0, None on the other ranks."""
    config = config or EvalConfig()
    settings = settings or RunSettings(model="unnamed")
    out_dir = Path(out_dir)
    rank, world = distributed.rank_and_world()
    with distributed.process_group(world):
        prepare_out_dir(out_dir, run_identity(bench, predictor, config, settings), settings, rank)
        distributed.barrier(world)
        generate(bench, samples, predictor, out_dir, config, settings, rank, world)
        distributed.barrier(world)
        results = merge_and_score(bench, samples, out_dir, config, settings) if rank == 0 else None
        distributed.barrier(world)
    for c in (results or {}).get("corrupt", {}).get("rows", [])[:20]:
        print(f"[{bench.name}] row {c['index']} not scored: {c['reason']}", file=sys.stderr)
    return results
