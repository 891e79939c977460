"""Vision-tower speed: zamba2vl's VisionTower beside transformers' Qwen2_5_VisionTransformerPretrainedModel.

Real Qwen2.5-VL ViT shape (depth 32, width 1280, 16 heads, MLP 3420, full attention in blocks 7/15/23/31,
112-pixel windows, merger to 2048), temporal_patch_size=1 as Zamba2-VL, the same random weights in both, one
square image per size. The transformers side runs in a separate interpreter (by default /work/main's
.bench-venv, the newest transformers release; otherwise the transformers installed beside this script,
labelled with its version) and gets the weights through a temporary safetensors file.

    .venv/bin/python benchmarks/vision_tower.py --out results.json
    .venv/bin/python benchmarks/vision_tower.py --sizes 448 --repeats 1 --baseline none   # ours only

Timings are medians of ``--repeats`` forward passes under torch.inference_mode, after one warm-up pass on
a small image. On the smallest size both bf16 outputs are compared with our tower's float32 output (which
the tests hold to 1e-4 of transformers' float32 tower), so the table also shows what the speed costs in
accuracy (nothing, if our error is not above transformers').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import cpu_model  # benchmarks/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parents[1]
BENCH_VENV_PYTHON = REPO / ".bench-venv" / "bin" / "python"

SHAPE = dict(
    depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, hidden_act="silu", patch_size=14,
    spatial_merge_size=2, temporal_patch_size=1, window_size=112, out_hidden_size=2048,
    fullatt_block_indexes=[7, 15, 23, 31], in_channels=3,
)
PATCH_DIM = 3 * 1 * 14 * 14
WARMUP_SIDE = 112


def image_inputs(side: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = side // 14
    px = torch.randn(g * g, PATCH_DIM, generator=torch.Generator().manual_seed(seed))
    return px, torch.tensor([[1, g, g]])


def time_tower(run, sizes: list[int], repeats: int) -> tuple[dict, dict]:
    """{side: [seconds, ...]} and {side: output of the last run}."""
    times, outputs = {}, {}
    with torch.inference_mode():
        run(*image_inputs(WARMUP_SIDE, seed=0))
        for side in sizes:
            px, grid = image_inputs(side, seed=side)
            times[side] = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = run(px, grid)
                times[side].append(time.perf_counter() - t0)
                print(f"  {side}x{side}: {times[side][-1]:.2f} s", file=sys.stderr, flush=True)
            outputs[side] = out.float()
    return times, outputs


# ------------------------------------------------------------------------------------------------ weights


def write_random_weights(path: Path, dtype: torch.dtype, seed: int = 0) -> None:
    """Random tower weights under the tower's own names (scale of a trained model: unit-size activations)."""
    from safetensors.torch import save_file

    from zamba2vl.config import VisionConfig
    from zamba2vl.vision import VisionTower

    with torch.device("meta"):
        tower = VisionTower(VisionConfig(**SHAPE))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, p in tower.named_parameters():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "ln_q" in name:
            t = 1 + 0.1 * torch.randn(p.shape, generator=g)
        elif p.dim() == 1:
            t = 0.02 * torch.randn(p.shape, generator=g)
        else:
            t = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
        tensors[name] = t.to(dtype)
    save_file(tensors, os.fspath(path))


# -------------------------------------------------------------------------------------------------- ours


def load_ours(weights: Path, dtype: torch.dtype):
    from zamba2vl.checkpoint import TensorReader
    from zamba2vl.config import VisionConfig
    from zamba2vl.vision import VisionTower, load_vision_weights

    with torch.device("meta"):
        tower = VisionTower(VisionConfig(**SHAPE))
    load_vision_weights(tower, TensorReader([weights]), source=str(weights), dtype=dtype)
    return tower.eval()


def exact_output(weights: Path, side: int) -> torch.Tensor:
    """Our tower in float32 (equal to transformers' fp32 tower within 1e-4 in the tests): the accuracy yardstick."""
    tower = load_ours(weights, torch.float32)
    with torch.inference_mode():
        return tower(*image_inputs(side, seed=side))


# ------------------------------------------------------------------------------------- transformers side


def worker_transformers(weights: Path, sizes: list[int], repeats: int, dtype: torch.dtype, out: Path) -> None:
    """Runs inside the baseline interpreter; imports nothing from zamba2vl."""
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    major = int(transformers.__version__.split(".")[0])
    config = Qwen2_5_VLVisionConfig(**SHAPE)
    dtype_kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
    model = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, attn_implementation="sdpa", **dtype_kw)
    model.load_state_dict(load_file(os.fspath(weights)), strict=True)
    model.eval()

    def run(px, grid):
        o = model(px, grid)
        return o if isinstance(o, torch.Tensor) else o.pooler_output  # transformers 5 returns a ModelOutput

    times, outputs = time_tower(run, sizes, repeats)
    save_file({str(k): v.contiguous() for k, v in outputs.items()}, os.fspath(out.with_suffix(".safetensors")))
    out.write_text(json.dumps({
        "times": {str(k): v for k, v in times.items()},
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": model.config._attn_implementation,
    }))


def run_baseline(python: str, weights: Path, args, tmp: Path) -> tuple[dict, dict, dict]:
    out = tmp / "baseline.json"
    cmd = [python, os.fspath(Path(__file__).resolve()), "--worker", "--weights", os.fspath(weights),
           "--worker-out", os.fspath(out), "--threads", str(args.threads), "--dtype", args.dtype,
           "--repeats", str(args.baseline_repeats or args.repeats), "--sizes", *map(str, args.sizes)]
    subprocess.run(cmd, check=True, cwd=tmp)  # cwd away from the repo: the baseline must not see zamba2vl
    info = json.loads(out.read_text())
    from safetensors.torch import load_file

    outputs = {int(k): v for k, v in load_file(os.fspath(out.with_suffix(".safetensors"))).items()}
    return {int(k): v for k, v in info["times"].items()}, outputs, info


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[448, 896], help="image sides in pixels (multiples of 28)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=None,
                    help="repeats of the transformers side (default: --repeats); its bf16 896x896 pass takes minutes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--baseline", default="auto", choices=["auto", "bench-venv", "local", "none"],
                    help="transformers for the baseline: .bench-venv (newest release), this interpreter's, or none; "
                         "auto = bench-venv if present, else local")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    for s in args.sizes:
        if s % 28:
            ap.error(f"size {s} is not a multiple of 28 (patch 14 x merge 2)")
    if args.worker:
        worker_transformers(args.weights, args.sizes, args.repeats, dtype, args.worker_out)
        return

    sys.path.insert(0, os.fspath(REPO / "src"))
    baseline = args.baseline
    if baseline == "auto":
        baseline = "bench-venv" if BENCH_VENV_PYTHON.exists() else "local"
    python = os.fspath(BENCH_VENV_PYTHON) if baseline == "bench-venv" else sys.executable

    with tempfile.TemporaryDirectory(prefix="vision_bench_") as tmpdir:
        tmp = Path(tmpdir)
        weights = tmp / "tower.safetensors"
        write_random_weights(weights, dtype)
        print(f"ours ({args.dtype}, {args.threads} threads)", file=sys.stderr)
        ours_t, ours_out = time_tower(load_ours(weights, dtype), args.sizes, args.repeats)
        check = min(args.sizes)
        exact = exact_output(weights, check) if dtype != torch.float32 else ours_out[check]
        base_t, base_out, base_info = {}, {}, {}
        if baseline != "none":
            print(f"transformers baseline via {python}", file=sys.stderr)
            base_t, base_out, base_info = run_baseline(python, weights, args, tmp)

    from zamba2vl.ops.precision import compute_dtype

    conditions = {
        "threads": args.threads,
        "dtype": args.dtype,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ours_gemm_dtype": str(compute_dtype(torch.zeros(1, dtype=dtype))).replace("torch.", ""),
        "torch": torch.__version__,
        "baseline": None if baseline == "none" else {
            "transformers": base_info.get("transformers"), "torch": base_info.get("torch"),
            "attn_implementation": base_info.get("attn_implementation"),
            "source": "newest release (.bench-venv)" if baseline == "bench-venv" else "local install",
        },
        "repeats": args.repeats,
        "baseline_repeats": None if baseline == "none" else (args.baseline_repeats or args.repeats),
        "load_average_1m_at_end": os.getloadavg()[0],
        "shape": SHAPE,
    }
    rows = []
    for side in args.sizes:
        g = side // 14
        row = {"image": f"{side}x{side}", "patches": g * g, "tokens": g * g // 4,
               "ours_s": statistics.median(ours_t[side]), "ours_runs_s": ours_t[side]}
        if side in base_t:
            row["transformers_s"] = statistics.median(base_t[side])
            row["transformers_runs_s"] = base_t[side]
            row["speedup"] = row["transformers_s"] / row["ours_s"]
            ref = base_out[side]
            row["max_abs_diff_ours_vs_transformers"] = (ours_out[side] - ref).abs().max().item()
        if side == check:  # error of each tower against the fp32 result, relative to its largest value
            scale = exact.abs().max().item()
            row["ours_err_vs_fp32"] = (ours_out[side] - exact).abs().max().item() / scale
            if side in base_out:
                row["transformers_err_vs_fp32"] = (base_out[side] - exact).abs().max().item() / scale
        rows.append(row)

    print()
    for k, v in conditions.items():
        if k != "shape":
            print(f"{k:>16}: {v}")
    print()
    label = f"transformers {base_info.get('transformers', '-')}"
    print(f"{'image':>9} {'patches':>7} {'tokens':>6} {'ours s':>9} {label + ' s':>22} {'speedup':>8}"
          f" {'ours err':>9} {'tf err':>9}")
    for r in rows:
        base = f"{r['transformers_s']:.2f}" if "transformers_s" in r else "-"
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        errs = [f"{r[k]:.2e}" if k in r else "-" for k in ("ours_err_vs_fp32", "transformers_err_vs_fp32")]
        print(f"{r['image']:>9} {r['patches']:>7} {r['tokens']:>6} {r['ours_s']:>9.2f} {base:>22} {speed:>8}"
              f" {errs[0]:>9} {errs[1]:>9}")
    print("(err: max |output - fp32 output| / max |fp32 output|, on the smallest image; fp32 output = our tower in"
          " float32)")
    if args.out:
        args.out.write_text(json.dumps({"conditions": conditions, "results": rows}, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
