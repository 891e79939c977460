"""The benchmark suite behind ``zamba2vl bench``: time to first token, model shapes, decode, matmul peak, image
prompts and memory, each system in a worker process of its own, medians, FLOPs and fraction of the measured peak.

    zamba2vl bench                                  # every section at its defaults (long; see benchmarks/README.md)
    zamba2vl bench ttft --long                      # 53M Zamba2 vs transformers' Zamba2 vs a matched Llama, 1k-32k
    zamba2vl bench shapes decode --threads 2 --dtype bfloat16 --repeats 3 --out bench-out/
    .venv/bin/python benchmarks/suite.py peak       # the same without the CLI

Every section prints a markdown table, writes ``OUT/<section>.json`` (every run, the FLOP counts, the conditions:
CPU model and flags, threads, dtype, versions, date, command line, load averages) and ``OUT/<section>.png`` (time
against length per system, log-log). Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flops  # noqa: E402
from harness import (REPO, SRC, Worker, WorkerDied, conditions, load_average, markdown_table, mib,  # noqa: E402
                     timed_rounds, worker_env, write_json)

SECTIONS = ("peak", "ttft", "shapes", "decode", "image", "memory")
SYSTEMS = ("ours", "transformers", "llama", "qwen3")
LENGTHS = [1024, 2048, 4096, 8192]
LONG_LENGTHS = [16384, 32768]
CONTEXTS = [1024, 4096, 16384, 32768]
WORKER = Path(__file__).resolve().parent / "bench_worker.py"
GB = 1e9

DESCRIPTION = ("Speed and memory benchmarks of zamba2vl against transformers 5.x: time to first token, real model "
               "shapes, decode, matmul peak, image prompts, memory. Each system runs in a worker process of its own; "
               "every section prints a table and writes OUT/<section>.json and OUT/<section>.png.")
HELP = """\
sections (run in this order; several may be given, default: all):
  peak    matmul GFLOP/s of torch.matmul (n x n x n, float32 and bfloat16, --peak-sizes) and memory bandwidth
          (copy and read-only sum of a --bandwidth-mib buffer), at --threads. Needs nothing but torch. Every
          section that reports a fraction of the peak or a memory-traffic floor measures these first, in the same run.
  ttft    time to first token against prompt length (--lengths, default 1k,2k,4k,8k; --long adds 16k,32k) of the
          53M-parameter Zamba2 of benchmarks/prefill.py: zamba2vl ("ours") beside transformers' Zamba2ForCausalLM
          on the same checkpoint ("transformers") and a Llama of the same width and non-embedding parameter count
          with sdpa attention ("llama"). Reports speedups and the ours/llama crossover length.
  shapes  the same curve at real sizes: the Zamba2-VL-1.2B language model ("ours", random weights) against a
          Qwen3-1.7B-shaped transformer ("qwen3": 28 layers, width 2048, 16 query / 8 KV heads of 128, MLP 6144,
          tied 151936 vocabulary), with each system's FLOPs beside its time and the fraction of the matmul peak.
  decode  milliseconds per generated token against context length (--contexts) for the same two shapes: ours with
          its HybridCache (generation.decode_one_token), qwen3 with transformers' DynamicCache. The cache holds
          --decode-fill synthetic (random state of the right size: fast) or prefill (a real prefill: slow at long
          contexts). Beside each time: bytes read per step (weights + KV cache + SSM/conv state) over the measured
          read bandwidth = the memory-traffic floor, and both systems' cache bytes.
  image   an image prompt end to end at the 1.2B shape (vision tower + LM prefill) for --image-sizes square images
          plus --image-text-tokens of text. zamba2vl only.
  memory  peak RSS of --memory-tokens multimodal prompts (default 4096; one square image filling about 3/4 of the
          prompt, or --memory-image-side, then text) at the --memory-size shape (default 2.7b), each in a fresh
          worker, against the weights' bytes + 3 GB. zamba2vl only.

systems and what they need:
  ours          this checkout's zamba2vl under --ours-python (default .venv/bin/python).
  transformers, llama, qwen3
                transformers 5.x under --transformers-python (default .bench-venv/bin/python). Set it up with
                  python3 -m venv .bench-venv
                  .bench-venv/bin/pip install torch==2.13.0 "transformers>=5,<6" safetensors
                (no torchvision), or point --transformers-python at any python with transformers 5.x and torch.
                Without it the suite runs zamba2vl's side only and says so.

Slow cases are bounded: per system and case, timed runs stop once they would pass --budget-s (at least one run),
and a length whose predicted time (the previous length's, scaled linearly) exceeds --max-run-s is skipped.
"""


# ----------------------------------------------------------------------------------------------- configs
def _zamba2_53m() -> dict:
    from prefill import CONFIG_53M

    return dict(CONFIG_53M)


TINY_53M = dict(model_type="zamba2", vocab_size=512, hidden_size=64, num_hidden_layers=6,
                layers_block_type=["mamba", "mamba", "hybrid"] * 2, num_mem_blocks=2, mamba_d_state=16,
                mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=4, num_attention_heads=4,
                num_key_value_heads=4, intermediate_size=128, hidden_act="gelu", use_shared_attention_adapter=False,
                adapter_rank=8, use_mem_rope=True, rope_theta=10000.0, max_position_embeddings=4096, chunk_size=256,
                rms_norm_eps=1e-5, tie_word_embeddings=True, add_bias_linear=False, use_conv_bias=True,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY_12B = dict(TINY_53M, layers_block_type=["mamba", "mamba", "hybrid"] * 2, num_mem_blocks=1,
                use_shared_attention_adapter=True, mamba_d_state=32)
TINY_QWEN3 = dict(flops.QWEN3_1_7B, vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def zamba2_12b() -> dict:
    sys.path.insert(0, str(SRC))
    from zamba2vl.config import text_preset

    return text_preset("1.2b").to_dict()


def vl_text_config(preset: str) -> dict:
    sys.path.insert(0, str(SRC))
    if preset == "tiny":
        from zamba2vl.testing import tiny_vl_config

        cfg = tiny_vl_config()
    else:
        from zamba2vl.config import vl_preset

        cfg = vl_preset(preset)
    return {"text": cfg.text_config.to_dict(), "vision": cfg.vision_config.to_dict()}


# ------------------------------------------------------------------------------------------------ systems
@dataclass
class System:
    name: str  # ours | transformers | llama | qwen3
    label: str  # how tables and plots name it
    kind: str  # zamba2 | transformer (for the FLOP and byte formulas)
    cfg: dict  # Hub-style config dict
    spec: dict  # worker spec (system, config / checkpoint / vl_preset)


@dataclass
class Suite:
    args: argparse.Namespace
    tmp: Path
    transformers: dict | None = None  # {"python", "version", "torch"} when the baseline venv works
    transformers_reason: str = ""
    peak: dict | None = None
    workers: list = field(default_factory=list)
    reports: dict = field(default_factory=dict)
    argv: list = field(default_factory=list)  # the command line, as the JSON records it

    # -- workers -------------------------------------------------------------------------------------------
    def start(self, system: System, tag: str) -> Worker:
        spec = dict(system.spec, threads=self.args.threads, dtype=self.args.dtype)
        log = self.tmp / f"{system.name}-{tag}.log"
        ours = system.name == "ours" or spec["system"] == "peak"
        py = self.args.ours_python if ours else self.transformers["python"]
        # a baseline runs from the temporary folder, so that nothing of this checkout is importable there
        w = Worker([py, str(WORKER), json.dumps(spec)], system.name, log, worker_env(self.args.threads, ours),
                   cwd=None if ours else self.tmp)
        self.workers.append(w)
        return w

    def stop(self, w: Worker) -> dict:
        final = w.finish(json.dumps({"op": "quit"}))
        self.workers.remove(w)
        return final

    def kill_all(self) -> None:
        for w in list(self.workers):
            w.kill()
        self.workers.clear()

    # -- the baseline venv ---------------------------------------------------------------------------------
    def check_transformers(self) -> None:
        py = Path(self.args.transformers_python)
        if not py.exists():
            self.transformers_reason = f"no python at {py}"
            return
        try:
            out = subprocess.run([str(py), "-c", "import torch, transformers; print(transformers.__version__, "
                                  "torch.__version__)"], capture_output=True, text=True, timeout=300,
                                 cwd=self.tmp, env=worker_env(1, with_src=False))
        except (OSError, subprocess.TimeoutExpired) as e:
            self.transformers_reason = f"{py} failed to start: {e}"
            return
        if out.returncode != 0:
            self.transformers_reason = f"{py} cannot import torch and transformers: {out.stderr.strip()[-400:]}"
            return
        version, torch_version = out.stdout.split()[-2:]
        self.transformers = dict(python=str(py), version=version, torch=torch_version)

    def baseline_systems(self, wanted: list[str]) -> list[str]:
        """The baseline systems of a section that can run; says clearly when they cannot."""
        chosen = [s for s in wanted if s in self.args.systems]
        if not chosen:
            return []
        if self.transformers is None and not self.transformers_reason:
            self.check_transformers()
            if self.transformers:
                v = self.transformers["version"]
                note = "" if v.split(".")[0] == "5" else "  (NOT a 5.x release: the issue asks for the newest 5.x)"
                print(f"baseline: transformers {v} with torch {self.transformers['torch']} "
                      f"({self.transformers['python']}){note}", flush=True)
        if self.transformers is None:
            print(f"NOTE: transformers baseline(s) {', '.join(chosen)} skipped: {self.transformers_reason}. "
                  "Running zamba2vl's side only. Set the baseline up with\n"
                  "    python3 -m venv .bench-venv && .bench-venv/bin/pip install torch==2.13.0 "
                  "'transformers>=5,<6' safetensors\n"
                  "or pass --transformers-python PATH (a python with transformers 5.x and torch).", flush=True)
            return []
        return chosen

    # -- the machine's peaks -------------------------------------------------------------------------------
    def ensure_peak(self) -> dict:
        if self.peak is None:
            self.peak = run_peak(self)
        return self.peak

    def peak_gflops(self) -> float:
        """The fastest matmul rate the CPU offers for the model's dtype: its own, or (bf16/fp16, whose values
        convert to float32 exactly) float32, whichever is faster here."""
        p = self.ensure_peak()["gflops"]
        return max(p.get(self.args.dtype, 0.0), p.get("float32", 0.0))


# ---------------------------------------------------------------------------------------------- utilities
def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def systems_line(systems: list["System"], suite: "Suite") -> str:
    out = []
    for s in systems:
        if s.name == "ours":
            out.append(f"{s.name} = {s.label} (this checkout)")
        else:
            t = suite.transformers or {}
            out.append(f"{s.name} = {s.label} (transformers {t.get('version')}, sdpa)")
    return "Systems: " + "; ".join(out)


def _lengths(args) -> list[int]:
    if args.lengths:
        out = list(args.lengths)
    else:
        out = [64, 128, 256] if args.tiny else list(LENGTHS)
    if args.long:
        out += [n for n in ([512, 1024] if args.tiny else LONG_LENGTHS) if n not in out]
    return sorted(set(out))


def crossover(points_a: dict[int, float], points_b: dict[int, float]) -> dict:
    """Where system a's time curve crosses b's (log-log interpolation between measured lengths)."""
    common = sorted(set(points_a) & set(points_b))
    if not common:
        return {"summary": "not measured", "length": None}
    r = [(n, points_a[n] / points_b[n]) for n in common]
    if all(x < 1 for _, x in r):
        return {"summary": f"faster at every measured length ({common[0]}-{common[-1]})", "length": None,
                "below_all": True}
    if all(x >= 1 for _, x in r):
        return {"summary": f"slower at every measured length ({common[0]}-{common[-1]})", "length": None}
    crossings = []
    for (n0, r0), (n1, r1) in zip(r, r[1:]):
        if (r0 >= 1) != (r1 >= 1):
            la, lb = math.log(n0), math.log(n1)
            L = math.exp(la - math.log(r0) * (lb - la) / (math.log(r1) - math.log(r0)))
            crossings.append((round(L), r1 < 1))
    if len(crossings) > 1:
        return {"summary": "the curves cross more than once: at about " + ", ".join(f"{n}" for n, _ in crossings)
                + " tokens", "length": crossings[0][0], "crossings": [n for n, _ in crossings]}
    L, faster_after = crossings[0]
    return {"summary": f"faster from about {L} tokens on" if faster_after else f"faster up to about {L} tokens only",
            "length": L}


def check(name: str, met: bool | None, detail: str) -> dict:
    return {"name": name, "met": met, "detail": detail}


def print_checks(checks: list[dict]) -> None:
    if not checks:
        return
    print("\nIssue acceptance checks (this run):")
    for c in checks:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[c["met"]]
        print(f"  [{verdict:^12}] {c['name']}: {c['detail']}")


def notes_for_plot(suite: Suite) -> list[str]:
    a = suite.args
    c = conditions(a.threads, a.dtype)
    return [f"{c['cpu']}", f"{a.threads} threads, {a.dtype}", c["date"][:16]]


def save_report(suite: Suite, section: str, report: dict) -> Path:
    a = suite.args
    base = conditions(a.threads, a.dtype, suite.argv)
    base.update(load_average_at_end=load_average(), repeats=a.repeats, budget_s=a.budget_s, max_run_s=a.max_run_s,
                transformers=suite.transformers, transformers_missing_reason=suite.transformers_reason or None,
                tiny=a.tiny)
    if suite.peak is not None:
        base["torch"] = suite.peak.get("torch")  # of --ours-python; each worker's own is in its results
        base["cpu_capability"] = suite.peak.get("cpu_capability")
        if section != "peak":
            base["machine_peak"] = {k: suite.peak[k] for k in ("gflops", "bandwidth")}
    full = {"section": section, "conditions": base, **report}
    suite.reports[section] = full
    path = write_json(Path(a.out) / f"{section}.json", full)
    print(f"wrote {path}", flush=True)
    return path


# ------------------------------------------------------------------------------------------- prefill curves
def prefill_curve(suite: Suite, systems: list[System], lengths: list[int], section: str) -> list[dict]:
    """Time to first token of every system at every length (one worker per system and length)."""
    a = suite.args
    history: dict[str, list[tuple[int, float]]] = {s.name: [] for s in systems}
    skipped: dict[str, str] = {}
    rows = []
    for L in lengths:
        row: dict = {"tokens": L}
        active = []
        for s in systems:
            if s.name in skipped:
                row[s.name] = {"skipped": skipped[s.name]}
                continue
            guess = predict(history[s.name], L)
            if guess is not None and guess > a.max_run_s:
                n0, t0 = history[s.name][-1]
                skipped[s.name] = (f"skipped from {L} tokens: {t0:.0f} s at {n0} tokens predicts {guess:.0f} s, "
                                   f"more than --max-run-s {a.max_run_s:.0f} s")
                row[s.name] = {"skipped": skipped[s.name]}
                print(f"  {s.label}: {skipped[s.name]}", flush=True)
                continue
            active.append(s)
        if not active:
            rows.append(row)
            continue
        todo = list(active)
        while todo:  # a worker that dies (e.g. out of memory) fails its system; the others rerun the case
            try:
                _prefill_case(suite, todo, L, section, history, row)
                todo = []
            except WorkerDied as e:
                dead = [s for s in todo if s.name == e.name] or todo
                for s in dead:
                    skipped[s.name] = f"failed at {L} tokens (worker died; see the log in the JSON)"
                    row[s.name] = {"failed": str(e)[-3000:]}
                    print(f"  {s.label}: worker died at {L} tokens:\n{str(e)[-1500:]}", flush=True)
                todo = [s for s in todo if s not in dead]
        desc = "; ".join(f"{s.label} {_fmt_s(row[s.name].get('median_s'))} s" for s in active
                         if "median_s" in row[s.name])
        print(f"  {L:6d} tokens: {desc}", flush=True)
        rows.append(row)
    return rows


def _prefill_case(suite: Suite, active: list[System], L: int, section: str,
                  history: dict[str, list[tuple[int, float]]], row: dict) -> None:
    """One length: a worker per system, warm-ups, alternating timed runs; results into ``row``."""
    a = suite.args
    workers = {}
    try:
        for s in active:
            workers[s.name] = suite.start(s, f"{section}-{L}")

        def run(w: Worker, length: int = L) -> float:
            r = w.ask(json.dumps({"op": "prefill", "length": length}))
            w.loads.append(r["load_average"])
            return r["s"]

        # A run predicted to pass the budget is warmed up on a short prompt (then never counts as a sample).
        short = {s.name: (predict(history[s.name], L) or 0.0) >= a.budget_s for s in active}
        warm_len = {s.name: min(L, 512) if short[s.name] else L for s in active}

        def warmup(w: Worker) -> tuple[float, bool]:
            return run(w, warm_len[w.name]), warm_len[w.name] == L

        warm_info = timed_rounds([workers[s.name] for s in active], run, a.repeats, a.budget_s, warmup)
        for name in warm_info:
            warm_info[name]["warmup_tokens"] = warm_len[name]
        for s in active:
            w = workers.pop(s.name)
            final = suite.stop(w)
            med = statistics.median(w.times)
            f = flops.prefill_flops(s.kind, s.cfg, L)
            rate = f["total"] / med / 1e9
            row[s.name] = dict(w.info, **final, **warm_info[s.name], times_s=w.times, median_s=med,
                               min_s=min(w.times), load_average=w.loads, flops=f, gflops=rate,
                               peak_fraction=rate / suite.peak_gflops() if suite.peak else None)
            history[s.name].append((L, med))
    finally:
        for w in workers.values():
            w.kill()
            if w in suite.workers:
                suite.workers.remove(w)


def predict(history: list[tuple[int, float]], L: int) -> float | None:
    """Seconds one run at L tokens should take, from the runs measured so far: the last one scaled by the growth
    seen between the last two lengths (time ~ length^e, e clamped to [1, 2]; e = 1 with a single point)."""
    if not history:
        return None
    n1, t1 = history[-1]
    e = 1.0
    if len(history) > 1:
        n0, t0 = history[-2]
        if n1 > n0 and t0 > 0 and t1 > 0:
            e = min(2.0, max(1.0, math.log(t1 / t0) / math.log(n1 / n0)))
    return t1 * (L / n1) ** e


def _median(row: dict, name: str) -> float | None:
    r = row.get(name) or {}
    return r.get("median_s")


def _curve(rows: list[dict], name: str) -> dict[int, float]:
    return {r["tokens"]: r[name]["median_s"] for r in rows if (r.get(name) or {}).get("median_s")}


# ---------------------------------------------------------------------------------------------- sections
def run_peak(suite: Suite) -> dict:
    a = suite.args
    print(f"\n== peak: matmul GFLOP/s and memory bandwidth ({a.threads} threads)", flush=True)
    system = System("peak", "peak", "-", {}, {"system": "peak"})
    w = suite.start(system, "peak")
    min_s = 0.05 if a.tiny else 1.0
    rows = []
    try:
        for dtype in ("float32", "bfloat16"):
            rate = None
            for n in a.peak_sizes:
                if rate and 2 * n**3 / (rate * 1e9) > 5.0:  # e.g. bf16 without native GEMMs: a few GFLOP/s
                    print(f"  matmul {dtype:9s} n={n:5d}: skipped (one product would take "
                          f"{2 * n**3 / (rate * 1e9):.0f} s at {rate:.1f} GFLOP/s)", flush=True)
                    continue
                r = w.ask(json.dumps({"op": "matmul", "n": n, "dtype": dtype, "min_s": min_s}))
                rows.append(r)
                rate = r["gflops"]
                print(f"  matmul {dtype:9s} n={n:5d}: {r['gflops']:8.1f} GFLOP/s ({r['runs']} runs)", flush=True)
        bw = w.ask(json.dumps({"op": "bandwidth", "mib": a.bandwidth_mib, "min_s": min_s}))
        print(f"  bandwidth ({a.bandwidth_mib} MiB float32): copy {bw['copy_gbs']:.1f} GB/s (read + write), "
              f"read-only sum {bw['read_gbs']:.1f} GB/s", flush=True)
        suite.stop(w)
    finally:
        w.kill()
    gflops = {d: max(r["gflops"] for r in rows if r["dtype"] == d) for d in ("float32", "bfloat16")}
    result = {"matmul": rows, "gflops": gflops, "bandwidth": bw, "cpu_capability": w.info.get("cpu_capability"),
              "torch": w.info.get("torch")}
    def cell(n: int, d: str) -> str:
        r = next((r for r in rows if r["n"] == n and r["dtype"] == d), None)
        return f"{r['gflops']:.1f}" if r else "skipped"

    print(markdown_table(["n", *[f"{d} GFLOP/s" for d in gflops]], [[n, *[cell(n, d) for d in gflops]]
                                                                   for n in a.peak_sizes]))
    print(f"read-only bandwidth {bw['read_gbs']:.1f} GB/s, copy {bw['copy_gbs']:.1f} GB/s (read + write counted)")
    if "peak" in a.sections:
        from plot import line_plot

        series = {d: [(r["n"], r["gflops"]) for r in rows if r["dtype"] == d] for d in gflops}
        line_plot(Path(a.out) / "peak.png", "torch.matmul n x n x n", series, xlabel="n", ylabel="GFLOP/s",
                  notes=notes_for_plot(suite) + [f"read {bw['read_gbs']:.1f} GB/s", f"copy {bw['copy_gbs']:.1f} GB/s"])
        suite.peak = result
        save_report(suite, "peak", {"results": result})
    return result


def run_ttft(suite: Suite) -> None:
    a = suite.args
    lengths = _lengths(a)
    cfg = dict(TINY_53M) if a.tiny else _zamba2_53m()
    print(f"\n== ttft: time to first token, Zamba2 {flops.zamba2_params(cfg)['total'] / 1e6:.1f}M "
          f"({a.dtype}, {a.threads} threads), lengths {lengths}", flush=True)
    suite.ensure_peak()
    folder = a.checkpoint or suite.tmp / "zamba2-ttft"
    if not (Path(folder) / "config.json").exists():
        import torch

        from prefill import build_checkpoint

        threads = torch.get_num_threads()
        torch.set_num_threads(a.threads)
        try:
            n = build_checkpoint(Path(folder), cfg)
        finally:
            torch.set_num_threads(threads)
        print(f"  built checkpoint {folder} ({n:,} parameters)", flush=True)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    llama = flops.matched_llama(cfg)
    systems = [System("ours", "zamba2vl", "zamba2", cfg, {"system": "ours", "checkpoint": str(folder)})] \
        if "ours" in a.systems else []
    for name in suite.baseline_systems(["transformers", "llama"]):
        if name == "transformers":
            systems.append(System(name, "transformers Zamba2", "zamba2", cfg,
                                  {"system": "transformers", "checkpoint": str(folder)}))
        else:
            systems.append(System(name, "Llama (matched)", "transformer", llama,
                                  {"system": "llama", "config": llama}))
    rows = prefill_curve(suite, systems, lengths, "ttft")

    labels = {s.name: s.label for s in systems}
    header = ["tokens"] + [f"{labels[s.name]} (s)" for s in systems]
    if "transformers" in labels:
        header.append("transformers / ours")
    if "llama" in labels:
        header.append("llama / ours")
    header += [f"{s.name} peak RSS (MiB)" for s in systems]
    header += ["ours GFLOP/s", "ours % of peak"] if "ours" in labels else []
    table = []
    for r in rows:
        cells = [r["tokens"]] + [_fmt_s(_median(r, s.name)) for s in systems]
        o = _median(r, "ours")
        for other in ("transformers", "llama"):
            if other in labels:
                t = _median(r, other)
                cells.append(f"{t / o:.2f}x" if o and t else "-")
        cells += [mib(r[s.name]["peak_rss_bytes"]) if "peak_rss_bytes" in r.get(s.name, {}) else "-" for s in systems]
        if "ours" in labels:
            ours = r.get("ours", {})
            cells += [f"{ours['gflops']:.1f}" if "gflops" in ours else "-",
                      f"{100 * ours['peak_fraction']:.0f}%" if ours.get("peak_fraction") else "-"]
        table.append(cells)
    print()
    print(systems_line(systems, suite))
    print(markdown_table(header, table))
    models = {"Zamba2": flops.zamba2_params(cfg), "Llama (matched)": flops.transformer_params(llama)}
    print("Parameters: " + "; ".join(f"{k}: {v['total'] / 1e6:.1f}M stored, {v['non_embedding'] / 1e6:.1f}M "
                                     f"non-embedding, {v['matmul_per_token'] / 1e6:.1f}M matmul weights per token"
                                     for k, v in models.items())
          + " (a shared block counts at each of its visits)")
    cross = crossover(_curve(rows, "ours"), _curve(rows, "llama")) if "llama" in labels else None
    if cross:
        print(f"zamba2vl against the matched Llama: {cross['summary']}")

    checks = []
    t_o, t_h = _median_at(rows, "ours", 8192), _median_at(rows, "transformers", 8192)
    checks.append(check("(1) ours >= 5x faster than transformers Zamba2 at 8k", None if not (t_o and t_h) else
                        t_h / t_o >= 5, f"{t_h / t_o:.2f}x" if t_o and t_h else "needs ours and transformers at 8192"))
    t_o4, t_l4 = _median_at(rows, "ours", 4096), _median_at(rows, "llama", 4096)
    t_o32, t_l32 = _median_at(rows, "ours", 32768), _median_at(rows, "llama", 32768)
    checks.append(check("(2a) TTFT <= matched Llama at 4k", None if not (t_o4 and t_l4) else t_o4 <= t_l4,
                        f"ours {t_o4:.2f} s, llama {t_l4:.2f} s" if t_o4 and t_l4 else "needs both at 4096"))
    checks.append(check("(2b) >= 2x faster than matched Llama at 32k", None if not (t_o32 and t_l32) else
                        t_l32 / t_o32 >= 2, f"{t_l32 / t_o32:.2f}x" if t_o32 and t_l32 else
                        "needs both at 32768 (--long)"))
    if a.tiny:
        checks = []
    print_checks(checks)
    from plot import line_plot

    series = {labels[s.name]: sorted(_curve(rows, s.name).items()) for s in systems}
    line_plot(Path(a.out) / "ttft.png", f"Time to first token, Zamba2 {models['Zamba2']['total'] / 1e6:.0f}M and "
              "a matched Llama", series, xlabel="prompt tokens", ylabel="seconds",
              notes=notes_for_plot(suite) + ([f"crossover: {cross['summary']}"] if cross else []))
    save_report(suite, "ttft", {
        "config": cfg, "llama_config": llama, "parameters": models,
        "systems": {s.name: s.label for s in systems}, "lengths": lengths, "flop_formula": flops.FORMULA,
        "crossover_vs_llama": cross, "checks": checks, "results": rows})


def _median_at(rows: list[dict], name: str, L: int) -> float | None:
    for r in rows:
        if r["tokens"] == L:
            return _median(r, name)
    return None


def shape_systems(suite: Suite) -> tuple[list[System], dict, dict]:
    a = suite.args
    ours_cfg = dict(TINY_12B) if a.tiny else zamba2_12b()
    qwen = dict(TINY_QWEN3) if a.tiny else dict(flops.QWEN3_1_7B)
    systems = []
    if "ours" in a.systems:
        systems.append(System("ours", "zamba2vl 1.2B", "zamba2", ours_cfg,
                              {"system": "ours", "config": ours_cfg}))
    for name in suite.baseline_systems(["qwen3"]):
        systems.append(System(name, "Qwen3-1.7B shape", "transformer",
                              qwen, {"system": "qwen3", "config": qwen}))
    return systems, ours_cfg, qwen


def run_shapes(suite: Suite) -> None:
    a = suite.args
    lengths = _lengths(a)
    print(f"\n== shapes: Zamba2-VL-1.2B LM shape vs Qwen3-1.7B shape, time to first token ({a.dtype}, "
          f"{a.threads} threads), lengths {lengths}", flush=True)
    suite.ensure_peak()
    systems, ours_cfg, qwen = shape_systems(suite)
    rows = prefill_curve(suite, systems, lengths, "shapes")
    peak = suite.peak_gflops()
    table = []
    checks = []
    for r in rows:
        L = r["tokens"]
        fo = flops.zamba2_prefill_flops(ours_cfg, L)["total"]
        fq = flops.transformer_prefill_flops(qwen, L)["total"]
        to, tq = _median(r, "ours"), _median(r, "qwen3")
        r["flop_ratio"] = fo / fq
        r["time_ratio"] = to / tq if to and tq else None
        r["efficiency_ok"] = (r["time_ratio"] <= 1.1 * r["flop_ratio"]) if r["time_ratio"] else None
        table.append([L, _fmt_s(to), f"{fo / 1e12:.2f}", f"{100 * fo / to / 1e9 / peak:.0f}%" if to else "-",
                      _fmt_s(tq), f"{fq / 1e12:.2f}", f"{100 * fq / tq / 1e9 / peak:.0f}%" if tq else "-",
                      f"{r['time_ratio']:.2f}" if r["time_ratio"] else "-", f"{r['flop_ratio']:.2f}",
                      {True: "yes", False: "no", None: "-"}[r["efficiency_ok"]]])
    print()
    print(systems_line(systems, suite))
    print(markdown_table(["tokens", "ours (s)", "ours TFLOP", "ours % peak", "qwen3 (s)", "qwen3 TFLOP",
                          "qwen3 % peak", "time ratio ours/qwen3", "FLOP ratio ours/qwen3", "ratio <= 1.1x FLOPs"],
                         table))
    print(f"% peak: model FLOPs / time / {peak:.0f} GFLOP/s (the fastest torch.matmul for {a.dtype} weights measured "
          "in this run). FLOPs: " + flops.FORMULA)
    po, pq = flops.zamba2_params(ours_cfg), flops.transformer_params(qwen)
    print(f"Parameters: ours {po['total'] / 1e6:.0f}M stored ({po['matmul_per_token'] / 1e6:.0f}M matmul weights per "
          f"token: the shared block counted at each of its visits); qwen3 {pq['total'] / 1e6:.0f}M stored "
          f"({pq['matmul_per_token'] / 1e6:.0f}M per token)")
    measured = [r for r in rows if r.get("efficiency_ok") is not None]
    longest = max((r["tokens"] for r in measured), default=0)
    checks.append(check("(3) curve to >= 16k, time ratio <= 1.1 x FLOP ratio at every length",
                        None if longest < 16384 else all(r["efficiency_ok"] for r in measured),
                        f"measured up to {longest} tokens; " + ", ".join(
                            f"{r['tokens']}: {r['time_ratio']:.2f} vs {1.1 * r['flop_ratio']:.2f}" for r in measured)
                        if measured else "needs ours and qwen3 (16k+ needs --long)"))
    r8 = next((r for r in rows if r["tokens"] == 8192 and _median(r, "ours")), None)
    frac = r8["ours"]["gflops"] / peak if r8 else None
    checks.append(check("(4) ours prefill at 8k >= 40% of the matmul peak", None if frac is None else frac >= 0.4,
                        f"{100 * frac:.0f}% of {peak:.0f} GFLOP/s" if frac is not None else "needs ours at 8192"))
    if a.tiny:
        checks = []
    print_checks(checks)
    from plot import line_plot

    labels = {s.name: s.label for s in systems}
    series = {labels[s.name]: sorted(_curve(rows, s.name).items()) for s in systems}
    line_plot(Path(a.out) / "shapes.png", "Time to first token: Zamba2-VL-1.2B LM vs Qwen3-1.7B shape", series,
              xlabel="prompt tokens", ylabel="seconds", notes=notes_for_plot(suite))
    save_report(suite, "shapes", {"configs": {"ours": ours_cfg, "qwen3": qwen},
                                  "parameters": {"ours": po, "qwen3": pq}, "systems": labels, "lengths": lengths,
                                  "flop_formula": flops.FORMULA, "peak_gflops_used": peak, "checks": checks,
                                  "results": rows})


def run_decode(suite: Suite) -> None:
    a = suite.args
    contexts = sorted(set(a.contexts or ([64, 256] if a.tiny else CONTEXTS)))
    print(f"\n== decode: ms per token against context ({a.dtype}, {a.threads} threads, cache fill {a.decode_fill}), "
          f"contexts {contexts}", flush=True)
    bw = suite.ensure_peak()["bandwidth"]["read_gbs"]
    systems, ours_cfg, qwen = shape_systems(suite)
    rows = []
    workers = {}
    try:
        for s in systems:
            workers[s.name] = suite.start(s, "decode")
        last_setup: dict[str, tuple[int, float]] = {}
        for ctx in contexts:
            row: dict = {"context": ctx}
            for s in systems:
                w = workers[s.name]
                if a.decode_fill == "prefill" and s.name in last_setup:
                    n0, t0 = last_setup[s.name]
                    if t0 * ctx / n0 > a.max_run_s:
                        row[s.name] = {"skipped": f"prefill of {ctx} tokens predicted over --max-run-s"}
                        continue
                setup = w.ask(json.dumps({"op": "decode_setup", "context": ctx, "fill": a.decode_fill,
                                          "extra": a.decode_steps + 8}))
                last_setup[s.name] = (ctx, setup["setup_s"])
                step = lambda w=w: w.ask(json.dumps({"op": "decode_step"}))["s"]  # noqa: E731
                warm = [step(), step()]
                times: list[float] = []
                while len(times) < a.decode_steps and (not times or sum(times) + times[-1] <= a.budget_s):
                    times.append(step())
                freed = w.ask(json.dumps({"op": "decode_free"}))
                med = statistics.median(times)
                nbytes = flops.decode_bytes(s.kind, s.cfg, ctx, a.dtype)
                cache = flops.cache_bytes(s.kind, s.cfg, ctx, a.dtype)
                floor = nbytes["total"] / (bw * GB)
                row[s.name] = dict(ms=1000 * med, times_ms=[1000 * t for t in times],
                                   warmup_ms=[1000 * t for t in warm], setup=setup, rss_after_free=freed["rss_bytes"],
                                   bytes_read=nbytes, cache_bytes_formula=cache,
                                   floor_ms=1000 * floor, floor_ratio=med / floor,
                                   flops=flops.decode_flops(s.kind, s.cfg, ctx))
                cb = setup["cache_bytes"]
                print(f"  context {ctx:6d} {s.label}: {1000 * med:.1f} ms/token (floor {1000 * floor:.1f} ms, "
                      f"{med / floor:.2f}x); cache " + ", ".join(f"{k} {_bytes(v)}" for k, v in cb.items() if v),
                      flush=True)
            rows.append(row)
        infos = {}
        for s in systems:
            w = workers.pop(s.name)
            infos[s.name] = dict(w.info, **suite.stop(w))
    finally:
        for w in workers.values():
            w.kill()
            if w in suite.workers:
                suite.workers.remove(w)
    table = []
    for r in rows:
        cells = [r["context"]]
        for name in ("ours", "qwen3"):
            x = r.get(name) or {}
            cells += [f"{x['ms']:.1f}" if "ms" in x else "-", f"{x['floor_ms']:.1f}" if "ms" in x else "-",
                      f"{x['floor_ratio']:.2f}x" if "ms" in x else "-"]
        co = flops.zamba2_cache_bytes(ours_cfg, r["context"], a.dtype)
        cq = flops.transformer_cache_bytes(qwen, r["context"], a.dtype)
        cells += [f"{_bytes(co['total'])} (KV {_bytes(co['kv'])})", _bytes(cq["total"])]
        table.append(cells)
    print()
    print(systems_line(systems, suite))
    print(markdown_table(["context", "ours ms/token", "ours floor ms", "ours / floor", "qwen3 ms/token",
                          "qwen3 floor ms", "qwen3 / floor", "ours cache", "qwen3 KV cache"], table))
    print(f"floor = bytes read per step (weights per invocation + KV cache + SSM/conv state) / {bw:.1f} GB/s "
          "(read-only bandwidth measured in this run)")
    checks = []
    for ctx in (1024, 32768):
        r = next((r for r in rows if r["context"] == ctx and "ms" in (r.get("ours") or {})), None)
        checks.append(check(f"(5) ours decode at {ctx} context within 1.5x of the memory-traffic floor",
                            None if r is None else r["ours"]["floor_ratio"] <= 1.5,
                            f"{r['ours']['ms']:.1f} ms vs floor {r['ours']['floor_ms']:.1f} ms "
                            f"({r['ours']['floor_ratio']:.2f}x)" if r else f"needs ours at {ctx}"))
    if a.tiny:
        checks = []
    print_checks(checks)
    from plot import line_plot

    labels = {s.name: s.label for s in systems}
    series = {}
    for s in systems:
        series[labels[s.name]] = [(r["context"], r[s.name]["ms"]) for r in rows if "ms" in (r.get(s.name) or {})]
        series[f"{labels[s.name]} floor"] = [(r["context"], r[s.name]["floor_ms"]) for r in rows
                                     if "ms" in (r.get(s.name) or {})]
    line_plot(Path(a.out) / "decode.png", "Decode: ms per token against context", series, xlabel="context tokens",
              ylabel="ms / token", dashed=[k for k in series if k.endswith(" floor")], notes=notes_for_plot(suite))
    save_report(suite, "decode", {"configs": {"ours": ours_cfg, "qwen3": qwen}, "systems": labels, "workers": infos,
                                  "contexts": contexts, "fill": a.decode_fill, "bandwidth_read_gbs": bw,
                                  "checks": checks, "results": rows})


def _vl_system(preset: str) -> System:
    cfgs = vl_text_config(preset)
    return System("ours", f"zamba2vl Zamba2-VL-{preset}", "zamba2", cfgs["text"],
                  {"system": "ours-vl", "vl_preset": preset, "vision": cfgs["vision"]})


def run_image(suite: Suite) -> None:
    a = suite.args
    preset = "tiny" if a.tiny else "1.2b"
    sizes = a.image_sizes or ([56, 112] if a.tiny else [448, 896])
    print(f"\n== image: vision tower + prefill of an image prompt at the {preset} shape ({a.dtype}, {a.threads} "
          f"threads), image sides {sizes}", flush=True)
    suite.ensure_peak()
    peak = suite.peak_gflops()
    s = _vl_system(preset)
    vcfg = s.spec["vision"]
    rows = []
    w = suite.start(s, "image")
    try:
        for side in sizes:
            def run(w: Worker, side: int = side) -> float:
                r = w.ask(json.dumps({"op": "image", "side": side, "text_tokens": a.image_text_tokens}))
                w.runs.append(r)
                return r["s"]

            w.times, w.runs = [], []
            warm = timed_rounds([w], run, a.repeats, a.budget_s)[w.name]
            runs = w.runs[-len(w.times):]
            r0 = runs[0]
            g = r0["grid"]
            fv = flops.vision_flops(vcfg, g[0], g[1])
            fl = flops.zamba2_prefill_flops(s.cfg, r0["tokens"])
            med = {k: statistics.median(x[k] for x in runs) for k in ("vision_s", "prefill_s", "s")}
            row = dict(side=side, patches=r0["patches"], image_tokens=r0["image_tokens"], tokens=r0["tokens"],
                       text_tokens=r0["text_tokens"], median_vision_s=med["vision_s"],
                       median_prefill_s=med["prefill_s"], median_s=med["s"], runs=runs, **warm,
                       flops_vision=fv, flops_prefill=fl, gflops=(fv["total"] + fl["total"]) / med["s"] / 1e9)
            row["peak_fraction"] = row["gflops"] / peak
            rows.append(row)
            print(f"  {side}x{side}: {r0['tokens']} tokens ({r0['image_tokens']} image): vision "
                  f"{_fmt_s(med['vision_s'])} s + prefill {_fmt_s(med['prefill_s'])} s = {_fmt_s(med['s'])} s",
                  flush=True)
        info = dict(w.info, **suite.stop(w))
    finally:
        w.kill()
    print()
    print(markdown_table(["image", "patches", "prompt tokens (image)", "vision (s)", "prefill (s)", "total (s)",
                          "TFLOP (vision + LM)", "% of peak"],
                         [[f"{r['side']}x{r['side']}", r["patches"], f"{r['tokens']} ({r['image_tokens']})",
                           _fmt_s(r["median_vision_s"]), _fmt_s(r["median_prefill_s"]), _fmt_s(r["median_s"]),
                           f"{r['flops_vision']['total'] / 1e12:.2f} + {r['flops_prefill']['total'] / 1e12:.2f}",
                           f"{100 * r['peak_fraction']:.0f}%"] for r in rows]))
    print(f"peak RSS {mib(info['peak_rss_bytes'])} MiB; weights {mib(info['parameter_bytes'])} MiB")
    from plot import line_plot

    series = {"total": [(r["tokens"], r["median_s"]) for r in rows],
              "vision tower": [(r["tokens"], r["median_vision_s"]) for r in rows],
              "LM prefill": [(r["tokens"], r["median_prefill_s"]) for r in rows]}
    line_plot(Path(a.out) / "image.png", f"Image prompt end to end, Zamba2-VL-{preset}", series,
              xlabel="prompt tokens", ylabel="seconds", notes=notes_for_plot(suite))
    save_report(suite, "image", {"preset": preset, "vision_config": vcfg, "text_config": s.cfg, "worker": info,
                                 "peak_gflops_used": peak, "results": rows})


def memory_image_side(total: int, patch: int = 14, merge: int = 2) -> int:
    """The side of a square image filling about 3/4 of a ``total``-token prompt (its merged grid even)."""
    g = max(merge, int(math.sqrt(0.75 * total * merge * merge)) // merge * merge)
    return g * patch


def run_memory(suite: Suite) -> None:
    a = suite.args
    preset = "tiny" if a.tiny else a.memory_size
    totals = sorted(set(a.memory_tokens or ([128] if a.tiny else [4096])))
    print(f"\n== memory: peak RSS of multimodal prompts of {totals} tokens at the {preset} shape ({a.dtype}, "
          f"{a.threads} threads; one fresh worker per prompt)", flush=True)
    s = _vl_system(preset)
    rows = []
    for total in totals:
        side = a.memory_image_side or memory_image_side(total)
        w = suite.start(s, f"memory-{total}")
        try:
            r = w.ask(json.dumps({"op": "image", "side": side, "total_tokens": total}))
            info = dict(w.info, **suite.stop(w))
        finally:
            w.kill()
        weights = info["parameter_bytes"]
        limit = weights + 3 * GB
        rows.append(dict(r, side=side, parameter_bytes=weights, rss_loaded_bytes=info["rss_loaded_bytes"],
                         peak_rss_bytes=info["peak_rss_bytes"], limit_bytes=limit,
                         below_limit=info["peak_rss_bytes"] < limit, worker=info))
        print(f"  {total} tokens ({side}x{side} image, {r['image_tokens']} image tokens): peak RSS "
              f"{info['peak_rss_bytes'] / GB:.2f} GB, weights {weights / GB:.2f} GB", flush=True)
    print()
    print(markdown_table(["prompt tokens (image)", "image", "weights (GB)", "RSS loaded (GB)", "peak RSS (GB)",
                          "peak - weights (GB)", "limit weights + 3 GB", "vision (s)", "prefill (s)"],
                         [[f"{r['tokens']} ({r['image_tokens']})", f"{r['side']}x{r['side']}",
                           f"{r['parameter_bytes'] / GB:.2f}", f"{r['rss_loaded_bytes'] / GB:.2f}",
                           f"{r['peak_rss_bytes'] / GB:.2f}", f"{(r['peak_rss_bytes'] - r['parameter_bytes']) / GB:.2f}",
                           f"{r['limit_bytes'] / GB:.2f}", _fmt_s(r["vision_s"]), _fmt_s(r["prefill_s"])]
                          for r in rows]))
    print("GB = 1e9 bytes; weights = the parameters' bytes; RSS includes the Python interpreter and torch")
    checks = []
    r4 = next((r for r in rows if r["tokens"] == 4096), None)
    if not a.tiny:
        checks.append(check(f"(6) 4096-token multimodal prompt at {preset}: peak RSS < weights + 3 GB",
                            None if r4 is None else r4["below_limit"],
                            f"{r4['peak_rss_bytes'] / GB:.2f} GB vs {r4['limit_bytes'] / GB:.2f} GB" if r4
                            else "needs --memory-tokens 4096"))
    print_checks(checks)
    from plot import line_plot

    series = {"peak RSS": [(r["tokens"], r["peak_rss_bytes"] / GB) for r in rows],
              "weights": [(r["tokens"], r["parameter_bytes"] / GB) for r in rows],
              "weights + 3 GB": [(r["tokens"], r["limit_bytes"] / GB) for r in rows]}
    line_plot(Path(a.out) / "memory.png", f"Peak RSS, multimodal prompt, Zamba2-VL-{preset}", series,
              xlabel="prompt tokens", ylabel="GB", logy=False, dashed=["weights + 3 GB"],
              notes=notes_for_plot(suite))
    save_report(suite, "memory", {"preset": preset, "text_config": s.cfg, "vision_config": s.spec["vision"],
                                  "checks": checks, "results": rows})


RUNNERS = {"peak": lambda suite: run_peak(suite), "ttft": run_ttft, "shapes": run_shapes, "decode": run_decode,
           "image": run_image, "memory": run_memory}


# --------------------------------------------------------------------------------------------------- CLI
def _ints(s: str) -> list[int]:
    out = []
    for x in s.split(","):
        x = x.strip().lower()
        if x:
            out.append(int(float(x[:-1]) * 1024) if x.endswith("k") else int(x))
    return out


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", metavar="SECTION", default=["all"],
                   help=f"one or more of {', '.join(SECTIONS)}, or all (default)")
    p.add_argument("--lengths", type=_ints, default=None,
                   help="prompt lengths of ttft and shapes, comma-separated, 1k = 1024 (default 1k,2k,4k,8k)")
    p.add_argument("--long", action="store_true", help="add 16k and 32k to the prompt lengths")
    p.add_argument("--contexts", type=_ints, default=None, help="decode context lengths (default 1k,4k,16k,32k)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS) of every worker")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and activations")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up; medians reported")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="per system and case, no further timed run once the runs would pass this (default 60)")
    p.add_argument("--max-run-s", type=float, default=600.0,
                   help="skip a length whose predicted single run exceeds this many seconds (default 600)")
    p.add_argument("--systems", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], default=list(SYSTEMS),
                   help=f"systems to run, comma-separated from {','.join(SYSTEMS)} (default all)")
    p.add_argument("--out", default="bench-out", help="folder for <section>.json and <section>.png (default bench-out)")
    p.add_argument("--decode-steps", type=int, default=8, help="timed decode steps per context (after 2 warm-up)")
    p.add_argument("--decode-fill", choices=["synthetic", "prefill"], default="synthetic",
                   help="decode cache contents: random state of the right size, or a real prefill")
    p.add_argument("--image-sizes", type=_ints, default=None, help="image sides in pixels (default 448,896)")
    p.add_argument("--image-text-tokens", type=int, default=64, help="text tokens after the image (default 64)")
    p.add_argument("--memory-size", default="2.7b", choices=["1.2b", "2.7b", "7b"], help="memory section shape")
    p.add_argument("--memory-tokens", type=_ints, default=None,
                   help="memory section prompt lengths, each in a fresh worker (default 4096)")
    p.add_argument("--memory-image-side", type=int, default=None,
                   help="image side of the memory prompts in pixels (default: about 3/4 of each prompt is image; "
                        "1540 at 4096 tokens = 3025 image tokens)")
    p.add_argument("--peak-sizes", type=_ints, default=None, help="matmul sizes n of the peak (default 1024,2048,4096)")
    p.add_argument("--bandwidth-mib", type=int, default=None, help="buffer of the bandwidth test (default 1024)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="ttft: checkpoint folder of the 53M model, built there if missing (default: temporary)")
    p.add_argument("--ours-python", default=str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists()
                   else sys.executable, help="python that runs zamba2vl (default .venv/bin/python)")
    p.add_argument("--transformers-python", default=str(REPO / ".bench-venv/bin/python"),
                   help="python with transformers 5.x and torch for the baselines (default .bench-venv/bin/python)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes everywhere (a smoke test of the suite in seconds; the numbers mean nothing)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    chosen = []
    for s in args.sections:
        for x in s.split(","):
            if x == "all":
                chosen += list(SECTIONS)
            elif x in SECTIONS:
                chosen.append(x)
            elif x:
                parser.error(f"unknown section {x!r}; choose from {', '.join(SECTIONS)} or all")
    args.sections = [s for s in SECTIONS if s in chosen]
    bad = set(args.systems) - set(SYSTEMS)
    if bad:
        parser.error(f"unknown system(s) {sorted(bad)}; choose from {','.join(SYSTEMS)}")
    args.peak_sizes = args.peak_sizes or ([64, 128] if args.tiny else [1024, 2048, 4096])
    args.bandwidth_mib = args.bandwidth_mib or (8 if args.tiny else 1024)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zamba2vl-bench-") as tmpdir:
        suite = Suite(args, Path(tmpdir), argv=([Path(sys.executable).name, str(Path(__file__).relative_to(REPO))]
                                                   if prog is None else prog.split()) + argv)
        c = conditions(args.threads, args.dtype, suite.argv)
        print(f"cpu: {c['cpu']} ({c['logical_cpus']} logical; {' '.join(c['cpu_flags'])}); threads {args.threads}; "
              f"{args.dtype}; load average {c['load_average_at_start']}; sections {', '.join(args.sections)}",
              flush=True)
        try:
            for section in args.sections:
                RUNNERS[section](suite)
        except WorkerDied as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            suite.kill_all()
            if args.checkpoint is None:
                shutil.rmtree(Path(tmpdir) / "zamba2-ttft", ignore_errors=True)
    if len(suite.reports) > 1:
        write_json(Path(args.out) / "suite.json", {"sections": list(suite.reports), "reports": suite.reports})
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; results in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
