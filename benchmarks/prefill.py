"""Prefill (time to first token) of a 53M-parameter Zamba2: zamba2vl against transformers 5.x on the same weights.

    .venv/bin/python benchmarks/prefill.py                      # 2k and 8k tokens, float32 and bfloat16, 2 threads
    .venv/bin/python benchmarks/prefill.py --lengths 8192 --dtypes bfloat16 --repeats 5

The driver builds the model (``CONFIG_53M`` below, random weights from a fixed seed) and saves it once as a
Hub-format text-only checkpoint with ``Zamba2LM.save_pretrained``. For every (dtype, length) case it starts one
worker process per system, each of which loads that checkpoint: ours under this project's venv, transformers under
a venv of its own holding the newest 5.x release (``.bench-venv``). The driver then has the workers run their
prefills in turn (one warm-up each, then timed runs alternating between the systems, so that both see the same
machine load) and reports the median. A run is one forward over the prompt in ``inference_mode`` returning only
the last position's logits (batch 1). One process per system and case keeps each peak RSS clean.

In float32 at ``--check-length`` tokens the driver also compares the two systems' last-position logits, so the
timings are known to be of the same computation. Both systems clamp dt >= time_step_min (transformers' torch path
always does; ours is told to with ``dt_clamp_to_time_step_min=True``).

Only the standard library is imported at module level: the transformers worker runs in a venv without zamba2vl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import (REPO, Worker, cpu_flags, cpu_model, mib, protocol_channel, rss_now_bytes, rss_peak_bytes,
                     timed_rounds, worker_env)

SEED = 1234

# The 53M-parameter configuration of environment.md: hidden 512, 12 layers, 2 shared blocks, d_state 64.
# Everything else follows the released Zamba2 models: Mamba head dim 64 (16 heads), one B/C group, expand 2,
# a hybrid (shared-block) layer every third layer alternating the two blocks (ABAB, as in Zamba2-2.7B),
# 8 attention heads of dim 128 on the concatenated 1024-wide input, MLP LoRA adapters of rank 128, RoPE.
CONFIG_53M = dict(
    model_type="zamba2",
    vocab_size=32000,
    hidden_size=512,
    num_hidden_layers=12,
    layers_block_type=["mamba", "mamba", "hybrid"] * 4,
    num_mem_blocks=2,
    mamba_d_state=64,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_ngroups=1,
    n_mamba_heads=16,
    num_attention_heads=8,
    num_key_value_heads=8,
    intermediate_size=2048,
    hidden_act="gelu",
    use_shared_attention_adapter=False,
    adapter_rank=128,
    use_mem_rope=True,
    rope_theta=10000.0,
    max_position_embeddings=16384,
    chunk_size=256,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    add_bias_linear=False,
    use_conv_bias=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
SYSTEMS = ("ours", "transformers")


# ---------------------------------------------------------------------------------------------------- helpers
def prompt_ids(length: int, vocab: int):
    import torch

    g = torch.Generator().manual_seed(SEED + length)
    return torch.randint(3, vocab, (1, length), generator=g)


# ----------------------------------------------------------------------------------------------- checkpoint
def build_checkpoint(folder: Path, config_dict: dict | None = None) -> int:
    """Random model (``CONFIG_53M`` by default; Zamba2-style init, fixed seed) saved as a Hub checkpoint; returns its
    parameter count."""
    import torch

    from zamba2vl.config import Zamba2TextConfig
    from zamba2vl.text.model import Zamba2LM

    config = Zamba2TextConfig.from_dict(dict(config_dict or CONFIG_53M))
    torch.manual_seed(SEED)
    model = Zamba2LM(config)
    g = torch.Generator().manual_seed(SEED)
    n_heads = config.n_mamba_heads
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):  # A in [-16, -1], as Mamba2 initialises it
                p.copy_(torch.log(1 + 15 * torch.rand(n_heads, generator=g)))
            elif name.endswith("dt_bias"):  # softplus(dt_bias) log-uniform in [time_step_min, time_step_max]
                lo, hi = torch.log(torch.tensor(config.time_step_min)), torch.log(torch.tensor(config.time_step_max))
                dt = torch.exp(lo + (hi - lo) * torch.rand(n_heads, generator=g)).clamp(min=config.time_step_floor)
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(".D") or "norm" in name:
                p.fill_(1.0)
            elif "conv1d" in name:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / config.mamba_d_conv**0.5)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------- worker
def run_worker(args) -> None:
    """Load one system, then answer the driver's commands on stdin, one JSON line each on stdout.

    ``run``: one timed prefill; ``logits PATH``: save the last run's last-position logits; ``quit``: final stats.
    """
    proto = protocol_channel()  # anything libraries print goes to stderr instead
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    if args.worker == "ours":
        import zamba2vl
        from zamba2vl.text.model import Zamba2LM

        # transformers' torch path clamps dt >= time_step_min; ours does when asked, so both compute the same thing.
        model = Zamba2LM.from_pretrained(args.checkpoint, dtype=dtype, dt_clamp_to_time_step_min=True)
        version = getattr(zamba2vl, "__version__", "dev")
    else:
        import transformers
        from transformers import Zamba2ForCausalLM

        try:
            model = Zamba2ForCausalLM.from_pretrained(args.checkpoint, dtype=dtype)
        except TypeError:  # transformers < 4.56 only knows torch_dtype
            model = Zamba2ForCausalLM.from_pretrained(args.checkpoint, torch_dtype=dtype)
        model.eval()
        version = transformers.__version__
    load_s = time.perf_counter() - t0
    ids = prompt_ids(args.length, CONFIG_53M["vocab_size"])

    def reply(**kw):
        proto.write(json.dumps(kw) + "\n")
        proto.flush()

    rss_loaded = rss_now_bytes()
    reply(version=version, torch=torch.__version__, threads=torch.get_num_threads(), load_s=load_s,
          parameters=sum(p.numel() for p in model.parameters()), rss_loaded_bytes=rss_loaded,
          attn_implementation=getattr(model.config, "_attn_implementation", None))
    logits = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "run":
            load = os.getloadavg()[0]
            with torch.inference_mode():
                t = time.perf_counter()
                # time to first token: one forward over the prompt, logits of the last position only
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
                s = time.perf_counter() - t
            assert logits.shape == (1, 1, CONFIG_53M["vocab_size"]), logits.shape
            reply(s=s, load_average=load)
        elif cmd == "logits":
            torch.save(logits[0, -1].float().clone(), arg)
            reply(saved=arg)
        elif cmd == "quit":
            peak = rss_peak_bytes()
            reply(peak_rss_bytes=peak, prefill_rss_increase_bytes=max(0, peak - rss_loaded))
            return


# --------------------------------------------------------------------------------------------------- driver
def start_worker(python: str, system: str, dtype: str, length: int, args, log: Path) -> Worker:
    """A worker process for one system and case (see harness.Worker), driven line by line."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", system, "--checkpoint", str(args.checkpoint),
           "--dtypes", dtype, "--lengths", str(length), "--threads", str(args.threads)]
    return Worker(cmd, system, log, worker_env(args.threads, with_src=system == "ours"))


def run_prefill(w: Worker) -> float:
    r = w.ask("run")
    w.loads.append(r["load_average"])
    return r["s"]


def run_case(dtype: str, length: int, args, pythons: dict, tmp: Path, check: bool) -> dict:
    workers = [start_worker(pythons[s], s, dtype, length, args, tmp / f"{s}-{dtype}-{length}.log")
               for s in args.systems]
    # One warm-up each, then timed runs alternating between the systems within the budget (harness.timed_rounds).
    warm = timed_rounds(workers, run_prefill, args.repeats, args.budget_s)
    row: dict = {"tokens": length, "dtype": dtype}
    if check:
        paths = {w.name: tmp / f"{w.name}-{dtype}-{length}.pt" for w in workers}
        for w in workers:
            w.ask(f"logits {paths[w.name]}")
        row["check"] = compare_logits(paths["ours"], paths["transformers"])
    for w in workers:
        final = w.finish()
        row[w.name] = dict(w.info, **final, dtype=dtype, tokens=length, times_s=w.times,
                           median_s=statistics.median(w.times), min_s=min(w.times), **warm[w.name],
                           load_average=w.loads)
    return row


def compare_logits(ours_path: Path, hf_path: Path) -> dict:
    import torch

    a, b = torch.load(ours_path), torch.load(hf_path)
    return {"max_abs_diff": (a - b).abs().max().item(), "max_abs_logit": b.abs().max().item(),
            "same_argmax": bool(a.argmax() == b.argmax())}


def describe(system: str, r: dict) -> str:
    runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
    note = " = the warm-up" if r["warmup_is_sample"] else f" after a {r['warmup_s']:.2f} s warm-up"
    loads = "/".join(f"{x:.1f}" for x in r["load_average"]) or "-"
    return (f"  {system:12s} {r['dtype']:8s} {r['tokens']:6d} tokens: median {r['median_s']:.3f} s "
            f"(runs {runs}{note}); "
            f"peak RSS {mib(r['peak_rss_bytes'])} MiB (+{mib(r['prefill_rss_increase_bytes'])} MiB over the loaded "
            f"model); load average {loads}")


def print_table(rows, args) -> None:
    print()
    print(f"Prefill, batch 1, {args.threads} threads, median of up to {args.repeats} runs after 1 warm-up "
          f"(fewer past {args.budget_s:.0f} s per case); peak RSS of the worker process in MiB, in brackets its "
          "increase over the loaded model")
    print("| tokens | dtype | zamba2vl (s) | transformers (s) | speedup | zamba2vl peak RSS | transformers peak RSS |")
    print("|" + "---|" * 7)
    for r in rows:
        ours, hf = r.get("ours"), r.get("transformers")
        speed = f"{hf['median_s'] / ours['median_s']:.2f}x" if ours and hf else "-"
        cells = [f"{x['median_s']:.2f}" if x else "-" for x in (ours, hf)]
        mem = [f"{mib(x['peak_rss_bytes'])} (+{mib(x['prefill_rss_increase_bytes'])})" if x else "-"
               for x in (ours, hf)]
        print(f"| {r['tokens']} | {r['dtype']} | {cells[0]} | {cells[1]} | {speed} | {mem[0]} | {mem[1]} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 8192],
                   help="comma-separated prompt lengths (default 2048,8192)")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"],
                   help="comma-separated: float32,bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the median is reported")
    p.add_argument("--budget-s", type=float, default=45.0,
                   help="per system and case, stop repeating once the timed runs would pass this many seconds "
                        "(at least one run); a warm-up that alone exceeds it is reported as the single run")
    p.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS), help="ours,transformers")
    p.add_argument("--out", default="bench-out/prefill.json")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint folder, built there if missing (default: a temporary folder)")
    p.add_argument("--ours-python", default=str(REPO / ".venv/bin/python") if (REPO / ".venv/bin/python").exists()
                   else sys.executable)
    p.add_argument("--transformers-python", default=str(REPO / ".bench-venv/bin/python"),
                   help="python of a venv holding the newest transformers (the speed baseline)")
    p.add_argument("--check-length", type=int, default=2048,
                   help="compare the two systems' float32 logits at this length when it is run (0: never)")
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.length, args.dtype = args.lengths[0], args.dtypes[0]
        run_worker(args)
        return
    if not set(args.systems) <= set(SYSTEMS):
        p.error(f"--systems takes {','.join(SYSTEMS)}")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zamba2vl-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.checkpoint is None:
            args.checkpoint = tmp / "zamba2-53m"
        if not (args.checkpoint / "config.json").exists():
            n = build_checkpoint(args.checkpoint)
            print(f"built checkpoint in {args.checkpoint} ({n:,} parameters)", flush=True)
        cfg = json.loads((args.checkpoint / "config.json").read_text())
        pythons = {"ours": args.ours_python, "transformers": args.transformers_python}
        print("config:", json.dumps({k: cfg[k] for k in CONFIG_53M if k in cfg}), flush=True)
        print(f"cpu: {cpu_model()} ({os.cpu_count()} logical; {' '.join(cpu_flags())}); threads: {args.threads}; "
              f"up to {args.repeats} timed runs after 1 warm-up, within {args.budget_s:.0f} s per system and case",
              flush=True)
        rows = []
        for dtype in args.dtypes:
            for length in args.lengths:
                check = dtype == "float32" and length == args.check_length and set(args.systems) == set(SYSTEMS)
                row = run_case(dtype, length, args, pythons, tmp, check)
                for system in args.systems:
                    print(describe(system, row[system]), flush=True)
                if check:
                    c = row["check"]
                    print(f"  check: float32, {length} tokens, last-position logits: max |ours - transformers| = "
                          f"{c['max_abs_diff']:.2e} (max |logit| {c['max_abs_logit']:.2f}, same argmax: "
                          f"{c['same_argmax']})", flush=True)
                rows.append(row)

    print_table(rows, args)
    first = rows[0]
    report = dict(
        benchmark="prefill (time to first token), batch 1",
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        wall_s=time.perf_counter() - started,
        cpu=cpu_model(), cpu_flags=cpu_flags(), logical_cpus=os.cpu_count(), threads=args.threads,
        repeats=args.repeats, budget_s=args.budget_s,
        versions={s: {"package": first[s]["version"], "torch": first[s]["torch"]} for s in args.systems},
        config=cfg, parameters=first[args.systems[0]]["parameters"],
        logits_check=next((r["check"] for r in rows if "check" in r), None), results=rows,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} ({report['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
